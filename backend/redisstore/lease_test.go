package redisstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/faulttest"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	leased = backendtest.Leased
	refs   = backendtest.LeaseRefs
)

// TestSlotTags: every slot has a tag of three letters or digits whose
// CRC16 falls in it. Lease set names carry them, so they may never
// change: a few are pinned.
func TestSlotTags(t *testing.T) {
	for slot := range 16384 {
		tag := redisstore.SlotTag(slot)
		require.Len(t, tag, 3, "tag of slot %d", slot)
		require.NotContains(t, tag, "}", "tag of slot %d", slot)
		require.Equal(t, slot, redisstore.KeySlot(tag), "slot of the tag %q of slot %d", tag, slot)
	}
	for slot, tag := range map[int]string{0: "06S", 1: "2Gx", 12182: "9Le", 15543: "00a", 16383: "6ZJ"} {
		assert.Equal(t, tag, redisstore.SlotTag(slot), "tag of slot %d", slot)
	}
}

// oddKeys are bucket keys whose hash tags are odd: none, empty, unclosed,
// closed before they open, several.
var oddKeys = []string{"a", "{", "}", "{}", "}{", "{a}b", "a{b}c", "a}b", "{}x}", "x{", "x{}{y}", "\x00", "\xff{", "{{}}", strings.Repeat("\xfe{", 512)}

// TestLeaseKeySlots: a bucket's lease set lies in the bucket key's slot,
// by Redis's own CLUSTER KEYSLOT, for keys and prefixes of any bytes, and
// KeySlot agrees with Redis.
func TestLeaseKeySlots(t *testing.T) {
	addrs := redistest.ClusterAddrs(t)
	node := redis.NewClient(&redis.Options{Addr: addrs[0]})
	t.Cleanup(func() { node.Close() })
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	keys := append([]string(nil), oddKeys...)
	for range 300 {
		b := make([]byte, 1+rng.IntN(12))
		for i := range b {
			b[i] = "{}ab\x00\xff"[rng.IntN(6)]
		}
		keys = append(keys, string(b))
	}
	for _, prefix := range []string{"", "{lb}:", "a{", "a}", "x{}"} {
		s := newStore(t, node, redisstore.Options{Prefix: prefix})
		for _, k := range keys {
			want, err := node.ClusterKeySlot(ctx, s.RedisKey(k)).Result()
			require.NoError(t, err)
			got, err := node.ClusterKeySlot(ctx, s.LeaseKey(k)).Result()
			require.NoError(t, err)
			require.Equal(t, want, got, "slot of LeaseKey(%q) = %q, prefix %q: want RedisKey's", k, s.LeaseKey(k), prefix)
			require.Equal(t, int(want), redisstore.KeySlot(s.RedisKey(k)), "KeySlot(%q)", s.RedisKey(k))
		}
	}
}

// TestLeasesClusterOddKeys: in a Cluster, every call on a capped key's
// bucket and lease set together (admission, refund, renewal, release)
// reaches one slot, whatever the key's braces: none fails with
// CROSSSLOT.
func TestLeasesClusterOddKeys(t *testing.T) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: redistest.ClusterAddrs(t)})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{})
	ctx := context.Background()
	lim := bucket.PerHour(100).WithBurst(100).WithInflight(1)
	for _, k := range oddKeys {
		r := leased(k, lim, "a", time.Hour)
		d, err := s.Admit(ctx, r)
		require.NoError(t, err, "Admit(%q)", k)
		require.True(t, d.Allowed, "Admit(%q)", k)
		lost, err := s.Renew(ctx, refs(k, "a"), time.Hour)
		require.NoError(t, err, "Renew(%q)", k)
		assert.Empty(t, lost, "Renew(%q)", k)
		require.NoError(t, s.Refund(ctx, r, d), "Refund(%q)", k)
		d, err = s.Admit(ctx, leased(k, lim, "b", time.Hour))
		require.NoError(t, err, "Admit(%q) after the refund", k)
		require.True(t, d.Allowed, "Admit(%q) after the refund released the lease", k)
		require.NoError(t, s.Release(ctx, refs(k, "b")), "Release(%q)", k)
		n, err := c.Exists(ctx, s.LeaseKey(k)).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "lease set of %q after its last lease was released", k)
	}
}

