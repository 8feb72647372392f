package redisstore_test

import (
	"context"
	"encoding/binary"
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
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	require.NoError(t, err, "New")
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
		// A key's state is its bucket and its lease set: the bucket may
		// expire while leases are held (its state is then fresh), the
		// set keeps them.
		Forgotten: func(t *testing.T, b driver.Backend, key string) bool {
			s := b.(*redisstore.Store)
			n, err := s.Client().Exists(context.Background(), s.RedisKey(key), s.LeaseKey(key)).Result()
			require.NoError(t, err, "EXISTS")
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
		require.NoError(t, err)
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
		require.NoError(t, a.Err, "batch[%d]", i)
		require.True(t, a.Decision.Allowed, "batch[%d]", i)
	}
	var masters atomic.Int32
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		it := m.Scan(ctx, 0, s.RedisKey("spread-*"), 100).Iterator()
		if it.Next(ctx) {
			masters.Add(1)
		}
		return it.Err()
	})
	require.NoError(t, err)
	assert.Equal(t, len(addrs), int(masters.Load()), "masters holding some of 300 buckets")
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
		if s, err := redisstore.New(c, opts); !assert.Error(t, err, "New(%+v)", opts) {
			s.Close()
		}
	}
	_, err := redisstore.New(nil, redisstore.Options{})
	assert.Error(t, err, "New(nil client)")
	s, err := redisstore.New(c, redisstore.Options{})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, "leakybucket:a{b}\x00", s.RedisKey("a{b}\x00"), "RedisKey with the default prefix")
}

// TestKeys checks that keys of any bytes map to distinct Redis keys,
// byte for byte.
func TestKeys(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	keys := []string{"{", "}", "{}", "}{", "{a}b", "a\x00", "\x00", "\n", "\xff", strings.Repeat("\xfe{", 512)}
	for _, k := range keys {
		d, err := s.Admit(ctx, driver.Request{Key: k, Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
		require.NoError(t, err, "Admit(%q)", k)
		require.True(t, d.Allowed, "Admit(%q)", k)
		assert.Equal(t, int64(1), s.Client().Exists(ctx, s.RedisKey(k)).Val(), "EXISTS %q after Admit(%q)", s.RedisKey(k), k)
	}
}

func TestClosed(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	s.Close()
	s.Close()
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	_, err := s.Admit(ctx, req)
	assert.ErrorIs(t, err, bucket.ErrClosed, "Admit after Close")
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), bucket.ErrClosed, "Pause after Close")
	batch := []driver.Admission{{Request: req}}
	s.AdmitBatch(ctx, batch)
	assert.ErrorIs(t, batch[0].Err, bucket.ErrClosed, "AdmitBatch after Close")
}

