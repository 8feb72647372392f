package driver

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// MaxDuration bounds every time span a Limit implies: its period, each quota
// window, and burst × emission interval. It keeps all arithmetic exact in
// int64 nanoseconds and in the double-precision microseconds of Redis Lua.
const MaxDuration = 10 * 365 * 24 * time.Hour

// MaxQuotas is the most quotas one Limit may carry.
const MaxQuotas = 8

// A Limit is the limit of one request, as backends apply it: Rate units
// per Period (the emission interval is T = Period/Rate), Burst units
// back-to-back after idle, and rolling quotas. It carries the fields of
// bucket.Limit; an unlimited bucket.Limit never reaches a backend.
type Limit struct {
	Rate   int64
	Period time.Duration
	Burst  int64
	Quotas []Quota
	// Inflight, if positive, caps the key's admissions holding a lease at
	// once (LeaseBackend); 0 caps nothing.
	Inflight int64
	// FloorRate per FloorPeriod, if set, makes the limit learned: the
	// key's rate follows what the service says of its own limit (Learn),
	// between Rate per Period, the ceiling, and this floor. Both zero: the
	// limit is fixed, and Learn changes nothing but pauses.
	FloorRate   int64
	FloorPeriod time.Duration
}

// MaxInflight bounds Limit.Inflight: each held lease is state the backend
// keeps and walks.
const MaxInflight = 10_000

// A Quota admits at most Max units in any rolling Window.
type Quota struct {
	Max    int64
	Window time.Duration
}

// Interval returns the emission interval Period/Rate, rounded up to a
// nanosecond, or 0 for an invalid rate or period.
func (l Limit) Interval() time.Duration {
	if l.Rate <= 0 || l.Period <= 0 {
		return 0
	}
	return time.Duration(ceilDiv(int64(l.Period), l.Rate))
}

// Validate returns nil if l is usable, or a *LimitError naming the first
// invalid field. The error matches ErrInvalidLimit.
func (l Limit) Validate() error {
	switch {
	case l.Rate < 1:
		return &LimitError{Field: "Rate", Reason: fmt.Sprintf("must be at least 1, got %d", l.Rate)}
	case l.Period <= 0:
		return &LimitError{Field: "Period", Reason: fmt.Sprintf("must be positive, got %v", l.Period)}
	case l.Period > MaxDuration:
		return &LimitError{Field: "Period", Reason: fmt.Sprintf("%v exceeds MaxDuration", l.Period)}
	case l.Burst < 1:
		return &LimitError{Field: "Burst", Reason: fmt.Sprintf("must be at least 1, got %d", l.Burst)}
	case !burstFits(l.Burst, l.Period, l.Rate):
		return &LimitError{Field: "Burst", Reason: fmt.Sprintf("%d × interval %v exceeds MaxDuration", l.Burst, l.Interval())}
	case l.Inflight < 0 || l.Inflight > MaxInflight:
		return &LimitError{Field: "Inflight", Reason: fmt.Sprintf("must be from 0 (no cap) to %d, got %d", MaxInflight, l.Inflight)}
	case len(l.Quotas) > MaxQuotas:
		return &LimitError{Field: "Quotas", Reason: fmt.Sprintf("at most %d, got %d", MaxQuotas, len(l.Quotas))}
	}
	if err := l.validFloor(); err != nil {
		return err
	}
	for i, q := range l.Quotas {
		field := "Quotas[" + strconv.Itoa(i) + "]"
		switch {
		case q.Max < 1:
			return &LimitError{Field: field + ".Max", Reason: fmt.Sprintf("must be at least 1, got %d", q.Max)}
		case q.Window <= 0:
			return &LimitError{Field: field + ".Window", Reason: fmt.Sprintf("must be positive, got %v", q.Window)}
		case q.Window > MaxDuration:
			return &LimitError{Field: field + ".Window", Reason: fmt.Sprintf("%v exceeds MaxDuration", q.Window)}
		}
		for j := range i {
			// Backends keep quotas apart by window to the microsecond.
			if Ticks(l.Quotas[j].Window, time.Microsecond) == Ticks(q.Window, time.Microsecond) {
				return &LimitError{Field: field + ".Window", Reason: fmt.Sprintf("%v repeats Quotas[%d] (%v) to the microsecond", q.Window, j, l.Quotas[j].Window)}
			}
		}
	}
	return nil
}

// burstFits reports whether burst × period/rate ≤ MaxDuration, exactly.
func burstFits(burst int64, period time.Duration, rate int64) bool {
	hi, lo := bits.Mul64(uint64(burst), uint64(period))
	mhi, mlo := bits.Mul64(uint64(MaxDuration), uint64(rate))
	return hi < mhi || hi == mhi && lo <= mlo
}

// String returns l in the textual form bucket.Parse reads, for example
// "5/s burst=10 quota=1000/1h inflight=4 floor=1/s".
func (l Limit) String() string {
	var b strings.Builder
	b.WriteString(rateString(l.Rate, l.Period))
	if l.Burst != 1 {
		b.WriteString(" burst=")
		b.WriteString(strconv.FormatInt(l.Burst, 10))
	}
	for _, q := range l.Quotas {
		b.WriteString(" quota=")
		b.WriteString(rateString(q.Max, q.Window))
	}
	if l.Inflight > 0 {
		b.WriteString(" inflight=")
		b.WriteString(strconv.FormatInt(l.Inflight, 10))
	}
	if l.Learned() {
		b.WriteString(" floor=")
		b.WriteString(rateString(l.FloorRate, l.FloorPeriod))
	}
	return b.String()
}

func rateString(n int64, d time.Duration) string {
	return strconv.FormatInt(n, 10) + "/" + periodString(d)
}

func periodString(d time.Duration) string {
	switch d {
	case time.Second:
		return "s"
	case time.Minute:
		return "m"
	case time.Hour:
		return "h"
	case 24 * time.Hour:
		return "d"
	}
	if d > 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	s := d.String()
	// time.Duration.String writes 1h0m0s; trim the zero tail for readability.
	for _, z := range []string{"m0s", "h0m"} {
		if strings.HasSuffix(s, z) {
			s = strings.TrimSuffix(s, z[1:])
		}
	}
	return s
}