func TestLeasePrefix(t *testing.T) {
	c := newClient(t)
	for _, opts := range []redisstore.Options{
		{LeasePrefix: "leases{x}:"},
		{Prefix: "a:", LeasePrefix: "a:leases:"},
		{Prefix: "leases:a:", LeasePrefix: "leases:"},
		{Prefix: "leakybucket-leases:"},
		{LeasePrefix: "leakybucket:"},
	} {
		if s, err := redisstore.New(c, opts); !assert.Error(t, err, "New(%+v)", opts) {
			s.Close()
		}
	}
	s, err := redisstore.New(c, redisstore.Options{})
	require.NoError(t, err)
	defer s.Close()
	tag := redisstore.SlotTag(redisstore.KeySlot("leakybucket:k"))
	assert.Equal(t, "leakybucket-leases:{"+tag+"}leakybucket:k", s.LeaseKey("k"), "LeaseKey with the default prefixes")
}

// fakeClock makes s decide at *now (µs) instead of Redis's TIME.
func fakeClock(t *testing.T, s *redisstore.Store) *int64 {
	now := new(int64)
	*now = 1_700_000_000_000_000
	redisstore.SetClock(s, func() int64 { return *now })
	return now
}

// TestLeaseSet: a key's leases are the members of its lease set, scored
// with their expiry on the key's clock (µs); expired ones stay until an
// admission of the key removes them, before it counts the others, and
// count for nothing.
func TestLeaseSet(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	now := fakeClock(t, s)
	ctx := context.Background()
	lim := bucket.PerSecond(1000).WithBurst(1000).WithInflight(2)
	admit := func(id string, ttl time.Duration) driver.Decision {
		t.Helper()
		d, err := s.Admit(ctx, leased("k", lim, id, ttl))
		require.NoError(t, err, "Admit of lease %q", id)
		return d
	}
	members := func() []redis.Z {
		t.Helper()
		z, err := s.Client().ZRangeWithScores(ctx, s.LeaseKey("k"), 0, -1).Result()
		require.NoError(t, err)
		return z
	}
	t0 := *now
	require.True(t, admit("a", 100*time.Millisecond).Allowed)
	require.True(t, admit("b", 300*time.Millisecond).Allowed)
	want := []redis.Z{{Score: float64(t0 + 100_000), Member: "a"}, {Score: float64(t0 + 300_000), Member: "b"}}
	assert.Equal(t, want, members(), "lease set after two leases")
	*now += 150_000
	assert.Equal(t, want, members(), "lease set once a lease expired, before any admission")
	require.True(t, admit("c", 100*time.Millisecond).Allowed, "a lease with one of inflight=2 expired and one held")
	assert.Equal(t, []redis.Z{{Score: float64(t0 + 250_000), Member: "c"}, {Score: float64(t0 + 300_000), Member: "b"}}, members(), "lease set after the expired lease made room")
	d := admit("d", 100*time.Millisecond)
	assert.False(t, d.Allowed, "a third lease of inflight=2")
	assert.True(t, d.AtCap, "a third lease of inflight=2: AtCap")
	assert.Equal(t, 100*time.Millisecond, d.Wait, "a third lease of inflight=2: Wait, until the first lease expires")
}

