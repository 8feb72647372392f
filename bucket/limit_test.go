package bucket_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/leakybucket/leakybucket/bucket"
)

// canon returns l with an empty quota list as nil, so that limits compare
// equal whichever of the two they carry.
func canon(l bucket.Limit) bucket.Limit {
	if len(l.Quotas) == 0 {
		l.Quotas = nil
	}
	return l
}

// assertLimitError checks that err is a *LimitError matching
// ErrInvalidLimit that names field, in a message that starts with
// "bucket: " and names it too.
func assertLimitError(t *testing.T, err error, field string, msgAndArgs ...any) {
	t.Helper()
	if !assert.ErrorIs(t, err, bucket.ErrInvalidLimit, msgAndArgs...) {
		return
	}
	var le *bucket.LimitError
	if !assert.ErrorAs(t, err, &le, msgAndArgs...) {
		return
	}
	assert.Equal(t, field, le.Field, msgAndArgs...)
	assert.True(t, strings.HasPrefix(err.Error(), "bucket: "), "message %q does not start with \"bucket: \"", err)
	assert.Contains(t, err.Error(), field, msgAndArgs...)
}

func quotas(n int) bucket.Limit {
	l := bucket.PerSecond(1)
	for i := range n {
		l = l.WithQuota(10, time.Duration(i+1)*time.Hour)
	}
	return l
}

func TestValidate(t *testing.T) {
	maxBurstPerSecond := int64(bucket.MaxDuration / time.Second)
	valid := []struct {
		name string
		lim  bucket.Limit
	}{
		{"PerSecond", bucket.PerSecond(5)},
		{"Unlimited", bucket.Unlimited},
		{"period MaxDuration", bucket.Every(bucket.MaxDuration, 1)},
		{"window MaxDuration", bucket.PerSecond(1).WithQuota(1, bucket.MaxDuration)},
		{"burst × interval = MaxDuration", bucket.PerSecond(1).WithBurst(maxBurstPerSecond)},
		{"burst × interval = MaxDuration, interval not whole", bucket.Every(bucket.MaxDuration, 7).WithBurst(7)},
		{"huge rate and burst", bucket.Every(time.Nanosecond, math.MaxInt64).WithBurst(math.MaxInt64)},
		{"MaxQuotas quotas", quotas(bucket.MaxQuotas)},
		{"quota max MaxInt64", bucket.PerSecond(1).WithQuota(math.MaxInt64, time.Hour)},
	}
	for _, tt := range valid {
		assert.NoError(t, tt.lim.Validate(), "%s: %v.Validate()", tt.name, tt.lim)
	}

	invalid := []struct {
		name  string
		lim   bucket.Limit
		field string
	}{
		{"zero Limit", bucket.Limit{}, "Rate"},
		{"rate 0", bucket.Every(time.Second, 0), "Rate"},
		{"rate -1", bucket.Every(time.Second, -1), "Rate"},
		{"rate MinInt64", bucket.Every(time.Second, math.MinInt64), "Rate"},
		{"period 0", bucket.Every(0, 1), "Period"},
		{"period -1s", bucket.Every(-time.Second, 1), "Period"},
		{"period MaxDuration+1", bucket.Every(bucket.MaxDuration+1, 1), "Period"},
		{"period MaxInt64", bucket.Every(math.MaxInt64, 1), "Period"},
		{"burst 0", bucket.PerSecond(1).WithBurst(0), "Burst"},
		{"burst -1", bucket.PerSecond(1).WithBurst(-1), "Burst"},
		{"burst unset", bucket.Limit{Rate: 1, Period: time.Second}, "Burst"},
		{"burst × interval > MaxDuration", bucket.PerSecond(1).WithBurst(maxBurstPerSecond + 1), "Burst"},
		{"burst × interval > MaxDuration, interval not whole", bucket.Every(bucket.MaxDuration, 7).WithBurst(8), "Burst"},
		{"burst MaxInt64", bucket.PerSecond(1).WithBurst(math.MaxInt64), "Burst"},
		{"burst MaxInt64, rate MaxInt64-1 per MaxDuration", bucket.Every(bucket.MaxDuration, math.MaxInt64-1).WithBurst(math.MaxInt64), "Burst"},
		{"too many quotas", quotas(bucket.MaxQuotas + 1), "Quotas"},
		{"quota max 0", bucket.PerSecond(1).WithQuota(0, time.Hour), "Quotas[0].Max"},
		{"quota max -1", bucket.PerSecond(1).WithQuota(-1, time.Hour), "Quotas[0].Max"},
		{"second quota max 0", bucket.PerSecond(1).WithQuota(5, time.Hour).WithQuota(0, 24*time.Hour), "Quotas[1].Max"},
		{"quota window 0", bucket.PerSecond(1).WithQuota(5, 0), "Quotas[0].Window"},
		{"quota window -1ns", bucket.PerSecond(1).WithQuota(5, -1), "Quotas[0].Window"},
		{"quota window MaxDuration+1", bucket.PerSecond(1).WithQuota(5, bucket.MaxDuration+1), "Quotas[0].Window"},
		{"quota window MaxInt64", bucket.PerSecond(1).WithQuota(5, math.MaxInt64), "Quotas[0].Window"},
		{"repeated window", bucket.PerSecond(1).WithQuota(5, time.Hour).WithQuota(50, time.Hour), "Quotas[1].Window"},
		{"windows equal to the microsecond", bucket.PerSecond(1).WithQuota(5, 1500).WithQuota(50, 1001), "Quotas[1].Window"},
		{"repeated window, not adjacent", bucket.PerSecond(1).WithQuota(5, time.Hour).WithQuota(50, 24*time.Hour).WithQuota(6, time.Hour), "Quotas[2].Window"},
	}
	for _, tt := range invalid {
		assertLimitError(t, tt.lim.Validate(), tt.field, "%s: %v.Validate()", tt.name, tt.lim)
	}
}

