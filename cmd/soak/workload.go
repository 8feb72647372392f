package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/jobinfo"
)

// A job is one unit of work of the soak: its key, its cost, and what its
// handler does, all drawn by the generator.
type job struct {
	key        string
	cost       int
	spin       int           // CPU work: rounds of a hash
	sleep      time.Duration // or a sleep
	retryAfter time.Duration // > 0: the first run answers with a retry-after this long
}

// The classes of keys, by the key's first letter: a key's limit is its
// class's. Each exercises a path of the backends: the rate alone, an
// inflight cap (leases), a rolling quota, both. A quota's window is a
// key's life (-key-life), so that a key is forgotten soon after its last
// job (a key with a quota is fresh a window after its last admission),
// and its size perSecond units a second of it.
var classes = []struct {
	letter    byte
	share     int // of ten keys
	limit     string
	perSecond float64 // the quota's units a second of its window; 0: no quota
}{
	{'a', 4, "20/s burst=5", 0},
	{'b', 2, "10/s burst=3 inflight=2", 0},
	{'c', 2, "50/s burst=5", 20},
	{'d', 1, "5/s burst=3 inflight=1", 4},
	{'e', 1, "200/s burst=10 inflight=8", 0},
}

// maxCost is the largest cost a job draws: at most every class's burst
// and quota.
const maxCost = 3

// limits returns each class's limit by its letter, for keys that live
// keyLife, without inflight caps if the backend keeps no leases.
func limits(keyLife time.Duration, leases bool) (map[byte]bucket.Limit, error) {
	m := make(map[byte]bucket.Limit, len(classes))
	for _, c := range classes {
		l, err := bucket.Parse(c.limit)
		if err != nil {
			return nil, fmt.Errorf("class %c: %w", c.letter, err)
		}
		if c.perSecond > 0 {
			l = l.WithQuota(max(maxCost, int64(math.Round(c.perSecond*keyLife.Seconds()))), keyLife)
		}
		if !leases {
			l.Inflight = 0
		}
		if err := l.Validate(); err != nil {
			return nil, fmt.Errorf("class %c: %w", c.letter, err)
		}
		m[c.letter] = l
	}
	return m, nil
}

// keyLimit returns the function that gives a key its class's limit, for
// bucket.WithKeyLimit.
func keyLimit(m map[byte]bucket.Limit) func(string) bucket.Limit {
	byLetter := make([]bucket.Limit, 256)
	for c, l := range m {
		byLetter[c] = l
	}
	fallback := m[classes[0].letter]
	return func(key string) bucket.Limit {
		if key == "" || byLetter[key[0]].Rate == 0 {
			return fallback
		}
		return byLetter[key[0]]
	}
}

// A generator draws jobs. Key number n is born n/keysPerMinute minutes
// after a key's life before the run (so that the run starts with a key's
// life worth of keys) and dies a key's life (-key-life) later, when key
// n+window is born. It gets a job when it is born and one when it dies,
// first of all, so that every key is kept by the backend for as long,
// however fast the run goes: the rows and keys the soak judges would
// otherwise follow the throughput. Between them every job goes to a key
// picked uniformly among the live ones, unless that key has had its
// budget of jobs: what half its limit admits in its life, so that no key
// is given more than its limit can drain and the queue holds no backlog
// that lasts. The dispatcher runs as fast as the machine and the backend
// let it (up to keys a second × budgets, 120k jobs a second at 10⁵ keys a
// minute). Not safe for concurrent use: one producer draws.
type generator struct {
	rng        *rand.Rand
	start      time.Time
	perKey     time.Duration // between births
	window     int64         // keys alive at once
	given      []uint16      // jobs given to key n, at n % window
	budget     [256]uint16   // by class letter
	retryAfter float64
	firsts     int64 // keys given their first job: keys 0 … firsts-1
	lasts      int64 // keys given their last job: keys 0 … lasts-1
}

// meanCost is the mean cost a job draws (see next).
const meanCost = 1*0.80 + 2*0.15 + maxCost*0.05

