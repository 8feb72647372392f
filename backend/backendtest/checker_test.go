package backendtest

import (
	"math"
	"math/big"
	"math/rand/v2"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
)

// unixNow is a Unix time in nanoseconds: the time base of the SQLite and
// Redis backends.
const unixNow = int64(1_700_000_000) * int64(time.Second)

// at returns unit-cost starts at the given offsets from base.
func at(base int64, offsets ...time.Duration) []Start {
	s := make([]Start, len(offsets))
	for i, o := range offsets {
		s[i] = Start{At: base + int64(o), Cost: 1}
	}
	return s
}

func TestCheck(t *testing.T) {
	const third = 333_333_333 // ns: one third of a second, rounded down
	hour := bucket.PerSecond(1_000_000).WithBurst(100).WithQuota(3, time.Hour)
	twoQuotas := bucket.PerSecond(1_000_000).WithBurst(100).WithQuota(3, time.Second).WithQuota(5, time.Minute)
	huge := bucket.Every(bucket.MaxDuration, 1)
	tests := []struct {
		name   string
		lim    bucket.Limit
		starts []Start
		bad    string // "" if the starts conform, else how the violation message starts
	}{
		{"empty", bucket.PerSecond(1), nil, ""},
		{"unlimited", bucket.Unlimited, at(0, 0, 0, 0, 0), ""},

		// Rate: exactly one interval apart conforms; a nanosecond less does not.
		{"1/s one interval apart", bucket.PerSecond(1), at(0, 0, time.Second, 2*time.Second), ""},
		{"1/s 1ns short", bucket.PerSecond(1), at(0, 0, time.Second, 2*time.Second-1), "rate"},
		{"1/s equal times", bucket.PerSecond(1), at(0, time.Second, time.Second), "rate"},
		{"1/s unsorted", bucket.PerSecond(1), at(0, 2*time.Second, 0, time.Second), ""},
		{"1/s unsorted 1ns short", bucket.PerSecond(1), at(0, 2*time.Second, time.Second+1, 0, 3*time.Second), "rate"},
		// T = 1s/3 exactly, not rounded: 333333334ns apart conforms, 333333333ns does not.
		{"3/s rounded up", bucket.PerSecond(3), at(0, 0, third+1, 2*third+2, 3*third+3), ""},
		{"3/s truncated", bucket.PerSecond(3), at(0, 0, third), "rate"},
		// Only the interval over all four starts decides these.
		{"3/s burst 2 over two intervals", bucket.PerSecond(3).WithBurst(2), at(0, 0, 0, third+1, 2*third+1), ""},
		{"3/s burst 2 1ns short of two intervals", bucket.PerSecond(3).WithBurst(2), at(0, 0, 0, third+1, 2*third), "rate"},
		// Burst: B at once, then one per interval.
		{"burst 3 at once", bucket.PerSecond(1).WithBurst(3), at(0, 0, 0, 0), ""},
		{"burst 3, four at once", bucket.PerSecond(1).WithBurst(3), at(0, 0, 0, 0, 0), "rate"},
		{"burst 3 then one per interval", bucket.PerSecond(1).WithBurst(3), at(0, 0, 0, 0, time.Second, 2*time.Second), ""},
		{"burst 3 then 1ns early", bucket.PerSecond(1).WithBurst(3), at(0, 0, 0, 0, time.Second, 2*time.Second-1), "rate"},
		// The interval that violates need not start at the first start.
		{"violation late in the run", bucket.PerSecond(1).WithBurst(2),
			at(0, 0, 0, 2*time.Second, 3*time.Second, 10*time.Second, 10*time.Second, 11*time.Second-1), "rate"},
		{"refilled after idle", bucket.PerSecond(1).WithBurst(2),
			at(0, 0, 0, time.Second, 2*time.Second, 10*time.Second, 10*time.Second, 11*time.Second), ""},
		// Cost > 1.
		{"cost 3 of burst 3", bucket.PerSecond(1).WithBurst(3), []Start{{0, 3}, {int64(time.Second), 1}}, ""},
		{"cost 3 of burst 3, 1ns early", bucket.PerSecond(1).WithBurst(3), []Start{{0, 3}, {int64(time.Second) - 1, 1}}, "rate"},
		{"cost 4 of burst 3", bucket.PerSecond(1).WithBurst(3), []Start{{0, 4}}, "rate"},
		{"cost 2 then cost 2 after 1s", bucket.PerSecond(1).WithBurst(3), []Start{{0, 2}, {int64(time.Second), 2}}, ""},
		{"cost 2 then cost 2 1ns early", bucket.PerSecond(1).WithBurst(3), []Start{{0, 2}, {int64(time.Second) - 1, 2}}, "rate"},

		// Quota: a window [t, t+W) is half open.
		{"quota 3/h", hour, at(0, 0, 0, 0, time.Hour), ""},
		{"quota 3/h 1ns short", hour, at(0, 0, 0, 0, time.Hour-1), "quota"},
		{"quota 3/h rolling", hour, at(0, 0, 20*time.Minute, 40*time.Minute, time.Hour, time.Hour+20*time.Minute), ""},
		{"quota 3/h rolling 1ns short", hour, at(0, 0, 20*time.Minute, 40*time.Minute, time.Hour, time.Hour+20*time.Minute-1), "quota"},
		{"quota 3/h unsorted", hour, at(0, time.Hour, 0, 40*time.Minute, 20*time.Minute), ""},
		{"quota 3/h four at once", hour, at(0, 0, 0, 0, 0), "quota"},
		{"quota 3/h cost 3", hour, []Start{{0, 3}, {int64(time.Hour), 3}}, ""},
		{"quota 3/h cost 2 twice", hour, []Start{{0, 2}, {int64(time.Hour) - 1, 2}}, "quota"},
		{"second quota conforms", twoQuotas, at(0, 0, 0, 0, time.Second, time.Second, 2*time.Minute), ""},
		{"second quota violated", twoQuotas, at(0, 0, 0, 0, time.Second, time.Second, 2*time.Second), "quota 5/"},
		{"first quota violated", twoQuotas, at(0, 0, 0, 0, time.Second-1), "quota 3/"},

		// Unix times and periods near MaxDuration: no overflow.
		{"unix 1/MaxDuration", huge, at(unixNow, 0, bucket.MaxDuration, 2*bucket.MaxDuration), ""},
		{"unix 1/MaxDuration 1ns short", huge, at(unixNow, 0, bucket.MaxDuration, 2*bucket.MaxDuration-1), "rate"},
		{"unix 7/MaxDuration", bucket.Every(bucket.MaxDuration, 7), at(unixNow, 0, bucket.MaxDuration/7+1), ""},
		{"unix 7/MaxDuration truncated", bucket.Every(bucket.MaxDuration, 7), at(unixNow, 0, bucket.MaxDuration/7), "rate"},
		{"unix burst × interval = MaxDuration", bucket.PerSecond(1).WithBurst(int64(bucket.MaxDuration / time.Second)),
			[]Start{{unixNow, int64(bucket.MaxDuration / time.Second)}, {unixNow + int64(time.Second), 1}}, ""},
		{"unix burst × interval = MaxDuration, 1ns early", bucket.PerSecond(1).WithBurst(int64(bucket.MaxDuration / time.Second)),
			[]Start{{unixNow, int64(bucket.MaxDuration / time.Second)}, {unixNow + int64(time.Second) - 1, 1}}, "rate"},
		{"unix quota MaxDuration", bucket.Every(bucket.MaxDuration, 2).WithBurst(2).WithQuota(2, bucket.MaxDuration),
			at(unixNow, 0, 0, bucket.MaxDuration, bucket.MaxDuration), ""},
		{"unix quota MaxDuration 1ns short", bucket.Every(bucket.MaxDuration, 2).WithBurst(2).WithQuota(2, bucket.MaxDuration),
			at(unixNow, 0, 0, bucket.MaxDuration-1), "quota"},
		{"times across zero", bucket.PerSecond(1), at(-int64(time.Second), 0, time.Second, 2*time.Second), ""},
		{"times across zero 1ns short", bucket.PerSecond(1), at(-int64(time.Second), 0, time.Second-1), "rate"},
		{"times near MaxInt64", bucket.PerHour(1), at(math.MaxInt64-int64(2*time.Hour), 0, time.Hour, 2*time.Hour), ""},
		{"times near MaxInt64 1ns short", bucket.PerHour(1), at(math.MaxInt64-int64(2*time.Hour), 0, time.Hour, 2*time.Hour-1), "rate"},
		{"times from MinInt64 to MaxInt64", huge, []Start{{math.MinInt64, 1}, {math.MaxInt64, 1}}, ""},
		{"rate MaxInt64/2 per ns", bucket.Every(time.Nanosecond, math.MaxInt64/2).WithBurst(math.MaxInt64 / 2),
			[]Start{{unixNow, math.MaxInt64 / 2}, {unixNow + 1, math.MaxInt64 / 2}}, ""},
		{"rate MaxInt64/2 per ns, one too many", bucket.Every(time.Nanosecond, math.MaxInt64/2).WithBurst(math.MaxInt64 / 2),
			[]Start{{unixNow, math.MaxInt64 / 2}, {unixNow + 1, math.MaxInt64 / 2}, {unixNow + 1, 1}}, "rate"},

		// Costs whose total exceeds 64 bits.
		{"huge costs", bucket.Every(time.Nanosecond, math.MaxInt64).WithBurst(math.MaxInt64),
			[]Start{{0, math.MaxInt64}, {1, math.MaxInt64}, {2, math.MaxInt64}, {3, math.MaxInt64}}, ""},
		{"huge costs, too many", bucket.Every(time.Nanosecond, math.MaxInt64).WithBurst(math.MaxInt64),
			[]Start{{0, math.MaxInt64}, {0, 1}, {1, math.MaxInt64}, {2, math.MaxInt64}, {3, math.MaxInt64}}, "rate"},
		{"huge costs, too many at the end", bucket.Every(time.Nanosecond, math.MaxInt64).WithBurst(math.MaxInt64),
			[]Start{{0, math.MaxInt64}, {1, math.MaxInt64}, {2, math.MaxInt64}, {3, math.MaxInt64}, {3, 1}}, "rate"},
		{"huge costs over a quota", bucket.Every(time.Nanosecond, math.MaxInt64).WithBurst(math.MaxInt64).WithQuota(math.MaxInt64, 10),
			[]Start{{0, math.MaxInt64}, {1, math.MaxInt64}}, "quota"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.lim, tt.starts)
			if tt.bad == "" {
				assert.NoError(t, err, "Check(%v, %v)", tt.lim, tt.starts)
				return
			}
			if assert.Error(t, err, "Check(%v, %v), want a %s violation", tt.lim, tt.starts, tt.bad) {
				assert.Regexp(t, "^"+regexp.QuoteMeta(tt.bad), err.Error(), "Check(%v, %v)", tt.lim, tt.starts)
			}
		})
	}
}