func TestConstructors(t *testing.T) {
	tests := []struct {
		name string
		got  bucket.Limit
		want bucket.Limit
	}{
		{"PerSecond(5)", bucket.PerSecond(5), bucket.Limit{Rate: 5, Period: time.Second, Burst: 1}},
		{"PerMinute(100)", bucket.PerMinute(100), bucket.Limit{Rate: 100, Period: time.Minute, Burst: 1}},
		{"PerHour(1000)", bucket.PerHour(1000), bucket.Limit{Rate: 1000, Period: time.Hour, Burst: 1}},
		{"Every(2s, 3)", bucket.Every(2*time.Second, 3), bucket.Limit{Rate: 3, Period: 2 * time.Second, Burst: 1}},
		{"WithBurst", bucket.PerSecond(5).WithBurst(10), bucket.Limit{Rate: 5, Period: time.Second, Burst: 10}},
		{"WithQuota", bucket.PerSecond(5).WithQuota(1000, time.Hour).WithQuota(50000, 24*time.Hour),
			bucket.Limit{Rate: 5, Period: time.Second, Burst: 1, Quotas: []bucket.Quota{{Max: 1000, Window: time.Hour}, {Max: 50000, Window: 24 * time.Hour}}}},
	}
	for _, tt := range tests {
		assert.Equal(t, canon(tt.want), canon(tt.got), tt.name)
		assert.NoError(t, tt.got.Validate(), "%s.Validate()", tt.name)
		assert.False(t, tt.got.IsUnlimited(), "%s.IsUnlimited()", tt.name)
	}
	assert.True(t, bucket.Unlimited.IsUnlimited(), "Unlimited.IsUnlimited()")

	base := bucket.PerSecond(5).WithBurst(3)
	assert.Equal(t, int64(7), base.WithBurst(7).Burst, "WithBurst(7).Burst")
	assert.Equal(t, int64(3), base.Burst, "the original's burst after WithBurst(7)")

	// WithQuota copies: neither the original nor siblings built from it
	// share quota storage.
	one := base.WithQuota(10, time.Hour)
	two := one.WithQuota(20, 2*time.Hour)
	other := one.WithQuota(30, 3*time.Hour)
	two.Quotas[0].Max = 99
	assert.Equal(t, int64(10), one.Quotas[0].Max, "the original's quota after changing a derived limit's")
	assert.Equal(t, int64(10), other.Quotas[0].Max, "a sibling's quota after changing a derived limit's")
	assert.Len(t, one.Quotas, 1, "siblings from one limit share storage: %v, %v, %v", one, two, other)
	assert.Equal(t, 2*time.Hour, two.Quotas[1].Window, "siblings from one limit share storage: %v, %v, %v", one, two, other)
	assert.Equal(t, 3*time.Hour, other.Quotas[1].Window, "siblings from one limit share storage: %v, %v, %v", one, two, other)
	assert.Empty(t, base.Quotas, "WithQuota changed the original")
	// Even an original with spare capacity is not written through.
	spare := bucket.PerSecond(1)
	spare.Quotas = make([]bucket.Quota, 1, 4)
	spare.Quotas[0] = bucket.Quota{Max: 1, Window: time.Hour}
	a := spare.WithQuota(2, 2*time.Hour)
	b := spare.WithQuota(3, 3*time.Hour)
	assert.Equal(t, 2*time.Hour, a.Quotas[1].Window, "WithQuota wrote into the original's spare capacity: %v, %v", a, b)
	assert.Equal(t, 3*time.Hour, b.Quotas[1].Window, "WithQuota wrote into the original's spare capacity: %v, %v", a, b)
}

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want bucket.Limit
	}{
		{"5/s", bucket.PerSecond(5)},
		{"100/1m burst=20", bucket.PerMinute(100).WithBurst(20)},
		{"100/m", bucket.PerMinute(100)},
		{"1000/h", bucket.PerHour(1000)},
		{"5/s, burst=10, quota=1000/1h quota=50000/1d",
			bucket.PerSecond(5).WithBurst(10).WithQuota(1000, time.Hour).WithQuota(50000, 24*time.Hour)},
		{"  5/s\tburst=10,,quota=1000/h  ", bucket.PerSecond(5).WithBurst(10).WithQuota(1000, time.Hour)},
		{"unlimited", bucket.Unlimited},
		{"3/100ms", bucket.Every(100*time.Millisecond, 3)},
		{"7/2d", bucket.Every(48*time.Hour, 7)},
		{"1/d", bucket.Every(24*time.Hour, 1)},
		{"2/1h30m", bucket.Every(90*time.Minute, 2)},
		{"1/3650d", bucket.Every(bucket.MaxDuration, 1)},
		{"5/s burst=1", bucket.PerSecond(5)},
		{"5/s burst=2 burst=3", bucket.PerSecond(5).WithBurst(3)},
		{"10/s burst=2 inflight=5", bucket.PerSecond(10).WithBurst(2).WithInflight(5)},
		{"10/s inflight=0", bucket.PerSecond(10)},
		{"100/s floor=5/s", bucket.PerSecond(100).WithFloor(5, time.Second)},
		{"100/s floor=100/s", bucket.PerSecond(100).WithFloor(100, time.Second)},
	}
	for _, tt := range good {
		got, err := bucket.Parse(tt.in)
		if assert.NoError(t, err, "Parse(%q)", tt.in) {
			assert.Equal(t, canon(tt.want), canon(got), "Parse(%q)", tt.in)
		}
	}

	bad := []struct {
		in    string
		field string
		says  string // the message names the offending text
	}{
		{"", "Rate", "empty"},
		{" , ", "Rate", "empty"},
		{"5", "Rate", `"5"`},
		{"x/s", "Rate", `"x"`},
		{"5/x", "Rate", `"x"`},
		{"5/", "Rate", "period"},
		{"/s", "Rate", `""`},
		{"-1/s", "Rate", "-1"},
		{"0/s", "Rate", "0"},
		{"99999999999999999999/s", "Rate", "99999999999999999999"},
		{"5/0s", "Period", "0s"},
		{"5/-1s", "Period", "-1s"},
		{"5/0d", "Rate", "0d"},
		{"5/1.5d", "Rate", "1.5d"},
		{"5/3651d", "Rate", "3651d"},
		{"5/87601h", "Period", "87601h"},
		{"unlimited burst=2", "Rate", "unlimited"},
		{"5/s burst=", "Burst", `""`},
		{"5/s burst=x", "Burst", `"x"`},
		{"5/s burst=0", "Burst", "0"},
		{"5/s burst=-3", "Burst", "-3"},
		{"5/s burst=99999999999", "Burst", "99999999999"},
		{"5/s foo=1", "Rate", "foo=1"},
		{"5/s burst", "Rate", "burst"},
		{"5/s 10", "Rate", "10"},
		{"5/s quota=0/1h", "Quotas[0].Max", "0"},
		{"5/s quota=10/1h quota=0/1d", "Quotas[1].Max", "0"},
		{"5/s quota=10", "Quotas[0]", `"10"`},
		{"5/s quota=10/0s", "Quotas[0].Window", "0s"},
		{"5/s quota=10/h quota=20/60m", "Quotas[1].Window", "repeats"},
		{"5/s" + strings.Repeat(" quota=1/1s", bucket.MaxQuotas+1), "Quotas", "at most"},
		{"5/s inflight=x", "Inflight", `"x"`},
		{"5/s inflight=-1", "Inflight", "-1"},
		{"5/s inflight=10001", "Inflight", "10001"},
		{"5/s floor=10/s", "FloorRate", "faster than the rate"},
		{"5/s floor=x", "FloorRate", `"x"`},
		{"5/s floor=0/s", "FloorRate", "at least 1"},
		{"5/s floor=1/11y", "FloorRate", "11y"},
	}
	for _, tt := range bad {
		l, err := bucket.Parse(tt.in)
		if !assert.Error(t, err, "Parse(%.40q) = %v, want an error naming %s", tt.in, l, tt.field) {
			continue
		}
		assertLimitError(t, err, tt.field, "Parse(%.40q)", tt.in)
		assert.Contains(t, err.Error(), tt.says, "Parse(%.40q): the message names the offending text", tt.in)
	}
}

