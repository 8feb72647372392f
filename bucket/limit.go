package bucket

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// MaxDuration bounds every time span a Limit implies: its period, each quota
// window, and burst × emission interval. It keeps all arithmetic exact in
// int64 nanoseconds and in the double-precision microseconds of Redis Lua.
const MaxDuration = driver.MaxDuration

// MaxQuotas is the most quotas one Limit may carry.
const MaxQuotas = driver.MaxQuotas

// A Limit is what one key may consume: a rate of Rate units per Period with
// Burst units allowed back-to-back after idle, and zero or more rolling
// quotas. The emission interval is T = Period/Rate.
//
// A Limit is a plain value; build one with PerSecond, PerMinute, PerHour or
// Every and refine it with WithBurst and WithQuota, or read one with Parse.
// Every field must be set: Burst 0 is invalid, not "default" (the
// constructors set it to 1). Validate reports the first invalid field.
type Limit struct {
	Rate   int64         // units per Period, ≥ 1
	Period time.Duration // > 0
	Burst  int64         // units that may pass back-to-back, ≥ 1
	Quotas []Quota       // rolling quotas, at most MaxQuotas, distinct windows
	// Inflight, if positive, is how many of a key's admissions may hold a
	// lease at once, across every process sharing the backend: work in
	// flight, as opposed to work started per period. Limiter.Acquire takes
	// and gives back leases, and a Dispatcher does for its jobs. 0 caps
	// nothing; at most MaxInflight.
	Inflight int64
	// FloorRate per FloorPeriod, if set, makes the limit learned: Rate per
	// Period becomes a ceiling, and the key's rate follows what the
	// service says of its own limit (Feedback), never below this floor.
	// Both zero: the limit is fixed. WithFloor sets them.
	FloorRate   int64
	FloorPeriod time.Duration

	unlimited bool
}

// MaxInflight bounds Limit.Inflight.
const MaxInflight = driver.MaxInflight

// A Quota admits at most Max units in any rolling Window.
type Quota = driver.Quota

// Unlimited is a Limit that admits everything at once. Limiters answer it
// without asking their backend.
var Unlimited = Limit{unlimited: true}

// Every returns a Limit of n units per period with burst 1.
func Every(period time.Duration, n int64) Limit {
	return Limit{Rate: n, Period: period, Burst: 1}
}

// PerSecond returns a Limit of n units per second with burst 1.
func PerSecond(n int64) Limit { return Every(time.Second, n) }

// PerMinute returns a Limit of n units per minute with burst 1.
func PerMinute(n int64) Limit { return Every(time.Minute, n) }

// PerHour returns a Limit of n units per hour with burst 1.
func PerHour(n int64) Limit { return Every(time.Hour, n) }

// WithBurst returns a copy of l with the given burst.
func (l Limit) WithBurst(b int64) Limit {
	l.Burst = b
	return l
}

// WithQuota returns a copy of l with a rolling quota of max units per window
// added. The copy does not share l's quota slice.
func (l Limit) WithQuota(max int64, window time.Duration) Limit {
	q := make([]Quota, len(l.Quotas), len(l.Quotas)+1)
	copy(q, l.Quotas)
	l.Quotas = append(q, Quota{Max: max, Window: window})
	return l
}

// WithInflight returns a copy of l that lets at most n of a key's
// admissions hold a lease at once (Limit.Inflight); 0 removes the cap.
func (l Limit) WithInflight(n int64) Limit {
	l.Inflight = n
	return l
}

// WithFloor returns a copy of l that learns (Limit.FloorRate): its rate
// is a ceiling, and what the service says of its own limit, fed back
// with Limiter.Learn or by a Dispatcher, may slow the key down to n units
// per period, no further. WithFloor(0, 0) makes the limit fixed again.
func (l Limit) WithFloor(n int64, period time.Duration) Limit {
	l.FloorRate, l.FloorPeriod = n, period
	return l
}

// IsLearned reports whether l learns: whether it has a floor.
func (l Limit) IsLearned() bool { return l.FloorRate != 0 }

// IsUnlimited reports whether l is Unlimited.
func (l Limit) IsUnlimited() bool { return l.unlimited }

// Interval returns the emission interval Period/Rate, rounded up to a
// nanosecond: the time one unit takes to leak. It is 0 for Unlimited and
// for an invalid rate or period.
func (l Limit) Interval() time.Duration {
	if l.unlimited {
		return 0
	}
	return l.driver().Interval()
}

