package proctest

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The lease tests (guarantee 12) run the test binary again as 4 processes
// on one key capped at LeaseCap leases. In "4x8" each runs 8 goroutines
// that take a lease, hold it 0–2 ms and release it, for 2 seconds, and
// backendtest.CheckInflight judges the intervals they held leases in, on
// the host's wall clock. In "crash" one process takes LeaseCap leases of
// LeaseTTL and is killed with SIGKILL holding them; the others must get
// none of that key until the killed leases expire, by the backend's clock,
// and all LeaseCap places back within LeaseTTL + LeaseSlack.

// LeaseCap is the inflight cap of the lease tests.
const LeaseCap = 3

// LeaseLimit is the limit of the lease tests: a rate that never binds, so
// that the cap does.
var LeaseLimit = bucket.PerSecond(1_000_000).WithBurst(1_000_000).WithInflight(LeaseCap)

// LeaseTTL is the time to live of the leases the crash test's killed
// process holds.
const LeaseTTL = time.Second

// LeaseSlack is how long after the killed leases expire the others may
// take to get them back: the time it takes them to ask again.
const LeaseSlack = time.Second

// takerTTL is the time to live of the leases the survivors of the crash
// test take and keep: longer than the test, so that they never come back
// during it.
const takerTTL = 30 * time.Second

// Leases runs the lease tests as subtests of t, with children that re-run
// t (a top-level test) with cfg.Env set: such a child calls LeaseChild
// instead of Leases. cfg.Now reads the backend's clock. The children use
// keys of their own, named by the parent.
func Leases(t *testing.T, cfg Config) {
	t.Helper()
	if testing.Short() {
		t.Skip("takes 6 seconds")
	}
	test := t.Name()
	require.NotContains(t, test, "/", "Leases runs subtests of a top-level test")
	suffix := strconv.FormatUint(rand.Uint64(), 36)
	t.Run("4x8", func(t *testing.T) { leaseHammer(t, cfg, test, "leases-4x8-"+suffix) })
	t.Run("crash", func(t *testing.T) { leaseCrash(t, cfg, test, "leases-crash-"+suffix) })
}

// leaseHammer runs the 4x8 lease test on key.
func leaseHammer(t *testing.T, cfg Config, test, key string) {
	const procs = 4
	children := startChildren(t, cfg, test, procs)
	now, err := cfg.Now()
	require.NoError(t, err, "the backend's clock")
	const span = 2 * time.Second
	until := now.Add(span).UnixNano()
	for _, ch := range children {
		fmt.Fprintf(ch.stdin, "hammer %s %d\n", key, until)
		ch.stdin.Close()
	}
	var spans []backendtest.Interval
	for i, ch := range children {
		n, other := 0, ""
		for line := range ch.lines {
			var from, to int64
			if _, err := fmt.Sscanf(line, "span %d %d", &from, &to); err == nil {
				spans = append(spans, backendtest.Interval{From: time.Unix(0, from), To: time.Unix(0, to)})
				n++
			} else {
				other += line + "\n"
			}
		}
		require.NoError(t, ch.cmd.Wait(), "process %d:\n%s%s", i, other, ch.out.String())
		assert.NotZero(t, n, "process %d leases held:\n%s%s", i, other, ch.out.String())
	}
	t.Logf("%d processes × 8 goroutines held %d leases in %v (%.0f/s), cap %d", procs, len(spans), span, float64(len(spans))/span.Seconds(), LeaseCap)
	assert.NoError(t, backendtest.CheckInflight(LeaseCap, spans), "%d processes on one key", procs)
	// The check proves something only if the holders reached the cap.
	assert.Error(t, backendtest.CheckInflight(LeaseCap-1, spans), "never %d holders at once: the processes did not contend for the cap", LeaseCap)
}

// leaseCrash runs the crash lease test on key.
func leaseCrash(t *testing.T, cfg Config, test, key string) {
	children := startChildren(t, cfg, test, 4)
	victim, takers := children[0], children[1:]
	fmt.Fprintf(victim.stdin, "hold %s\n", key)
	var (
		held    []int64 // the backend's clock at each of the victim's leases
		holding bool
		other   string
	)
	for line := range victim.lines {
		var at int64
		if _, err := fmt.Sscanf(line, "held %d", &at); err == nil {
			held = append(held, at)
		} else if holding = line == "holding"; holding {
			break
		} else {
			other += line + "\n"
		}
	}
	require.NoError(t, victim.cmd.Process.Kill(), "SIGKILL")
	victim.cmd.Wait() // its stderr is complete once it has been waited for
	require.True(t, holding && len(held) == LeaseCap, "the holding process took %d leases, want %d:\n%s%s", len(held), LeaseCap, other, victim.out.String())

	// The expiries of the killed leases, on the backend's clock: the i-th
	// grant after the kill needs i+1 of them expired.
	expiries := make([]int64, len(held))
	for i, at := range held {
		expiries[i] = at + int64(LeaseTTL)
	}
	slices.Sort(expiries)
	back := expiries[len(expiries)-1] + int64(LeaseSlack)
	until := back + int64(LeaseSlack)/2 // ask on for a while, for grants beyond the cap
	for _, ch := range takers {
		fmt.Fprintf(ch.stdin, "take %s %d\n", key, until)
		ch.stdin.Close()
	}
	var grants []int64
	for i, ch := range takers {
		other := ""
		for line := range ch.lines {
			var at int64
			if _, err := fmt.Sscanf(line, "got %d", &at); err == nil {
				grants = append(grants, at)
			} else {
				other += line + "\n"
			}
		}
		require.NoError(t, ch.cmd.Wait(), "process %d:\n%s%s", i+1, other, ch.out.String())
	}
	slices.Sort(grants)
	for i, at := range grants[:min(len(grants), len(expiries))] {
		assert.GreaterOrEqual(t, at, expiries[i], "lease %d of the survivors taken %v before the killed process's lease %d expired (backend clock)", i+1, time.Duration(expiries[i]-at), i+1)
	}
	assert.LessOrEqual(t, len(grants), LeaseCap, "leases the survivors took, cap %d", LeaseCap)
	require.Len(t, grants, LeaseCap, "leases the survivors got back within LeaseTTL + LeaseSlack (%v) of the killed ones", LeaseTTL+LeaseSlack)
	last := grants[len(grants)-1]
	assert.LessOrEqual(t, last, back, "the last place came back %v after the last killed lease expired, want within %v", time.Duration(last-expiries[len(expiries)-1]), LeaseSlack)
	late := make([]time.Duration, len(grants))
	for i := range grants {
		late[i] = time.Duration(grants[i] - expiries[i])
	}
	t.Logf("%d leases of %v killed with their holder: the survivors took each place %v after it expired (backend clock)", len(held), LeaseTTL, late)
}

