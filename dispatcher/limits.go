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
	lastSeen *limit
	seen     map[limitKey]*limit
	learner  *learner // nil if the backend keeps no learned limits
}

// A limit is an interned driver.Limit, with the learner its jobs' handlers
// report feedback to if it learns (it has a floor and the backend keeps
// learned limits): a job reaches the dispatcher through it, at no cost to
// the job's size.
type limit struct {
	driver.Limit
	learner *learner
}

type limitKey struct {
	rate, burst, inflight, floorRate int64
	period, floorPeriod              time.Duration
	quotas                           *driver.Quota
	n                                int
}

// intern returns the driver.Limit of lim, which is not unlimited.
func (l *limits) intern(lim bucket.Limit) *limit {
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
			l.seen = make(map[limitKey]*limit)
		}
		p = &limit{Limit: driver.Limit{Rate: lim.Rate, Period: lim.Period, Burst: lim.Burst, Quotas: lim.Quotas, Inflight: lim.Inflight,
			FloorRate: lim.FloorRate, FloorPeriod: lim.FloorPeriod}}
		if lim.IsLearned() {
			p.learner = l.learner
		}
		l.seen[k] = p
	}
	l.last, l.lastSeen = k, p
	return p
}