func TestCancelledContext(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	_, err := s.Admit(ctx, req)
	assert.ErrorIs(t, err, context.Canceled, "Admit with a cancelled ctx")
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), context.Canceled, "Pause with a cancelled ctx")
	// Nothing was charged.
	d, err := s.Admit(context.Background(), req)
	assert.NoError(t, err, "Admit after cancelled calls")
	assert.True(t, d.Allowed, "Admit after cancelled calls")
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
	assert.ErrorAs(t, err, &rerr, "Admit on a hash")
	assert.NotErrorIs(t, err, redisstore.ErrUnavailable, "Admit on a hash")
	d, err := s.Admit(ctx, driver.Request{Key: "other", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
	assert.NoError(t, err, "Admit on another key after the error")
	assert.True(t, d.Allowed, "Admit on another key after the error: want allowed by Redis")
	d, _ = s.Admit(ctx, driver.Request{Key: "other", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
	assert.False(t, d.Allowed, "second Admit of burst 1 allowed: the store failed open after an error about one key")
}

// TestExactRange: quota counts are Lua doubles, exact below 2^53. A quota
// above MaxQuotaUnits is lowered to it; a burst above it, with quotas, is
// rejected.
func TestExactRange(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	huge := bucket.PerSecond(1).WithQuota(math.MaxInt64, time.Hour)
	d, err := s.Admit(ctx, driver.Request{Key: "huge-quota", Limit: backendtest.Limit(huge), Cost: 1})
	assert.NoError(t, err, "Admit under a quota of MaxInt64")
	assert.True(t, d.Allowed, "Admit under a quota of MaxInt64")
	fast := bucket.Every(time.Second, 1_000_000_000).WithBurst(redisstore.MaxQuotaUnits + 1)
	d, err = s.Admit(ctx, driver.Request{Key: "huge-burst", Limit: backendtest.Limit(fast), Cost: 1})
	assert.NoError(t, err, "Admit of burst 2^50+1 without quotas")
	assert.True(t, d.Allowed, "Admit of burst 2^50+1 without quotas")
	_, err = s.Admit(ctx, driver.Request{Key: "huge-burst-quota", Limit: backendtest.Limit(fast.WithQuota(10, time.Hour)), Cost: 1})
	var le *bucket.LimitError
	if assert.ErrorAs(t, err, &le, "Admit of burst 2^50+1 with a quota") {
		assert.Equal(t, "Burst", le.Field, "Admit of burst 2^50+1 with a quota: the field named")
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
	assert.ErrorAs(t, batch[1].Err, &rerr, "the list's admission")
	assert.NotErrorIs(t, batch[1].Err, redisstore.ErrUnavailable, "the list's admission")
	assert.ErrorContains(t, batch[1].Err, "WRONGTYPE", "the list's admission")
	for _, i := range []int{0, 2} {
		a := batch[i]
		assert.NoError(t, a.Err, "%s beside the list", a.Key)
		assert.True(t, a.Decision.Allowed, "%s beside the list", a.Key)
		d, err := s.Admit(ctx, a.Request)
		assert.NoError(t, err, "%s again", a.Key)
		assert.False(t, d.Allowed, "%s again (burst 1): want refused: charged once", a.Key)
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
	err := s.Pause(ctx, "hash", time.Second)
	assert.ErrorAs(t, err, &rerr, "Pause on a hash")
	assert.NotErrorIs(t, err, redisstore.ErrUnavailable, "Pause on a hash")
	req := driver.Request{Key: "hash", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	d := driver.Decision{Allowed: true, Now: time.Now().UnixNano(), Booking: driver.Booking{TAT: 2, Prev: 1, Gen: 1}}
	err = s.Refund(ctx, req, d)
	assert.ErrorAs(t, err, &rerr, "Refund on a hash")
	assert.NotErrorIs(t, err, redisstore.ErrUnavailable, "Refund on a hash")
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
		require.NoError(t, err)
		now, err := c.Time(ctx).Result()
		require.NoError(t, err)
		left := time.Duration(fresh-now.UnixMicro()) * time.Microsecond
		assert.GreaterOrEqual(t, pttl, left-5*time.Millisecond, "after %s: the key's expiry, its state fresh in %v: want no sooner", what, left)
		assert.LessOrEqual(t, pttl, left+linger+5*time.Millisecond, "after %s: the key's expiry, its state fresh in %v: want at most %v later", what, left, linger)
	}
	var last driver.Decision
	for i := range 3 {
		d, fresh, err := redisstore.RawAdmit(ctx, s, req)
		require.NoError(t, err, "admission %d", i)
		require.True(t, d.Allowed, "admission %d", i)
		check(fmt.Sprintf("admission %d", i), fresh, time.Second)
		last = d
	}
	fresh, err := redisstore.RawRefund(ctx, s, req, last)
	require.NoError(t, err)
	check("a refund", fresh, 2*time.Second)
	d, fresh, err := redisstore.RawAdmit(ctx, s, req)
	require.NoError(t, err, "admission after the refund")
	require.True(t, d.Allowed, "admission after the refund")
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
	require.NoError(t, err)
	// Two units of a 10/s bucket, as the earlier script left them: TAT
	// 200 ms ahead, the key expiring then.
	tat := now.UnixMicro() + 200_000
	state := binary.LittleEndian.AppendUint64(nil, uint64(tat))
	state = binary.LittleEndian.AppendUint64(state, 0)
	state = binary.LittleEndian.AppendUint64(state, 2)
	require.NoError(t, c.Set(ctx, key, state, 200*time.Millisecond).Err())
	req := driver.Request{Key: "earlier", Limit: backendtest.Limit(bucket.PerSecond(10).WithBurst(5)), Cost: 1}
	d, fresh, err := redisstore.RawAdmit(ctx, s, req)
	require.NoError(t, err)
	require.True(t, d.Allowed, "admission")
	pttl, err := c.PTTL(ctx, key).Result()
	require.NoError(t, err)
	now, err = c.Time(ctx).Result()
	require.NoError(t, err)
	left := time.Duration(fresh-now.UnixMicro()) * time.Microsecond
	assert.GreaterOrEqual(t, pttl, left-5*time.Millisecond, "the key's expiry, its state fresh in %v: the earlier expiry was kept", left)
}

// TestScriptLost: after Redis loses the script (a restart, SCRIPT FLUSH),
// every operation loads it again and applies: an admission alone and in a
// batch, a refund, a pause.
func TestScriptLost(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	ctx := context.Background()
	flush := func() {
		t.Helper()
		require.NoError(t, s.Client().ScriptFlush(ctx).Err())
	}
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1).WithBurst(2)), Cost: 1}
	flush()
	d, err := s.Admit(ctx, req)
	require.NoError(t, err, "Admit after SCRIPT FLUSH")
	require.True(t, d.Allowed, "Admit after SCRIPT FLUSH")
	flush()
	require.NoError(t, s.Refund(ctx, req, d), "Refund after SCRIPT FLUSH")
	flush()
	batch := []driver.Admission{{Request: req}, {Request: req}}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		assert.NoError(t, a.Err, "AdmitBatch after SCRIPT FLUSH, admission %d", i)
		assert.True(t, a.Decision.Allowed, "AdmitBatch after SCRIPT FLUSH, admission %d: want both of the burst of 2 allowed (the refund applied)", i)
	}
	flush()
	require.NoError(t, s.Pause(ctx, "other", time.Hour), "Pause after SCRIPT FLUSH")
	d, err = s.Admit(ctx, driver.Request{Key: "other", Limit: req.Limit, Cost: 1})
	assert.NoError(t, err, "Admit of a paused key")
	assert.False(t, d.Allowed, "Admit of a paused key: the pause did not apply")
}
