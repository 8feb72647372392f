package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The limit of the Redis scale comparisons, on both sides: one unit an
// hour, burst 10,000. It never binds here, and a key admitted once stays in
// Redis for the hour (both expire a key once its bucket is fresh again),
// so that its memory can be read after the fill. Without quotas the
// state's size does not depend on the limit.
var (
	redisScaleLimit     = bucket.PerHour(1).WithBurst(10_000)
	redisRateScaleLimit = redis_rate.Limit{Rate: 1, Period: time.Hour, Burst: 10_000}
)

// redisFillers is how many goroutines admit the first time on every key.
const redisFillers = 64

// usedMemory returns Redis's INFO used_memory.
func usedMemory(ctx context.Context, c *redis.Client) float64 {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		panic(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				panic(err)
			}
			return n
		}
	}
	panic("redis: INFO memory has no used_memory")
}

// memoryUsage returns the mean MEMORY USAGE of up to 1,000 of the Redis
// keys rks, evenly spaced.
func memoryUsage(ctx context.Context, c *redis.Client, rks []string) float64 {
	step := max(len(rks)/1000, 1)
	p := c.Pipeline()
	var cmds []*redis.IntCmd
	for i := 0; i < len(rks); i += step {
		cmds = append(cmds, p.MemoryUsage(ctx, rks[i], 0))
	}
	if _, err := p.Exec(ctx); err != nil {
		panic(fmt.Errorf("MEMORY USAGE: %w", err))
	}
	var sum float64
	for _, cmd := range cmds {
		sum += float64(cmd.Val())
	}
	return sum / float64(len(cmds))
}

// unlink deletes the Redis keys rks, 1,000 to a pipeline.
func unlink(ctx context.Context, c *redis.Client, rks []string) {
	for i := 0; i < len(rks); i += 1000 {
		if err := c.Unlink(ctx, rks[i:min(i+1000, len(rks))]...).Err(); err != nil {
			panic(err)
		}
	}
}

// fill admits once on each of ks from redisFillers goroutines.
func fill(ks []string, admit func(ctx context.Context, key string) error) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for f := range redisFillers {
		wg.Go(func() {
			for i := f; i < len(ks); i += redisFillers {
				if err := admit(ctx, ks[i]); err != nil {
					panic(err)
				}
			}
		})
	}
	wg.Wait()
}

// redisScaleRun measures one side on n keys: the memory Redis holds for
// them after one admission each (INFO used_memory before and after, and
// MEMORY USAGE of a sample), then admissions/s from 16 callers over the n
// keys and over the first 1,000 of them, as redisAdmit measures. It
// deletes the keys before it returns.
func redisScaleRun(c *redis.Client, ks []string, redisKey func(string) string, admit func(ctx context.Context, key string) error) sample {
	ctx := context.Background()
	rks := make([]string, len(ks))
	for i, k := range ks {
		rks[i] = redisKey(k)
	}
	before := usedMemory(ctx, c)
	t0 := time.Now()
	fill(ks, admit)
	el := time.Since(t0)
	after := usedMemory(ctx, c)
	usage := memoryUsage(ctx, c, rks)
	if n := c.Exists(ctx, rks[0], rks[len(rks)-1]).Val(); n != 2 {
		panic(fmt.Sprintf("redis: %d of 2 keys left after the fill: they expired", n))
	}
	many := redisLoop(16, ks, redisTime, admit)
	few := redisLoop(16, ks[:min(len(ks), 1000)], redisTime, admit)
	unlink(ctx, c, rks)
	return sample{
		"used-B/key":     (after - before) / float64(len(ks)),
		"usage-B/key":    usage,
		"fill/s":         float64(len(ks)) / el.Seconds(),
		"admissions/s":   many["admissions/s"],
		"admissions/s@1": few["admissions/s"],
	}
}

// redisScale compares what n distinct keys cost in Redis, after one
// admission each: redisstore's state against redis_rate's, and the
// admissions/s of each over n keys; ours also against its own over 1,000
// keys, in the same run (the target: within 20%).
func redisScale(n int) func(r *reporter) {
	return func(r *reporter) {
		addr, note := redisAddr()
		if addr == "" {
			r.skip(note)
			return
		}
		ks := scaleKeys(n)
		p := newRedisPair(addr, prefix+"s:")
		defer p.Close()
		oc, ac, store, rr := p.oc, p.ac, p.store, p.rr
		anchorKey := func(k string) string { return "rate:" + prefix + "s:" + k } // redis_rate's prefix, then ours
		req := driver.Request{Limit: backendtest.Limit(redisScaleLimit), Cost: 1}
		// A million keys take about 20 s a side to fill: one repetition.
		reps := r.reps
		if n >= 1_000_000 {
			reps = 1
		}
		res := repeat(reps,
			warmSmall("ours", ks, func(ks []string) sample {
				return redisScaleRun(oc, ks, store.RedisKey, func(ctx context.Context, k string) error {
					req := req
					req.Key = k
					d, err := store.Admit(ctx, req)
					if err == nil && !d.Allowed {
						err = fmt.Errorf("refused")
					}
					return err
				})
			}),
			warmSmall("redis_rate", ks, func(ks []string) sample {
				return redisScaleRun(ac, ks, anchorKey, func(ctx context.Context, k string) error {
					res, err := rr.Allow(ctx, prefix+"s:"+k, redisRateScaleLimit)
					if err == nil && res.Allowed == 0 {
						err = fmt.Errorf("refused")
					}
					return err
				})
			}),
		)
		const oursName, anchorName = "redisstore", "redis_rate/v10"
		keyNote := fmt.Sprintf("%d keys admitted once each; Redis keys: prefix %q + key (%d bytes)", n, prefix+"s:", len(store.RedisKey(ks[0])))
		r.compare(metricSpec{key: "used-B/key", label: "Redis used_memory per key", unit: "bytes", better: "lower",
			note: keyNote + "; INFO used_memory after the fill minus before, over n; redis_rate adds \"rate:\" to the key"},
			oursName, res["ours"], anchorName, res["redis_rate"])
		r.compare(metricSpec{key: "usage-B/key", label: "MEMORY USAGE per key", unit: "bytes", better: "lower",
			note: keyNote + "; mean of 1,000 keys, evenly spaced"},
			oursName, res["ours"], anchorName, res["redis_rate"])
		r.compare(metricSpec{key: "fill/s", label: "first admission of each key, 64 callers", unit: "admissions/s", better: "higher"},
			"redisstore Admit", res["ours"], "redis_rate/v10 Allow", res["redis_rate"])
		tp := metricSpec{key: "admissions/s", label: fmt.Sprintf("admissions over %d keys, 16 callers", n), unit: "admissions/s", better: "higher"}
		r.compare(tp, "redisstore Admit", res["ours"], "redis_rate/v10 Allow", res["redis_rate"])
		tp.target = atLeast(0.8*summarize(res["ours"], "admissions/s@1").Median, "within 20% of 1,000 keys")
		tp.note = "the anchor is our own Admit over the first 1,000 of the keys, in the same run"
		r.compare(tp, "redisstore Admit", res["ours"], "redisstore Admit, 1,000 keys", renamed(res["ours"], "admissions/s@1", "admissions/s"))
	}
}

// renamed returns copies of ss with metric from under the name to.
func renamed(ss []sample, from, to string) []sample {
	out := make([]sample, len(ss))
	for i, s := range ss {
		out[i] = sample{to: s[from]}
	}
	return out
}