func TestCheckDoesNotModifyStarts(t *testing.T) {
	starts := at(0, 3*time.Second, time.Second, 2*time.Second)
	want := slices.Clone(starts)
	require.NoError(t, Check(bucket.PerSecond(1), starts))
	assert.Equal(t, want, starts, "Check reordered its input")
}

// TestCheckAgainstBruteForce compares Check with the definition on small
// random cases: every interval [a_i, a_j] and every window ending at a
// start.
func TestCheckAgainstBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var bad, good int
	for range 20_000 {
		lim := bucket.Every(time.Duration(1+rng.IntN(10)), int64(1+rng.IntN(4))).WithBurst(int64(1 + rng.IntN(4)))
		if rng.IntN(2) == 0 {
			lim = lim.WithQuota(int64(1+rng.IntN(6)), time.Duration(1+rng.IntN(20)))
		}
		starts := make([]Start, rng.IntN(8))
		for i := range starts {
			starts[i] = Start{At: int64(rng.IntN(20)), Cost: int64(1 + rng.IntN(3))}
		}
		want := bruteForce(lim, starts)
		require.Equal(t, want, Check(lim, starts) == nil, "Check(%v, %v) conforms, as brute force says", lim, starts)
		if want {
			good++
		} else {
			bad++
		}
	}
	assert.GreaterOrEqual(t, good, 1000, "conforming cases: too few to mean anything")
	assert.GreaterOrEqual(t, bad, 1000, "violating cases: too few to mean anything")
}

