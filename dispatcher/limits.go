package dispatcher

import (
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// maxLimits bounds how many distinct limits the scheduler remembers.
const maxLimits = 256

// limits hands out one driver.Limit for all the admissions made under the
// same limit, so that an admitted job keeps a pointer to it for a refund
// (which needs the request as it was admitted) rather than a copy of six
// words. Limits are told apart by value, their quotas by the slice they
// came in: a limit function that builds its quotas afresh for each call
// gets a new driver.Limit each time, still correct. Guarded by the
// scheduler's mu.
type limits struct {
	last     limitKey
	lastSeen *driver.Limit
	seen     map[limitKey]*driver.Limit
}

type limitKey struct {
	rate, burst, inflight, floorRate int64
	period, floorPeriod              time.Duration
	quotas                           *driver.Quota
	n                                int
}

// intern returns the driver.Limit of lim, which is not unlimited.
func (l *limits) intern(lim bucket.Limit) *driver.Limit {
	k := limitKey{rate: lim.Rate, burst: lim.Burst, inflight: lim.Inflight, floorRate: lim.FloorRate,
		period: lim.Period, floorPeriod: lim.FloorPeriod, n: len(lim.Quotas)}
	if k.n > 0 {
		k.quotas = &lim.Quotas[0]
	}
	if l.lastSeen != nil && k == l.last {
		return l.lastSeen
	}
	p := l.seen[k]
	if p == nil {
		if l.seen == nil || len(l.seen) >= maxLimits {
			l.seen = make(map[limitKey]*driver.Limit)
		}
		p = &driver.Limit{Rate: lim.Rate, Period: lim.Period, Burst: lim.Burst, Quotas: lim.Quotas, Inflight: lim.Inflight,
			FloorRate: lim.FloorRate, FloorPeriod: lim.FloorPeriod}
		l.seen[k] = p
	}
	l.last, l.lastSeen = k, p
	return p
}