// LeaseChild is the body of a child of Leases, on s, a store of the
// storage its parent named in Config.Orders. It prints "ready", reads one
// order on its stdin and carries it out:
//
//   - "hammer KEY UNTIL": 8 goroutines take a lease of KEY, hold it 0–2 ms
//     and release it, until the backend's clock reaches UNTIL (Unix ns),
//     and print "span FROM TO" (the host's wall clock, Unix ns) for each;
//   - "hold KEY": take LeaseCap leases of KEY for LeaseTTL, print "held
//     NOW" (the backend's clock at each) and "holding", and wait to be
//     killed;
//   - "take KEY UNTIL": 8 goroutines take leases of KEY and keep them,
//     asking again until the backend's clock reaches UNTIL, and print "got
//     NOW" (the backend's clock) for each.
func LeaseChild(t *testing.T, s driver.LeaseBackend) {
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadString('\n')
	require.NoError(t, err, "the parent's order")
	order := strings.Fields(line)
	require.GreaterOrEqual(t, len(order), 2, "the parent's order %q", line)
	key := order[1]
	var until int64
	if len(order) > 2 {
		until, err = strconv.ParseInt(order[2], 10, 64)
		require.NoError(t, err, "the parent's order %q", line)
	}
	switch order[0] {
	case "hammer":
		hammerLeases(t, s, key, until)
	case "hold":
		holdLeases(t, s, key)
		in.ReadString('\n') // until killed
	case "take":
		takeLeases(t, s, key, until)
	default:
		require.Failf(t, "unknown order", "%q", line)
	}
}

// leaseReq returns a request of key under LeaseLimit for a lease of id.
func leaseReq(key string, id driver.LeaseID, ttl time.Duration) driver.Request {
	return driver.Request{Key: key, Limit: backendtest.Limit(LeaseLimit), Cost: 1, Lease: id, LeaseTTL: ttl}
}

// everyGoroutine runs body on 8 goroutines, each with an output that
// reaches stdout when all have returned, and waits for them.
func everyGoroutine(body func(say func(format string, args ...any))) {
	var (
		mu  sync.Mutex
		out = bufio.NewWriter(os.Stdout)
		wg  sync.WaitGroup
	)
	defer out.Flush()
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		mu.Unlock()
	}
	for range 8 {
		wg.Go(func() { body(say) })
	}
	wg.Wait()
}

func hammerLeases(t *testing.T, s driver.LeaseBackend, key string, until int64) {
	ctx := context.Background()
	ids := driver.NewLeaseIDs()
	everyGoroutine(func(say func(string, ...any)) {
		for {
			r := leaseReq(key, ids.Next(), 0)
			d, err := s.Admit(ctx, r)
			if !assert.NoError(t, err, "Admit") {
				return
			}
			if !d.Allowed {
				if d.Now >= until {
					return
				}
				// At the cap, Wait is when a lease expires: holders
				// release theirs much sooner.
				time.Sleep(min(d.Wait, rand.N(time.Millisecond)))
				continue
			}
			from := time.Now()
			time.Sleep(rand.N(2 * time.Millisecond)) // the work
			to := time.Now()
			if !assert.NoError(t, s.Release(ctx, []driver.LeaseRef{{Key: key, ID: r.Lease}}), "Release") {
				return
			}
			say("span %d %d", from.UnixNano(), to.UnixNano())
			if d.Now >= until {
				return
			}
		}
	})
}

func holdLeases(t *testing.T, s driver.LeaseBackend, key string) {
	ids := driver.NewLeaseIDs()
	for range LeaseCap {
		r := leaseReq(key, ids.Next(), LeaseTTL)
		d, err := s.Admit(context.Background(), r)
		require.NoError(t, err, "Admit")
		require.True(t, d.Allowed, "lease under the cap refused (at the cap: %v)", d.AtCap)
		fmt.Println("held", d.Now)
	}
	fmt.Println("holding")
}

func takeLeases(t *testing.T, s driver.LeaseBackend, key string, until int64) {
	ctx := context.Background()
	ids := driver.NewLeaseIDs()
	everyGoroutine(func(say func(string, ...any)) {
		for {
			d, err := s.Admit(ctx, leaseReq(key, ids.Next(), takerTTL))
			if !assert.NoError(t, err, "Admit") {
				return
			}
			if d.Allowed {
				say("got %d", d.Now)
			}
			if d.Now >= until {
				return
			}
			if !d.Allowed {
				time.Sleep(min(d.Wait, 20*time.Millisecond))
			}
		}
	})
}
