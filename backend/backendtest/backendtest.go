// Package backendtest is the conformance suite every driver.Backend runs,
// and the reference checker that judges admitted start times against a
// limit. Third-party backends run it from their own tests:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, backendtest.Config{New: newMyBackend})
//	}
package backendtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Config describes the backend under test.
type Config struct {
	// New returns a backend for one subtest; register its cleanup with
	// t.Cleanup. Backends may share storage across subtests: every
	// subtest uses keys of its own.
	New func(t *testing.T) driver.Backend
	// Peer, if set, returns a second handle on b's storage (another
	// connection, another *sql.DB, another client), so that the suite can
	// check that handles share state as processes or hosts would. By
	// default the suite uses b itself.
	Peer func(t *testing.T, b driver.Backend) driver.Backend
	// Forgotten, if set, reports whether b holds no state for key, after
	// running whatever expiry the backend needs (a sweep). The suite then
	// checks guarantee 8: idle keys are forgotten, busy ones kept.
	Forgotten func(t *testing.T, b driver.Backend, key string) bool
}

// Run runs the conformance suite: validation, burst and rate, atomic
// refusal, booking ahead, rate and quotas under concurrency on one key and
// on many, pause, refund, limits changing at runtime, keys of any bytes,
// batches, idle expiry, for a driver.LeaseBackend the inflight cap's
// leases (a backend that keeps none must refuse capped requests with
// driver.ErrNoLeases), and for a driver.LearnBackend learned limits. A failure names the request and what was wrong
// with the backend's answer.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	require.NotNil(t, cfg.New, "backendtest: Config.New is nil")
	s := &suite{cfg: cfg, prefix: fmt.Sprintf("bt%d:", rand.Uint32())}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"Validation", s.testValidation},
		{"Burst", s.testBurst},
		{"RefusalChargesNothing", s.testRefusalChargesNothing},
		{"Booking", s.testBooking},
		{"ConcurrentOneKey", s.testConcurrentOneKey},
		{"ConcurrentQuotas", s.testConcurrentQuotas},
		{"ConcurrentManyKeys", s.testConcurrentManyKeys},
		{"Pause", s.testPause},
		{"Refund", s.testRefund},
		{"RefundJoined", s.testRefundJoined},
		{"LimitChange", s.testLimitChange},
		{"KeysOfAnyBytes", s.testKeys},
		{"Batch", s.testBatch},
		{"IdleExpiry", s.testIdleExpiry},
		{"LeasesUnsupported", s.testLeasesUnsupported},
		{"LeaseValidation", s.testLeaseValidation},
		{"LeaseCap", s.testLeaseCap},
		{"LeaseRateRefusal", s.testLeaseRateRefusal},
		{"LeaseExpiry", s.testLeaseExpiry},
		{"LeaseBatch", s.testLeaseBatch},
		{"LeaseConcurrent", s.testLeaseConcurrent},
		{"LeaseIdle", s.testLeaseIdle},
		{"LearnValidation", s.testLearnValidation},
		{"LearnAnnounced", s.testLearnAnnounced},
		{"LearnThrottle", s.testLearnThrottle},
		{"LearnRemaining", s.testLearnRemaining},
		{"LearnConcurrent", s.testLearnConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

type suite struct {
	cfg    Config
	prefix string
}

// key returns a key of t's own, so that backends sharing storage across
// subtests (and runs) never see one subtest's state in another.
func (s *suite) key(t *testing.T, name string) string {
	return s.prefix + t.Name() + ":" + name
}

func (s *suite) peer(t *testing.T, b driver.Backend) driver.Backend {
	if s.cfg.Peer == nil {
		return b
	}
	return s.cfg.Peer(t, b)
}

func req(key string, lim bucket.Limit, cost int64, maxWait time.Duration) driver.Request {
	return driver.Request{Key: key, Limit: Limit(lim), Cost: cost, MaxWait: maxWait}
}

// call names r as failure messages do.
func call(r driver.Request) string {
	return fmt.Sprintf("Admit(%q, %v, cost %d, maxWait %v)", r.Key, r.Limit, r.Cost, r.MaxWait)
}

// admit calls b.Admit and fails the test on an error or on a decision
// that breaks its contract (checkDecision).
func admit(t *testing.T, b driver.Backend, r driver.Request) driver.Decision {
	t.Helper()
	d, err := b.Admit(context.Background(), r)
	require.NoError(t, err, call(r))
	checkDecision(t, r, d)
	return d
}

// checkDecision fails the test if d, the answer to r, is an admission
// booked outside [0, maxWait], a refusal on the rate whose retry-after is
// within maxWait (the request would have been booked), or a refusal at
// the cap whose Wait (until a lease expires) is negative or beyond the
// lease's time to live.
func checkDecision(t *testing.T, r driver.Request, d driver.Decision) {
	t.Helper()
	maxWait := max(r.MaxWait, 0)
	switch {
	case d.Allowed:
		require.False(t, d.AtCap, "%s allowed and at the cap", call(r))
		require.GreaterOrEqual(t, d.Wait, time.Duration(0), "%s booked in the past", call(r))
		require.LessOrEqual(t, d.Wait, maxWait, "%s booked beyond maxWait", call(r))
	case d.AtCap:
		require.Positive(t, r.Limit.Inflight, "%s refused at the cap of a limit without one", call(r))
		require.GreaterOrEqual(t, d.Wait, time.Duration(0), "%s refused at the cap, a lease expiring in the past", call(r))
		require.LessOrEqual(t, d.Wait, driver.MaxDuration, "%s refused at the cap beyond MaxDuration", call(r))
	default:
		require.Greater(t, d.Wait, maxWait, "%s refused with a retry-after within maxWait", call(r))
	}
}

// verdict is what the suite compares of a decision.
type verdict struct {
	Allowed bool
	Wait    time.Duration
}

var allowedAtOnce = verdict{Allowed: true}

func verdictOf(d driver.Decision) verdict { return verdict{d.Allowed, d.Wait} }

// countAllowed makes tries admissions of cost 1 without waiting and
// returns how many were allowed.
func countAllowed(t *testing.T, b driver.Backend, key string, lim bucket.Limit, tries int) int {
	t.Helper()
	n := 0
	for range tries {
		if admit(t, b, req(key, lim, 1, 0)).Allowed {
			n++
		}
	}
	return n
}

// now reads the backend's clock through an admission of an unlimited-like
// limit on a scratch key.
func (s *suite) now(t *testing.T, b driver.Backend) int64 {
	t.Helper()
	return admit(t, b, req(s.key(t, "clock"), bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000), 1, 0)).Now
}