// TestLeaseSetExpiry: a lease set expires in the second after its latest
// lease does, never before: a shorter lease taken after a longer one does
// not shorten it; a renewal lengthens it. Once its last lease is
// released it is gone.
func TestLeaseSetExpiry(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	ctx := context.Background()
	c := s.Client()
	lk := s.LeaseKey("k")
	lim := bucket.PerSecond(1000).WithBurst(1000).WithInflight(5)
	latest := int64(0) // µs, the latest expiry of a lease
	check := func(what string) {
		t.Helper()
		pttl, err := c.PTTL(ctx, lk).Result()
		require.NoError(t, err)
		now, err := c.Time(ctx).Result()
		require.NoError(t, err)
		left := time.Duration(latest-now.UnixMicro()) * time.Microsecond
		assert.GreaterOrEqual(t, pttl, left-time.Millisecond, "after %s: the set's expiry, its latest lease's in %v: want no sooner", what, left)
		assert.LessOrEqual(t, pttl, left+time.Second+5*time.Millisecond, "after %s: the set's expiry, its latest lease's in %v: want within the second after", what, left)
	}
	for _, l := range []struct {
		id  string
		ttl time.Duration
	}{{"a", 2 * time.Second}, {"b", time.Hour}, {"c", time.Second}} {
		d, err := s.Admit(ctx, leased("k", lim, l.id, l.ttl))
		require.NoError(t, err)
		require.True(t, d.Allowed, "lease %q", l.id)
		latest = max(latest, d.Now/1000+l.ttl.Microseconds())
		check(fmt.Sprintf("lease %q for %v", l.id, l.ttl))
	}
	now, err := c.Time(ctx).Result()
	require.NoError(t, err)
	lost, err := s.Renew(ctx, refs("k", "a"), 2*time.Hour)
	require.NoError(t, err)
	require.Empty(t, lost)
	latest = now.UnixMicro() + (2 * time.Hour).Microseconds()
	pttl, err := c.PTTL(ctx, lk).Result()
	require.NoError(t, err)
	assert.Greater(t, pttl, time.Hour+59*time.Minute, "the set's expiry after a lease was renewed for 2h")
	require.NoError(t, s.Release(ctx, refs("k", "a", "b", "c")))
	n, err := c.Exists(ctx, lk).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "lease set after its last lease was released")
}

// TestLeaseForeignValue: a lease set's name holding something else is an
// error about that key for every call that touches it, not an outage;
// the bucket is not charged.
func TestLeaseForeignValue(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{FailurePolicy: redisstore.FailOpen})
	ctx := context.Background()
	require.NoError(t, s.Client().Set(ctx, s.LeaseKey("k"), "x", time.Minute).Err())
	lim := bucket.PerHour(1).WithInflight(1)
	check := func(what string, err error) {
		t.Helper()
		var rerr redis.Error
		assert.ErrorAs(t, err, &rerr, what)
		assert.ErrorContains(t, err, "WRONGTYPE", what)
		assert.NotErrorIs(t, err, redisstore.ErrUnavailable, what)
	}
	_, err := s.Admit(ctx, leased("k", lim, "a", 0))
	check("Admit", err)
	_, err = s.Renew(ctx, refs("k", "a"), time.Second)
	check("Renew", err)
	check("Release", s.Release(ctx, refs("k", "a")))
	d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
	require.NoError(t, err)
	assert.True(t, d.Allowed, "uncapped admission of burst 1 after the failed capped one: the failure charged the bucket")
}

