package redisstore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(redistest.Exit),
		// go-redis retries a failed dial from a goroutine that sleeps up to a
		// second after its client is closed; it ends by itself.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// newClient returns a client of the Redis shared by the tests, closed at
// the end of t.
func newClient(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	t.Cleanup(func() { c.Close() })
	return c
}

// newStore returns a Store closed at the end of t. Unless opts names one,
// its prefix is t's own, so that tests sharing a Redis never meet.
func newStore(t testing.TB, c redis.UniversalClient, opts redisstore.Options) *redisstore.Store {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = testPrefix(t)
	}
	s, err := redisstore.New(c, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testPrefix(t testing.TB) string {
	return fmt.Sprintf("lbtest:%s:%08x:", t.Name(), rand.Uint32())
}

func conformance(t *testing.T, client func(t *testing.T) redis.UniversalClient) {
	prefix := testPrefix(t)
	backendtest.Run(t, backendtest.Config{
		New: func(t *testing.T) driver.Backend {
			return newStore(t, client(t), redisstore.Options{Prefix: prefix})
		},
		Peer: func(t *testing.T, b driver.Backend) driver.Backend {
			return newStore(t, client(t), redisstore.Options{Prefix: prefix})
		},
		Forgotten: func(t *testing.T, b driver.Backend, key string) bool {
			s := b.(*redisstore.Store)
			n, err := s.Client().Exists(context.Background(), s.RedisKey(key)).Result()
			if err != nil {
				t.Fatalf("EXISTS: %v", err)
			}
			return n == 0
		},
	})
}

func TestConformance(t *testing.T) {
	conformance(t, func(t *testing.T) redis.UniversalClient { return newClient(t) })
}

func TestConformanceUnbatched(t *testing.T) {
	prefix := testPrefix(t)
	backendtest.Run(t, backendtest.Config{
		New: func(t *testing.T) driver.Backend {
			return newStore(t, newClient(t), redisstore.Options{Prefix: prefix, Pipelines: -1})
		},
	})
}

func TestConformanceCluster(t *testing.T) {
	addrs := redistest.ClusterAddrs(t)
	newCluster := func(t *testing.T) redis.UniversalClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { c.Close() })
		// Load the slots and dial every master now, not inside the
		// suite's timed loops.
		err := c.ForEachShard(context.Background(), func(ctx context.Context, m *redis.Client) error {
			return m.Ping(ctx).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	conformance(t, newCluster)

	// Buckets spread over every master.
	c := newCluster(t).(*redis.ClusterClient)
	s := newStore(t, c, redisstore.Options{})
	ctx := context.Background()
	batch := make([]driver.Admission, 300)
	for i := range batch {
		batch[i].Request = driver.Request{Key: fmt.Sprint("spread-", i), Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		if a.Err != nil || !a.Decision.Allowed {
			t.Fatalf("batch[%d] = %+v, %v; want allowed", i, a.Decision, a.Err)
		}
	}
	var masters atomic.Int32
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		it := m.Scan(ctx, 0, s.RedisKey("spread-*"), 100).Iterator()
		if it.Next(ctx) {
			masters.Add(1)
		}
		return it.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if masters := int(masters.Load()); masters != len(addrs) {
		t.Errorf("300 buckets landed on %d of %d masters", masters, len(addrs))
	}
}

func TestOptions(t *testing.T) {
	c := newClient(t)
	for _, opts := range []redisstore.Options{
		{FailurePolicy: -1},
		{FailurePolicy: redisstore.FailLocal + 1},
		{Pipelines: -2},
		{MaxBatch: -1},
		{Pipelines: -1, MaxBatch: 8},
	} {
		if s, err := redisstore.New(c, opts); err == nil {
			s.Close()
			t.Errorf("New(%+v) = nil error, want one", opts)
		}
	}
	if _, err := redisstore.New(nil, redisstore.Options{}); err == nil {
		t.Error("New(nil client) = nil error, want one")
	}
	s, err := redisstore.New(c, redisstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.RedisKey("a{b}\x00"); got != "leakybucket:a{b}\x00" {
		t.Errorf("RedisKey with the default prefix = %q", got)
	}
}

// TestKeys checks that keys of any bytes map to distinct Redis keys,
// byte for byte.
func TestKeys(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	keys := []string{"{", "}", "{}", "}{", "{a}b", "a\x00", "\x00", "\n", "\xff", strings.Repeat("\xfe{", 512)}
	for _, k := range keys {
		if d, err := s.Admit(ctx, driver.Request{Key: k, Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}); err != nil || !d.Allowed {
			t.Fatalf("Admit(%q) = %+v, %v; want allowed", k, d, err)
		}
		if n := s.Client().Exists(ctx, s.RedisKey(k)).Val(); n != 1 {
			t.Errorf("after Admit(%q), EXISTS %q = %d, want 1", k, s.RedisKey(k), n)
		}
	}
}

func TestClosed(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	s.Close()
	s.Close()
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	if _, err := s.Admit(ctx, req); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Admit after Close: %v, want ErrClosed", err)
	}
	if err := s.Pause(ctx, "k", time.Second); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Pause after Close: %v, want ErrClosed", err)
	}
	batch := []driver.Admission{{Request: req}}
	s.AdmitBatch(ctx, batch)
	if !errors.Is(batch[0].Err, bucket.ErrClosed) {
		t.Errorf("AdmitBatch after Close: %v, want ErrClosed", batch[0].Err)
	}
}

func TestCancelledContext(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	if _, err := s.Admit(ctx, req); !errors.Is(err, context.Canceled) {
		t.Errorf("Admit with a cancelled ctx: %v, want context.Canceled", err)
	}
	if err := s.Pause(ctx, "k", time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Pause with a cancelled ctx: %v, want context.Canceled", err)
	}
	// Nothing was charged.
	if d, err := s.Admit(context.Background(), req); err != nil || !d.Allowed {
		t.Errorf("Admit after cancelled calls = %+v, %v; want allowed", d, err)
	}
}

// TestForeignValue: a key under the prefix holding something else is an
// error about that key, not an outage.
func TestForeignValue(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{FailurePolicy: redisstore.FailOpen})
	ctx := context.Background()
	s.Client().HSet(ctx, s.RedisKey("hash"), "a", "b")
	t.Cleanup(func() { s.Client().Del(context.Background(), s.RedisKey("hash")) })
	_, err := s.Admit(ctx, driver.Request{Key: "hash", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1})
	var rerr redis.Error
	if err == nil || errors.Is(err, redisstore.ErrUnavailable) || !errors.As(err, &rerr) {
		t.Errorf("Admit on a hash = %v, want a redis.Error that is not ErrUnavailable", err)
	}
	if d, err := s.Admit(ctx, driver.Request{Key: "other", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}); err != nil || !d.Allowed {
		t.Errorf("Admit on another key after the error = %+v, %v; want allowed by Redis", d, err)
	}
	if d, _ := s.Admit(ctx, driver.Request{Key: "other", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}); d.Allowed {
		t.Error("second Admit of burst 1 allowed: the store failed open after an error about one key")
	}
}

// TestExactRange: quota counts are Lua doubles, exact below 2^53. A quota
// above MaxQuotaUnits is lowered to it; a burst above it, with quotas, is
// rejected.
func TestExactRange(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	huge := bucket.PerSecond(1).WithQuota(math.MaxInt64, time.Hour)
	if d, err := s.Admit(ctx, driver.Request{Key: "huge-quota", Limit: backendtest.Limit(huge), Cost: 1}); err != nil || !d.Allowed {
		t.Errorf("Admit under a quota of MaxInt64 = %+v, %v; want allowed", d, err)
	}
	fast := bucket.Every(time.Second, 1_000_000_000).WithBurst(redisstore.MaxQuotaUnits + 1)
	if d, err := s.Admit(ctx, driver.Request{Key: "huge-burst", Limit: backendtest.Limit(fast), Cost: 1}); err != nil || !d.Allowed {
		t.Errorf("Admit of burst 2^50+1 without quotas = %+v, %v; want allowed", d, err)
	}
	_, err := s.Admit(ctx, driver.Request{Key: "huge-burst-quota", Limit: backendtest.Limit(fast.WithQuota(10, time.Hour)), Cost: 1})
	var le *bucket.LimitError
	if !errors.As(err, &le) || le.Field != "Burst" {
		t.Errorf("Admit of burst 2^50+1 with a quota: %v, want a *bucket.LimitError naming Burst", err)
	}
}

// TestForeignValueInBatch: in a batch decided by one script call, a key
// holding something else fails alone; the others are decided, and charged,
// once.
func TestForeignValueInBatch(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	s.Client().RPush(ctx, s.RedisKey("list"), "x")
	t.Cleanup(func() { s.Client().Del(context.Background(), s.RedisKey("list")) })
	lim := bucket.PerHour(1)
	batch := []driver.Admission{
		{Request: driver.Request{Key: "good1", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: driver.Request{Key: "list", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: driver.Request{Key: "good2", Limit: backendtest.Limit(lim), Cost: 1}},
	}
	s.AdmitBatch(ctx, batch)
	var rerr redis.Error
	if err := batch[1].Err; err == nil || errors.Is(err, redisstore.ErrUnavailable) || !errors.As(err, &rerr) || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("the list's admission: %v, want a WRONGTYPE redis.Error that is not ErrUnavailable", err)
	}
	for _, i := range []int{0, 2} {
		if a := batch[i]; a.Err != nil || !a.Decision.Allowed {
			t.Errorf("%s beside the list: %+v, %v; want allowed", a.Key, a.Decision, a.Err)
		}
		if d, err := s.Admit(ctx, batch[i].Request); err != nil || d.Allowed {
			t.Errorf("%s again (burst 1): %+v, %v; want refused: charged once", batch[i].Key, d, err)
		}
	}
}

// TestForeignValueWrites: a pause or a refund on a key holding something
// else is an error about that key, as an admission is.
func TestForeignValueWrites(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	s.Client().HSet(ctx, s.RedisKey("hash"), "a", "b")
	t.Cleanup(func() { s.Client().Del(context.Background(), s.RedisKey("hash")) })
	var rerr redis.Error
	if err := s.Pause(ctx, "hash", time.Second); err == nil || errors.Is(err, redisstore.ErrUnavailable) || !errors.As(err, &rerr) {
		t.Errorf("Pause on a hash = %v, want a redis.Error that is not ErrUnavailable", err)
	}
	req := driver.Request{Key: "hash", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	d := driver.Decision{Allowed: true, Now: time.Now().UnixNano(), Booking: driver.Booking{TAT: 2, Prev: 1, Gen: 1}}
	if err := s.Refund(ctx, req, d); err == nil || errors.Is(err, redisstore.ErrUnavailable) || !errors.As(err, &rerr) {
		t.Errorf("Refund on a hash = %v, want a redis.Error that is not ErrUnavailable", err)
	}
}

// TestExpiry: a key never expires before its state is fresh, and after an
// admission lingers at most about a second after; writes that keep its
// expiry (a refund, an admission within the same second) keep the first
// true (after a refund the key may linger longer: a state found fresh is
// ignored).
func TestExpiry(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	ctx := context.Background()
	c := s.Client()
	req := driver.Request{Key: "expiry", Limit: backendtest.Limit(bucket.PerSecond(1).WithBurst(10)), Cost: 1}
	check := func(what string, fresh int64, linger time.Duration) {
		t.Helper()
		pttl, err := c.PTTL(ctx, s.RedisKey(req.Key)).Result()
		if err != nil {
			t.Fatal(err)
		}
		now, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		left := time.Duration(fresh-now.UnixMicro()) * time.Microsecond
		if pttl < left-5*time.Millisecond || pttl > left+linger+5*time.Millisecond {
			t.Errorf("after %s: the key expires in %v, its state is fresh in %v: want no sooner and at most %v later", what, pttl, left, linger)
		}
	}
	var last driver.Decision
	for i := range 3 {
		d, fresh, err := redisstore.RawAdmit(ctx, s, req)
		if err != nil || !d.Allowed {
			t.Fatalf("admission %d: %+v, %v", i, d, err)
		}
		check(fmt.Sprintf("admission %d", i), fresh, time.Second)
		last = d
	}
	fresh, err := redisstore.RawRefund(ctx, s, req, last)
	if err != nil {
		t.Fatal(err)
	}
	check("a refund", fresh, 2*time.Second)
	d, fresh, err := redisstore.RawAdmit(ctx, s, req)
	if err != nil || !d.Allowed {
		t.Fatalf("admission after the refund: %+v, %v", d, err)
	}
	check("an admission after the refund", fresh, time.Second)
}

// TestExpiryOfEarlierStates: a state written by an earlier version of the
// script, whose key expires at the exact millisecond its state becomes
// fresh (no mark), is never kept on that expiry by a write that extends
// the state.
func TestExpiryOfEarlierStates(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	ctx := context.Background()
	c := s.Client()
	key := s.RedisKey("earlier")
	now, err := c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Two units of a 10/s bucket, as the earlier script left them: TAT
	// 200 ms ahead, the key expiring then.
	tat := now.UnixMicro() + 200_000
	state := binary.LittleEndian.AppendUint64(nil, uint64(tat))
	state = binary.LittleEndian.AppendUint64(state, 0)
	state = binary.LittleEndian.AppendUint64(state, 2)
	if err := c.Set(ctx, key, state, 200*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	req := driver.Request{Key: "earlier", Limit: backendtest.Limit(bucket.PerSecond(10).WithBurst(5)), Cost: 1}
	d, fresh, err := redisstore.RawAdmit(ctx, s, req)
	if err != nil || !d.Allowed {
		t.Fatalf("admission: %+v, %v", d, err)
	}
	pttl, err := c.PTTL(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	now, err = c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Duration(fresh-now.UnixMicro()) * time.Microsecond; pttl < left-5*time.Millisecond {
		t.Errorf("the key expires in %v, before its state is fresh (in %v): the earlier expiry was kept", pttl, left)
	}
}

// TestScriptLost: after Redis loses the script (a restart, SCRIPT FLUSH),
// every operation loads it again and applies: an admission alone and in a
// batch, a refund, a pause.
func TestScriptLost(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	flush := func() {
		t.Helper()
		if err := s.Client().ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1).WithBurst(2)), Cost: 1}
	flush()
	d, err := s.Admit(ctx, req)
	if err != nil || !d.Allowed {
		t.Fatalf("Admit after SCRIPT FLUSH = %+v, %v; want allowed", d, err)
	}
	flush()
	if err := s.Refund(ctx, req, d); err != nil {
		t.Fatalf("Refund after SCRIPT FLUSH: %v", err)
	}
	flush()
	batch := []driver.Admission{{Request: req}, {Request: req}}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		if a.Err != nil || !a.Decision.Allowed {
			t.Errorf("AdmitBatch after SCRIPT FLUSH, admission %d = %+v, %v; want both of the burst of 2 allowed (the refund applied)", i, a.Decision, a.Err)
		}
	}
	flush()
	if err := s.Pause(ctx, "other", time.Hour); err != nil {
		t.Fatalf("Pause after SCRIPT FLUSH: %v", err)
	}
	if d, err := s.Admit(ctx, driver.Request{Key: "other", Limit: req.Limit, Cost: 1}); err != nil || d.Allowed {
		t.Errorf("Admit of a paused key = %+v, %v; want refused: the pause did not apply", d, err)
	}
}
