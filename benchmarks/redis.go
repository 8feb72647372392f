package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/alitto/pond/v2"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/latency"
)

const redisTime = 400 * time.Millisecond

var redisState struct {
	once sync.Once
	addr string
	note string
	cmd  *exec.Cmd
	dir  string
}

// redisAddr returns the Redis every Redis comparison uses, and where it
// came from: REDIS_ADDR, else 127.0.0.1:6379 if something answers there,
// else a redis-server from PATH started on a free loopback port (stopped
// at exit). It returns "" and why if there is none.
func redisAddr() (string, string) {
	redisState.once.Do(func() {
		if a := os.Getenv("REDIS_ADDR"); a != "" {
			if err := ping(a); err != nil {
				redisState.note = fmt.Sprintf("REDIS_ADDR=%s does not answer: %v", a, err)
				return
			}
			redisState.addr, redisState.note = a, "REDIS_ADDR"
			return
		}
		if ping("127.0.0.1:6379") == nil {
			redisState.addr, redisState.note = "127.0.0.1:6379", "the local server on the default port"
			return
		}
		path, err := exec.LookPath("redis-server")
		if err != nil {
			redisState.note = "no REDIS_ADDR, nothing on 127.0.0.1:6379 and no redis-server on PATH"
			return
		}
		addr, err := startRedis(path)
		if err != nil {
			redisState.note = "could not start redis-server: " + err.Error()
			return
		}
		redisState.addr, redisState.note = addr, "a redis-server started for this run"
	})
	return redisState.addr, redisState.note
}

func ping(addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

func startRedis(path string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir, err := os.MkdirTemp("", "lbbench-redis-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	redisState.cmd, redisState.dir = cmd, dir
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ping(addr) == nil {
			return addr, nil
		}
	}
	return "", fmt.Errorf("redis-server on %s did not answer", addr)
}

// cleanup stops what the run started.
func cleanup() {
	if redisState.cmd != nil {
		redisState.cmd.Process.Kill()
		redisState.cmd.Wait()
		os.RemoveAll(redisState.dir)
	}
}

// prefix isolates this run's keys from anything else on the server.
var prefix = fmt.Sprintf("lbbench:%d:", os.Getpid())

func newRedisClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr})
}

// A redisPair is the two sides of a Redis comparison, each on a client of
// its own: our Store, its keys under keyPrefix, and redis_rate's limiter.
type redisPair struct {
	oc, ac *redis.Client
	store  *redisstore.Store
	rr     *redis_rate.Limiter
}

func newRedisPair(addr, keyPrefix string) *redisPair {
	p := &redisPair{oc: newRedisClient(addr), ac: newRedisClient(addr)}
	store, err := redisstore.New(p.oc, redisstore.Options{Prefix: keyPrefix})
	if err != nil {
		panic(err)
	}
	p.store, p.rr = store, redis_rate.NewLimiter(p.ac)
	return p
}

// Close closes the Store, then both clients.
func (p *redisPair) Close() {
	p.store.Close()
	p.ac.Close()
	p.oc.Close()
}

// The limit of the Redis comparisons, on both sides: it never binds at
// these rates, yet every admission moves its bucket, so that both write
// their key each time, as under a limit that binds. (At 10^9/s
// redis_rate's floating-point seconds leave a key's state unchanged, and
// it skips its SET: a read-only path no real limit takes.)
var (
	redisLimit     = bucket.PerSecond(1_000_000).WithBurst(1_000_000)
	redisRateLimit = redis_rate.Limit{Rate: 1_000_000, Burst: 1_000_000, Period: time.Second}
)