// TestLeaseParity feeds the same random sequences of capped and uncapped
// admissions in batches (several keys, runs of one key, so that one
// script call names several lease sets), renewals, releases, refunds and
// clock steps to driver.DecideLeased and the Leases methods in Go and to
// the script on a fake clock, and requires identical answers.
func TestLeaseParity(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	now := fakeClock(t, s)
	ctx := context.Background()
	type state struct {
		st driver.State
		ls driver.Leases
	}
	var (
		rng    = rand.New(rand.NewPCG(3, 4))
		keys   = []string{"p0", "p1", "p2"}
		ref    = map[string]*state{}
		limits = []bucket.Limit{
			bucket.PerSecond(1000).WithBurst(1000).WithInflight(2),
			bucket.PerSecond(1000).WithBurst(1000).WithInflight(1),
			bucket.PerSecond(20).WithBurst(3).WithInflight(3),
			bucket.PerSecond(20).WithBurst(3).WithQuota(10, time.Second).WithInflight(2),
			bucket.PerSecond(50),
		}
		ttls     = []time.Duration{0, 10 * time.Millisecond, 100 * time.Millisecond, time.Second}
		admitted []driver.Admission
		counts   = map[string]int{}
	)
	for _, k := range keys {
		ref[k] = &state{}
	}
	// at returns key's state at now: a bucket found fresh is forgotten, as
	// the script forgets it.
	at := func(key string) *state {
		st := ref[key]
		if driver.FreshAt(&st.st) <= *now {
			st.st = driver.State{}
		}
		return st
	}
	randomRefs := func() []driver.LeaseRef {
		out := make([]driver.LeaseRef, 1+rng.IntN(4))
		for i := range out {
			out[i] = driver.LeaseRef{Key: keys[rng.IntN(len(keys))], ID: driver.LeaseID(fmt.Sprint("l", rng.IntN(4)))}
		}
		return out
	}
	for step := range 2000 {
		where := fmt.Sprintf("step %d (now %d)", step, *now)
		switch op := rng.IntN(10); {
		case op < 5:
			batch := make([]driver.Admission, 1+rng.IntN(12))
			k := rng.IntN(len(keys))
			for i := range batch {
				if rng.IntN(3) == 0 { // else a run on one key
					k = rng.IntN(len(keys))
				}
				r := leased(keys[k], limits[rng.IntN(len(limits))], fmt.Sprint("l", rng.IntN(4)), ttls[rng.IntN(len(ttls))])
				if rng.IntN(4) == 0 {
					r.MaxWait = 100 * time.Millisecond
				}
				batch[i].Request = r
			}
			s.AdmitBatch(ctx, batch)
			for i, a := range batch {
				require.NoError(t, a.Err, "%s: batch[%d]", where, i)
				st := at(a.Key)
				want, err := driver.DecideLeased(&st.st, &st.ls, &a.Request, time.Microsecond, *now)
				require.NoError(t, err)
				require.Equal(t, want, a.Decision, "%s: batch[%d] %s inflight=%d lease %q ttl %v", where, i, a.Key, a.Limit.Inflight, a.Lease, a.LeaseTTL)
				counts[fmt.Sprintf("allowed=%v atCap=%v", a.Decision.Allowed, a.Decision.AtCap)]++
				if a.Decision.Allowed {
					admitted = append(admitted, a)
				}
			}
		case op < 7:
			leases := randomRefs()
			ttl := ttls[1+rng.IntN(len(ttls)-1)]
			lost, err := s.Renew(ctx, leases, ttl)
			require.NoError(t, err, where)
			var want []driver.LeaseRef
			for _, l := range leases {
				if !ref[l.Key].ls.Renew(l.ID, *now, *now+driver.Ticks(ttl, time.Microsecond)) {
					want = append(want, l)
				}
			}
			require.Equal(t, want, lost, "%s: Renew(%v, %v)", where, leases, ttl)
			counts[fmt.Sprint("renewals lost=", len(lost) > 0)]++
		case op < 8:
			leases := randomRefs()
			require.NoError(t, s.Release(ctx, leases), where)
			for _, l := range leases {
				ref[l.Key].ls.Release(l.ID)
			}
			counts["releases"]++
		case op < 9 && len(admitted) > 0:
			a := admitted[rng.IntN(len(admitted))]
			require.NoError(t, s.Refund(ctx, a.Request, a.Decision), where)
			st := at(a.Key)
			driver.Refund(&st.st, &a.Request, a.Decision, time.Microsecond)
			driver.ReleaseLeased(&st.ls, &a.Request)
			counts["refunds"]++
		default:
			*now += rng.Int64N(150_000)
		}
	}
	t.Logf("%v", counts)
}

