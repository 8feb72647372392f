package backendtest

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// testValidation: invalid requests return the errors of
// Request.Validate, naming the field of an invalid limit, and charge
// nothing.
func (s *suite) testValidation(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	ok := bucket.PerSecond(10).WithBurst(5).WithQuota(100, time.Hour)
	tests := []struct {
		name  string
		req   driver.Request
		want  error
		field string
	}{
		{"empty key", req("", ok, 1, 0), bucket.ErrEmptyKey, ""},
		{"cost 0", req(key, ok, 0, 0), bucket.ErrInvalidCost, ""},
		{"cost -1", req(key, ok, -1, 0), bucket.ErrInvalidCost, ""},
		{"cost above burst", req(key, ok, 6, time.Hour), bucket.ErrImpossible, ""},
		{"huge cost", req(key, ok, math.MaxInt64, time.Hour), bucket.ErrImpossible, ""},
		{"cost above quota", req(key, bucket.PerSecond(10).WithBurst(50).WithQuota(20, time.Hour), 21, time.Hour), bucket.ErrImpossible, ""},
		{"zero limit", req(key, bucket.Limit{}, 1, 0), bucket.ErrInvalidLimit, "Rate"},
		{"rate 0", req(key, bucket.Limit{Rate: 0, Period: time.Second, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Rate"},
		{"negative rate", req(key, bucket.Limit{Rate: -5, Period: time.Second, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Rate"},
		{"period 0", req(key, bucket.Limit{Rate: 1, Period: 0, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Period"},
		{"negative period", req(key, bucket.Limit{Rate: 1, Period: -time.Second, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Period"},
		{"overflowing period", req(key, bucket.Limit{Rate: 1, Period: math.MaxInt64, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Period"},
		{"burst 0", req(key, bucket.Limit{Rate: 1, Period: time.Second}, 1, 0), bucket.ErrInvalidLimit, "Burst"},
		{"overflowing burst", req(key, bucket.PerSecond(1).WithBurst(math.MaxInt64), 1, 0), bucket.ErrInvalidLimit, "Burst"},
		{"quota max 0", req(key, bucket.PerSecond(1).WithQuota(0, time.Hour), 1, 0), bucket.ErrInvalidLimit, "Quotas[0].Max"},
		{"quota window 0", req(key, bucket.PerSecond(1).WithQuota(5, 0), 1, 0), bucket.ErrInvalidLimit, "Quotas[0].Window"},
		{"overflowing window", req(key, bucket.PerSecond(1).WithQuota(5, math.MaxInt64), 1, 0), bucket.ErrInvalidLimit, "Quotas[0].Window"},
		{"repeated window", req(key, bucket.PerSecond(1).WithQuota(5, time.Hour).WithQuota(6, time.Hour), 1, 0), bucket.ErrInvalidLimit, "Quotas[1].Window"},
	}
	for _, tt := range tests {
		_, err := b.Admit(context.Background(), tt.req)
		if !assert.ErrorIs(t, err, tt.want, "%s: %s", tt.name, call(tt.req)) || tt.field == "" {
			continue
		}
		var le *bucket.LimitError
		if assert.ErrorAs(t, err, &le, "%s: %s", tt.name, call(tt.req)) {
			assert.Equal(t, tt.field, le.Field, "%s: %s: the invalid field", tt.name, call(tt.req))
		}
	}
	// Nothing above charged the key: its whole burst is still there.
	for i := range 5 {
		require.True(t, admit(t, b, req(key, ok, 1, 0)).Allowed, "after invalid requests, admission %d of burst 5 refused", i+1)
	}
}

// testBurst: a fresh bucket admits its burst at once, then refuses with
// a retry-after within one interval.
func (s *suite) testBurst(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerHour(1).WithBurst(5)
	for i := range 5 {
		require.Equal(t, allowedAtOnce, verdictOf(admit(t, b, req(key, lim, 1, 0))), "admission %d of burst 5", i+1)
	}
	d := admit(t, b, req(key, lim, 1, 0))
	require.False(t, d.Allowed, "admission 6 of burst 5 allowed")
	assert.Greater(t, d.Wait, time.Duration(0), "retry-after of the refusal after burst 5 of 1/h")
	assert.LessOrEqual(t, d.Wait, time.Hour, "retry-after of the refusal after burst 5 of 1/h")
}

// testRefusalChargesNothing: a request refused by a quota charges no
// rate, and one refused by rate charges no quota.
func (s *suite) testRefusalChargesNothing(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "quota-refusal")
	withQuota := bucket.PerHour(1).WithBurst(10).WithQuota(3, time.Hour)
	for i := range 3 {
		require.True(t, admit(t, b, req(key, withQuota, 1, 0)).Allowed, "admission %d of quota 3 refused", i+1)
	}
	for range 5 {
		require.False(t, admit(t, b, req(key, withQuota, 1, 0)).Allowed, "admission 4 of quota 3 allowed")
	}
	// The quota refusals charged no rate: 7 of the burst of 10 remain.
	noQuota := bucket.PerHour(1).WithBurst(10)
	assert.Equal(t, 7, countAllowed(t, b, key, noQuota, 20), "after 3 admitted and 5 refused by quota, admitted of burst 10")

	key = s.key(t, "rate-refusal")
	narrow := bucket.PerHour(1).WithBurst(2).WithQuota(5, time.Hour)
	require.Equal(t, 2, countAllowed(t, b, key, narrow, 10), "admitted of burst 2")
	// The 8 rate refusals charged no quota: 3 of the quota of 5 remain.
	wide := bucket.PerHour(1).WithBurst(10).WithQuota(5, time.Hour)
	assert.Equal(t, 3, countAllowed(t, b, key, wide, 10), "after 2 admitted and 8 refused by rate, admitted of quota 5")
}

// testBooking: a request is booked ahead at the earliest slot within its
// maxWait, or refused; a negative maxWait means now or never.
func (s *suite) testBooking(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerSecond(1) // T = 1s: generous against slow machines
	d1 := admit(t, b, req(key, lim, 1, 0))
	require.Equal(t, allowedAtOnce, verdictOf(d1), "first admission")
	require.False(t, admit(t, b, req(key, lim, 1, 0)).Allowed, "second admission with maxWait 0 allowed")
	d3 := admit(t, b, req(key, lim, 1, 5*time.Second))
	require.True(t, d3.Allowed, "admission with maxWait 5s refused")
	require.Equal(t, time.Second, time.Duration(d3.Start()-d1.Start()), "booked start after the first's")
	// The next slot is first+2s; a maxWait that cannot reach it is refused
	// rather than booked further ahead than asked.
	r := req(key, lim, 1, 500*time.Millisecond)
	assert.False(t, admit(t, b, r).Allowed, "%s allowed with the next slot 1s ahead", call(r))
	r = req(key, lim, 1, -time.Hour)
	assert.False(t, admit(t, b, r).Allowed, "%s allowed: a negative maxWait means now or never", call(r))
}

// testLimitChange: a key's limit may change between requests: a raised
// burst applies at once, an added quota starts empty, a lowered one
// applies at once.
func (s *suite) testLimitChange(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	require.Equal(t, 1, countAllowed(t, b, key, bucket.PerHour(1), 3), "admitted of burst 1")
	assert.Equal(t, 2, countAllowed(t, b, key, bucket.PerHour(1).WithBurst(3), 5), "admitted after raising burst 1 to 3")
	// Adding a quota starts it empty; shrinking it takes effect at once.
	lim := bucket.PerSecond(1000).WithBurst(100).WithQuota(5, time.Hour)
	key = s.key(t, "quota")
	require.Equal(t, 3, countAllowed(t, b, key, lim, 3), "admitted of 3 under quota 5")
	lim = bucket.PerSecond(1000).WithBurst(100).WithQuota(4, time.Hour)
	assert.Equal(t, 1, countAllowed(t, b, key, lim, 3), "admitted after lowering quota 5 to 4 with 3 used")
}