// TestCheckHugeCosts: costs whose sums overflow 64 bits, under a limit
// that admits them.
func TestCheckHugeCosts(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const m = math.MaxInt64
	var bad, good int
	for range 20_000 {
		lim := bucket.Every(time.Duration(1+rng.IntN(3)), []int64{m, m / 2, m/3 + 1}[rng.IntN(3)]).
			WithBurst([]int64{m, m / 2, m/3 + 7}[rng.IntN(3)])
		if rng.IntN(2) == 0 {
			lim = lim.WithQuota([]int64{m, m / 2, m/3 + 1}[rng.IntN(3)], time.Duration(1+rng.IntN(6)))
		}
		starts := make([]Start, rng.IntN(8))
		for i := range starts {
			starts[i] = Start{At: unixNow + int64(rng.IntN(6)), Cost: []int64{1, m / 2, m/3 + 1, m}[rng.IntN(4)]}
		}
		want := bruteForce(lim, starts)
		require.Equal(t, want, Check(lim, starts) == nil, "Check(%v, %v) conforms, as brute force says", lim, starts)
		if want {
			good++
		} else {
			bad++
		}
	}
	assert.GreaterOrEqual(t, good, 1000, "conforming cases: too few to mean anything")
	assert.GreaterOrEqual(t, bad, 1000, "violating cases: too few to mean anything")
}

// bruteForce applies the definition in arbitrary precision.
func bruteForce(lim bucket.Limit, starts []Start) bool {
	period, rate, burst := big.NewInt(int64(lim.Period)), big.NewInt(lim.Rate), big.NewInt(lim.Burst)
	for _, a := range starts {
		for _, b := range starts {
			if b.At < a.At {
				continue
			}
			units := new(big.Int)
			for _, s := range starts {
				if s.At >= a.At && s.At <= b.At {
					units.Add(units, big.NewInt(s.Cost))
				}
			}
			// units·P ≤ B·P + (b-a)·N
			lhs := new(big.Int).Mul(units, period)
			rhs := new(big.Int).Mul(burst, period)
			rhs.Add(rhs, new(big.Int).Mul(big.NewInt(b.At-a.At), rate))
			if lhs.Cmp(rhs) > 0 {
				return false
			}
		}
		for _, q := range lim.Quotas {
			units := new(big.Int)
			for _, s := range starts {
				if s.At >= a.At && s.At < a.At+int64(q.Window) {
					units.Add(units, big.NewInt(s.Cost))
				}
			}
			if units.Cmp(big.NewInt(q.Max)) > 0 {
				return false
			}
		}
	}
	return true
}