// TestAbandonedLeasedAdmissionReleased: what Redis admitted for a caller
// that went away is given back with its leases, every one of them when
// several admissions of one key are joined into one refund.
func TestAbandonedLeasedAdmissionReleased(t *testing.T) {
	addr := slowProxy(t, redistest.Addr(t), 300*time.Millisecond)
	for _, n := range []int{1, 3} {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 5 * time.Second})
		t.Cleanup(func() { c.Close() })
		s := newStore(t, c, redisstore.Options{RetryInterval: time.Minute})
		require.NoError(t, c.Ping(context.Background()).Err())
		lim := bucket.PerHour(1000).WithBurst(1000).WithInflight(int64(n))
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		if n == 1 {
			_, err := s.Admit(ctx, leased("k", lim, "gone", time.Hour))
			assert.ErrorIs(t, err, context.DeadlineExceeded, "Admit")
		} else {
			batch := make([]driver.Admission, n)
			for i := range batch {
				batch[i].Request = leased("k", lim, fmt.Sprint("gone", i), time.Hour)
			}
			s.AdmitBatch(ctx, batch)
			for i, a := range batch {
				assert.ErrorIs(t, a.Err, context.DeadlineExceeded, "AdmitBatch[%d]", i)
			}
		}
		cancel()
		// The give-back arrives after Redis's answer: wait for it. The
		// leases, held for an hour, come back only by it.
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; ; i++ {
			d, err := s.Admit(context.Background(), leased("k", lim, fmt.Sprint("next", i), time.Hour))
			require.NoError(t, err)
			if d.Allowed {
				break
			}
			require.True(t, d.AtCap, "refused, not at the cap")
			require.False(t, time.Now().After(deadline), "%d abandoned leases of an hour still held after 10s", n)
			time.Sleep(50 * time.Millisecond)
		}
		allowed := 1
		for i := 0; ; i++ {
			d, err := s.Admit(context.Background(), leased("k", lim, fmt.Sprint("more", i), time.Hour))
			require.NoError(t, err)
			if !d.Allowed {
				break
			}
			allowed++
		}
		assert.Equal(t, n, allowed, "leases of inflight=%d taken after %d abandoned ones were given back", n, n)
	}
}

// TestLeasePolicies: what each failure policy does with capped requests
// and their leases while Redis is down (faulttest.LeasesWhileDown).
func TestLeasePolicies(t *testing.T) {
	for _, tt := range []struct {
		policy string
		opts   redisstore.Options
	}{
		{"FailClosed", redisstore.Options{}},
		{"FailOpen", redisstore.Options{FailurePolicy: redisstore.FailOpen, RetryInterval: -1}},
		{"FailLocal", redisstore.Options{FailurePolicy: redisstore.FailLocal}},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			faulttest.LeasesWhileDown(t, tt.policy, down(t, newStore(t, deadClient(t), tt.opts)))
		})
	}
}

// TestFailLocalLeasesAcrossOutage: under FailLocal a lease taken by the
// local buckets while Redis was down is renewed and released there once
// Redis is back, which knows nothing of it; a lease Redis holds is not
// renewed locally while it is down.
func TestFailLocalLeasesAcrossOutage(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), DialerRetries: 1, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{FailurePolicy: redisstore.FailLocal, RetryInterval: -1})
	ctx := context.Background()
	lim := bucket.PerHour(100).WithBurst(100).WithInflight(2)
	d, err := s.Admit(ctx, leased("k", lim, "redis", 0))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.False(t, redisstore.IsLocal(d), "lease taken with Redis up: want decided by Redis")

	require.NoError(t, srv.Kill())
	d, err = s.Admit(ctx, leased("k", lim, "local", 0))
	require.NoError(t, err)
	require.True(t, redisstore.IsLocal(d), "lease taken with Redis down: want decided locally")
	_, err = s.Renew(ctx, refs("k", "redis", "local"), time.Minute)
	assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Renew with Redis down, of its lease: it may hold it still")
	lost, err := s.Renew(ctx, refs("k", "local"), time.Minute)
	require.NoError(t, err, "Renew with Redis down, of the local lease")
	assert.Empty(t, lost, "Renew with Redis down: the local buckets renew their own")

	require.NoError(t, srv.Restart())
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(ctx).Err() != nil {
		require.False(t, time.Now().After(deadline), "Redis not back 10s after its restart")
		time.Sleep(50 * time.Millisecond)
	}
	lost, err = s.Renew(ctx, refs("k", "local"), time.Minute)
	require.NoError(t, err, "Renew with Redis back")
	assert.Empty(t, lost, "Renew with Redis back of the lease the local buckets took")
	require.NoError(t, s.Release(ctx, refs("k", "local")))
	lost, err = s.Renew(ctx, refs("k", "local"), time.Minute)
	require.NoError(t, err)
	assert.Equal(t, refs("k", "local"), lost, "Renew of the local lease after its release")
}