// Validate returns nil if l is usable, or a *LimitError naming the first
// invalid field. The error matches ErrInvalidLimit.
func (l Limit) Validate() error {
	if l.unlimited {
		return nil
	}
	return l.driver().Validate()
}

// driver returns l as backends see it.
func (l *Limit) driver() driver.Limit {
	return driver.Limit{Rate: l.Rate, Period: l.Period, Burst: l.Burst, Quotas: l.Quotas, Inflight: l.Inflight,
		FloorRate: l.FloorRate, FloorPeriod: l.FloorPeriod}
}

// String returns l in the textual form Parse reads, for example
// "5/s burst=10 quota=1000/1h inflight=4 floor=1/s".
func (l Limit) String() string {
	if l.unlimited {
		return "unlimited"
	}
	return l.driver().String()
}

// Parse reads a Limit from its textual form: a rate "N/P" followed by
// optional fields separated by spaces or commas:
//
//	5/s
//	100/1m burst=20
//	5/s burst=10 quota=1000/1h quota=50000/1d
//	10/s burst=2 inflight=5
//	100/s floor=5/s
//	unlimited
//
// P is a unit (s, m, h, d) or a Go duration with an optional day suffix
// (100ms, 1h30m, 7d). The burst defaults to 1; inflight=N caps the key's
// admissions in flight (Limit.Inflight); floor=N/P makes the limit learned
// (Limit.FloorRate). Errors match
// ErrInvalidLimit and name the offending part.
func Parse(s string) (Limit, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' })
	if len(fields) == 0 {
		return Limit{}, &LimitError{Field: "Rate", Reason: "empty limit"}
	}
	if len(fields) == 1 && fields[0] == "unlimited" {
		return Unlimited, nil
	}
	n, p, err := parseRate(fields[0])
	if err != nil {
		return Limit{}, &LimitError{Field: "Rate", Reason: err.Error()}
	}
	l := Limit{Rate: n, Period: p, Burst: 1}
	for _, f := range fields[1:] {
		name, val, ok := strings.Cut(f, "=")
		switch {
		case ok && name == "burst":
			b, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return Limit{}, &LimitError{Field: "Burst", Reason: fmt.Sprintf("%q is not an integer", val)}
			}
			l.Burst = b
		case ok && name == "quota":
			if len(l.Quotas) == MaxQuotas {
				return Limit{}, &LimitError{Field: "Quotas", Reason: fmt.Sprintf("at most %d", MaxQuotas)}
			}
			m, w, err := parseRate(val)
			if err != nil {
				return Limit{}, &LimitError{Field: "Quotas[" + strconv.Itoa(len(l.Quotas)) + "]", Reason: err.Error()}
			}
			l.Quotas = append(l.Quotas, Quota{Max: m, Window: w})
		case ok && name == "inflight":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return Limit{}, &LimitError{Field: "Inflight", Reason: fmt.Sprintf("%q is not an integer", val)}
			}
			l.Inflight = n
		case ok && name == "floor":
			n, p, err := parseRate(val)
			if err != nil {
				return Limit{}, &LimitError{Field: "FloorRate", Reason: err.Error()}
			}
			l.FloorRate, l.FloorPeriod = n, p
		default:
			return Limit{}, &LimitError{Field: "Rate", Reason: fmt.Sprintf("unknown field %q (want burst=B, quota=N/P, inflight=N or floor=N/P)", f)}
		}
	}
	if err := l.Validate(); err != nil {
		return Limit{}, err
	}
	return l, nil
}

func parseRate(s string) (int64, time.Duration, error) {
	num, per, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not of the form N/P (for example 5/s)", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: count %q is not an integer", s, num)
	}
	p, err := parsePeriod(per)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: %v", s, err)
	}
	return n, p, nil
}

func parsePeriod(s string) (time.Duration, error) {
	switch s {
	case "s":
		return time.Second, nil
	case "m":
		return time.Minute, nil
	case "h":
		return time.Hour, nil
	case "d":
		return 24 * time.Hour, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 1 || n > int64(MaxDuration/(24*time.Hour)) {
			return 0, fmt.Errorf("period %q is not a number of days up to %d", s, MaxDuration/(24*time.Hour))
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("period %q is not a unit (s, m, h, d) or a duration", s)
	}
	return d, nil
}