func TestStringRoundTrip(t *testing.T) {
	tests := []struct {
		lim  bucket.Limit
		want string
	}{
		{bucket.PerSecond(5), "5/s"},
		{bucket.PerMinute(100).WithBurst(20), "100/m burst=20"},
		{bucket.PerHour(1000), "1000/h"},
		{bucket.PerSecond(5).WithBurst(10).WithQuota(1000, time.Hour).WithQuota(50000, 24*time.Hour),
			"5/s burst=10 quota=1000/h quota=50000/d"},
		{bucket.PerSecond(5).WithQuota(1000, time.Hour).WithInflight(4), "5/s quota=1000/h inflight=4"},
		{bucket.PerSecond(50).WithFloor(1, time.Minute), "50/s floor=1/m"},
		{bucket.Unlimited, "unlimited"},
		{bucket.Every(100*time.Millisecond, 3), "3/100ms"},
		{bucket.Every(48*time.Hour, 7), "7/2d"},
		{bucket.Every(90*time.Minute, 2), "2/1h30m"},
		{bucket.Every(2*time.Hour, 2), "2/2h"},
		{bucket.Every(2*time.Minute, 2), "2/2m"},
		{bucket.Every(90*time.Second, 2), "2/1m30s"},
		{bucket.Every(time.Hour+30*time.Second, 2), "2/1h0m30s"},
		{bucket.Every(1500*time.Nanosecond, 2), "2/1.5µs"},
		{bucket.Every(time.Nanosecond, 1), "1/1ns"},
		{bucket.Every(bucket.MaxDuration, 1), "1/3650d"},
		{bucket.Every(25*time.Hour, 1), "1/25h"},
		{bucket.Every(time.Nanosecond, math.MaxInt64).WithBurst(math.MaxInt64), "9223372036854775807/1ns burst=9223372036854775807"},
		{bucket.PerSecond(1).WithQuota(3, 1500*time.Millisecond), "1/s quota=3/1.5s"},
	}
	for _, tt := range tests {
		s := tt.lim.String()
		assert.Equal(t, tt.want, s, "%+v.String()", tt.lim)
		got, err := bucket.Parse(s)
		if assert.NoError(t, err, "Parse(%q)", s) {
			assert.Equal(t, canon(tt.lim), canon(got), "Parse(%q)", s)
		}
	}
}