// redisLoop runs callers goroutines, each admitting in a loop over keys
// until d has passed, and returns admissions/s and the p50 and p99 of one
// call, in µs.
func redisLoop(callers int, ks []string, d time.Duration, admit func(ctx context.Context, key string) error) sample {
	ctx := context.Background()
	var (
		mu    sync.Mutex
		all   latency.Histogram
		total int
		wg    sync.WaitGroup
	)
	start := make(chan struct{})
	wg.Add(callers)
	m0 := mallocs()
	for c := range callers {
		go func() {
			defer wg.Done()
			var h latency.Histogram
			<-start
			i := c * 7919
			deadline := time.Now().Add(d)
			for {
				t0 := time.Now()
				if t0.After(deadline) {
					break
				}
				if err := admit(ctx, ks[i%len(ks)]); err != nil {
					panic(err)
				}
				h.Add(time.Since(t0))
				i++
			}
			mu.Lock()
			all.Merge(&h)
			total += h.Count()
			mu.Unlock()
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	el := time.Since(t0)
	m1 := mallocs()
	return sample{
		"admissions/s": float64(total) / el.Seconds(),
		"p50-µs":       float64(all.Quantile(0.50).Nanoseconds()) / 1e3,
		"p99-µs":       float64(all.Quantile(0.99).Nanoseconds()) / 1e3,
		"allocs/op":    float64(m1-m0) / float64(total),
	}
}

// redisAdmit compares one admission in Redis: our Store.Admit (concurrent
// calls coalesced into pipelines) and redis_rate's Allow (one EVALSHA per
// call on a pooled connection), from callers goroutines over nkeys keys.
func redisAdmit(callers, nkeys int) func(r *reporter) {
	return func(r *reporter) {
		addr, note := redisAddr()
		if addr == "" {
			r.skip(note)
			return
		}
		ks := keys(nkeys)
		p := newRedisPair(addr, prefix)
		defer p.Close()
		store, rr := p.store, p.rr
		res := repeat(r.reps,
			contender{"ours", func() sample {
				return redisLoop(callers, ks, redisTime, func(ctx context.Context, k string) error {
					d, err := store.Admit(ctx, driver.Request{Key: k, Limit: backendtest.Limit(redisLimit), Cost: 1})
					if err == nil && !d.Allowed {
						err = fmt.Errorf("refused")
					}
					return err
				})
			}},
			contender{"redis_rate", func() sample {
				return redisLoop(callers, ks, redisTime, func(ctx context.Context, k string) error {
					res, err := rr.Allow(ctx, prefix+k, redisRateLimit)
					if err == nil && res.Allowed == 0 {
						err = fmt.Errorf("refused")
					}
					return err
				})
			}},
		)
		tp := metricSpec{key: "admissions/s", label: "admissions", unit: "admissions/s", better: "higher"}
		if callers == 16 {
			a := summarize(res["redis_rate"], tp.key).Median
			tp.target = atLeast(1.3*a, "≥ 1.3× redis_rate")
		}
		const ours, anchor = "redisstore Admit", "redis_rate/v10 Allow"
		r.compare(tp, ours, res["ours"], anchor, res["redis_rate"])
		r.compare(metricSpec{key: "p50-µs", label: "latency p50", unit: "µs", better: "lower"}, ours, res["ours"], anchor, res["redis_rate"])
		r.compare(metricSpec{key: "p99-µs", label: "latency p99", unit: "µs", better: "lower"}, ours, res["ours"], anchor, res["redis_rate"])
		r.compare(metricSpec{key: "allocs/op", label: "allocations", unit: "allocs/op", better: "lower"}, ours, res["ours"], anchor, res["redis_rate"])
	}
}

// redisDispatcher compares jobs through a Dispatcher admitted by
// redisstore over 1,000 keys whose limits do not bind (decided in batches,
// one pipeline each) with what users build by hand: a pond pool whose
// task calls redis_rate first. Both have 16 workers and a trivial handler.
func redisDispatcher(r *reporter) {
	addr, note := redisAddr()
	if addr == "" {
		r.skip(note)
		return
	}
	const workers = 16
	ks := keys(1000)
	p := newRedisPair(addr, prefix+"d:")
	defer p.Close()
	rr := p.rr
	lim, err := bucket.NewLimiter(p.store, redisLimit)
	if err != nil {
		panic(err)
	}
	ours := func(n int) int {
		res := results
		d, err := dispatcher.New(func(_ context.Context, i int) (int, error) { res[i] = i; return i, nil }, func(i int) string { return ks[i%len(ks)] },
			dispatcher.WithWorkers(workers), dispatcher.WithLimiter(lim))
		if err != nil {
			panic(err)
		}
		return feed(d, n, time.Now().Add(maxRun), 0, 1)
	}
	anchor := func(n int) int {
		res := results
		ctx := context.Background()
		p := pond.NewResultPool[int](workers)
		for i := range n {
			p.SubmitErr(func() (int, error) {
				if _, err := rr.Allow(ctx, prefix+"d:"+ks[i%len(ks)], redisRateLimit); err != nil {
					return 0, err
				}
				res[i] = i
				return i, nil
			})
		}
		p.StopAndWait()
		return n
	}
	res := repeat(r.reps,
		calibrated("ours", 5_000, 500*time.Millisecond, func(n int) sample { return poolRun(n, ours) }),
		calibrated("anchor", 5_000, 500*time.Millisecond, func(n int) sample { return poolRun(n, anchor) }),
	)
	tp := metricSpec{key: "jobs/s", label: "throughput", unit: "jobs/s", better: "higher", target: atLeast(100_000, "≥ 100,000/s")}
	r.compare(tp, "Dispatcher + redisstore", res["ours"], "pond/v2 + redis_rate/v10 in the task", res["anchor"])
	r.compare(metricSpec{key: "allocs/job", label: "allocations", unit: "allocs/job", better: "lower"},
		"Dispatcher + redisstore", res["ours"], "pond/v2 + redis_rate/v10 in the task", res["anchor"])
}
