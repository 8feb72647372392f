package redisstore_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// childEnv carries a child's orders (JSON) when TestMultiProcess re-executes
// the test binary.
const childEnv = "REDISSTORE_TEST_CHILD"

type childOrders struct {
	Addr, Prefix, Key string
	Until             int64 // Redis time, Unix ns, at which to stop admitting
}

// processLimit is the limit the processes share: 200/s with a quota that
// binds only in the first second (burst 10 + 200 > 205).
var processLimit = bucket.PerSecond(200).WithBurst(10).WithQuota(205, time.Second)

// TestMultiProcess runs 4 processes of 8 goroutines each on one key for
// about 4 seconds; their merged starts must conform to the limit and reach
// at least 97% of its rate while all of them run.
func TestMultiProcess(t *testing.T) {
	if orders := os.Getenv(childEnv); orders != "" {
		runChild(t, orders)
		return
	}
	if testing.Short() {
		t.Skip("takes 4 seconds")
	}
	c := newClient(t)
	ctx := context.Background()
	now, err := c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	const span = 3 * time.Second
	until := now.Add(span + time.Second).UnixNano() // a second to start the processes
	orders, _ := json.Marshal(childOrders{
		Addr:   c.Options().Addr,
		Prefix: testPrefix(t),
		Key:    "one-key",
		Until:  until,
	})

	const procs = 4
	var (
		wg   sync.WaitGroup
		outs [procs]bytes.Buffer
		errs [procs]error
	)
	for i := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMultiProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+string(orders), redistest.EnvAddr+"="+c.Options().Addr)
		cmd.Stdout = &outs[i]
		cmd.Stderr = &outs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = cmd.Run()
		}()
	}
	wg.Wait()

	var (
		starts []backendtest.Start
		from   int64 // when the last process made its first admission
	)
	for i := range procs {
		if errs[i] != nil {
			t.Fatalf("process %d: %v\n%s", i, errs[i], outs[i].String())
		}
		first := int64(0)
		sc := bufio.NewScanner(&outs[i])
		for sc.Scan() {
			var s backendtest.Start
			if _, err := fmt.Sscanf(sc.Text(), "start %d %d", &s.At, &s.Cost); err == nil {
				starts = append(starts, s)
				if first == 0 || s.At < first {
					first = s.At
				}
			}
		}
		if first == 0 {
			t.Fatalf("process %d admitted nothing:\n%s", i, outs[i].String())
		}
		from = max(from, first)
	}
	if err := backendtest.Check(processLimit, starts); err != nil {
		t.Fatalf("%d processes on one key: %v", procs, err)
	}
	if window := time.Duration(until - from); window < 2*time.Second {
		t.Fatalf("the processes all ran together for only %v", window)
	}
	var units int64
	for _, s := range starts {
		if s.At >= from && s.At < until {
			units += s.Cost
		}
	}
	rate := float64(units) / time.Duration(until-from).Seconds()
	t.Logf("%d processes × 8 goroutines: %d admissions, %.1f/s over the %v all ran (limit %v)",
		procs, len(starts), rate, time.Duration(until-from).Round(time.Millisecond), processLimit)
	if rate < 0.97*200 {
		t.Errorf("achieved %.1f/s of 200/s, want at least 97%%", rate)
	}
}

// runChild is a child process of TestMultiProcess: 8 goroutines admit on
// one key until the orders' time, each sleeping until its admitted start,
// and print every start.
func runChild(t *testing.T, ordersJSON string) {
	var o childOrders
	if err := json.Unmarshal([]byte(ordersJSON), &o); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: o.Addr})
	defer c.Close()
	s, err := redisstore.New(c, redisstore.Options{Prefix: o.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var (
		mu  sync.Mutex
		out = bufio.NewWriter(os.Stdout)
		wg  sync.WaitGroup
	)
	defer out.Flush()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := bucket.Request{Key: o.Key, Limit: processLimit, Cost: 1, MaxWait: 50 * time.Millisecond}
			for {
				d, err := s.Admit(context.Background(), req)
				if err != nil {
					t.Error(err)
					return
				}
				if d.Now >= o.Until {
					return
				}
				if !d.Allowed {
					time.Sleep(min(d.Wait-req.MaxWait, 20*time.Millisecond))
					continue
				}
				mu.Lock()
				fmt.Fprintf(out, "start %d %d\n", d.Start(), req.Cost)
				mu.Unlock()
				time.Sleep(d.Wait)
			}
		}()
	}
	wg.Wait()
}