func newGenerator(cfg *config, start time.Time, lims map[byte]bucket.Limit) *generator {
	g := &generator{
		rng:        rand.New(rand.NewPCG(cfg.seed, 0x50a4)),
		start:      start,
		perKey:     time.Minute / time.Duration(cfg.keysPerMinute),
		window:     max(1, int64(math.Ceil(cfg.keyLife.Minutes()*float64(cfg.keysPerMinute)))),
		retryAfter: cfg.retryAfter,
	}
	g.given = make([]uint16, g.window)
	for c, l := range lims {
		units := float64(l.Rate)/l.Period.Seconds()*cfg.keyLife.Seconds() + float64(l.Burst)
		for _, q := range l.Quotas {
			units = min(units, float64(q.Max)*math.Ceil(float64(cfg.keyLife)/float64(q.Window)))
		}
		g.budget[c] = uint16(min(max(units/2/meanCost, 1), math.MaxUint16))
	}
	return g
}

// next draws the job to submit at now. It returns false if every key it
// tried had had its budget: the producer waits for the next birth.
func (g *generator) next(now time.Time) (job, bool) {
	dead := int64(now.Sub(g.start) / g.perKey) // keys 0 … dead-1 have died
	var n int64
	switch {
	case g.lasts < min(dead, g.firsts):
		n = g.lasts
		g.lasts++
	case g.firsts < g.window+dead:
		n = g.firsts
		g.firsts++
		g.given[n%g.window] = 1
	default:
		found := false
		from := max(g.lasts, g.firsts-g.window)
		for range 8 {
			n = from + g.rng.Int64N(g.firsts-from)
			if slot := &g.given[n%g.window]; *slot < g.budget[classOf(n)] {
				*slot++
				found = true
				break
			}
		}
		if !found {
			return job{}, false
		}
	}
	j := job{key: keyName(n), cost: 1}
	switch r := g.rng.IntN(100); {
	case r < 5:
		j.cost = maxCost
	case r < 20:
		j.cost = 2
	}
	if g.rng.IntN(2) == 0 {
		j.spin = g.rng.IntN(20_000) // up to about 20µs
	} else {
		j.sleep = time.Duration(g.rng.Int64N(int64(2 * time.Millisecond)))
	}
	if g.retryAfter > 0 && g.rng.Float64() < g.retryAfter {
		j.retryAfter = time.Duration(10+g.rng.IntN(190)) * time.Millisecond
	}
	return j, true
}

// nextBirth returns when the next key is born (and one dies).
func (g *generator) nextBirth() time.Time {
	return g.start.Add(time.Duration(g.firsts-g.window+1) * g.perKey)
}

// classOf returns key number n's class letter: classes take keys in turn
// by their share of ten.
func classOf(n int64) byte {
	slot := int(n % 10)
	for _, c := range classes {
		if slot < c.share {
			return c.letter
		}
		slot -= c.share
	}
	return classes[len(classes)-1].letter
}

// keyName returns key number n's name: its class's letter, then n.
func keyName(n int64) string {
	return string(classOf(n)) + strconv.FormatInt(n, 10)
}

// A retryAfterError asks the dispatcher to pause the job's key and run the
// job again, as a 429 with Retry-After would.
type retryAfterError time.Duration

func (e retryAfterError) Error() string {
	return "soak: 429, retry after " + time.Duration(e).String()
}

func (e retryAfterError) RetryAfter() time.Duration { return time.Duration(e) }

// handle runs j: a little CPU work or a short sleep (at most 2ms, so it
// does not watch ctx), after a retry-after on the first run if j asks for
// one.
func handle(ctx context.Context, j job) (uint64, error) {
	if info, _ := jobinfo.FromContext(ctx); j.retryAfter > 0 && info.Attempt <= 1 {
		return 0, retryAfterError(j.retryAfter)
	}
	if j.sleep > 0 {
		time.Sleep(j.sleep)
		return 0, nil
	}
	h := uint64(len(j.key))
	for i := range j.spin {
		h ^= uint64(i)
		h *= 0x100000001b3
	}
	return h, nil
}
