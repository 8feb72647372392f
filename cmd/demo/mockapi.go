package main

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/leakybucket/leakybucket/bucket"
)

// A mockAPI stands in for a third-party API with strict per-tenant limits.
// It enforces them with a limiter of its own (x/time/rate and a sliding
// log per quota), not this module's code, so it is an independent judge:
// a tenant that goes over gets 429 with Retry-After.
//
// It judges arrivals, and a request started on schedule arrives a varying
// moment later: the network, and the scheduling of both processes (a few
// milliseconds; tens on a loaded machine or under the race detector). So
// that such jitter does not look like a violation, its token bucket holds
// the tokens of jitterAllowance more than the limit's burst (see
// withJitterAllowance). Anything that really exceeds the limit, such as a
// second process with a bucket of its own or a catch-up burst after a
// stall, runs that allowance dry within a few intervals and gets 429s.
// Quotas get no allowance: the dispatcher's rolling windows under-admit by
// up to 1% of the window, far more than any jitter.
//
// A limit with an Inflight cap is judged on the API's side too: it counts
// each tenant's requests from their arrival until their answer is written
// and answers 429 to one that would make more than Inflight. This needs no
// allowance: a request is sent after its lease was taken, and the client
// reads its answer, and releases the lease, only after the API stopped
// counting it.
type mockAPI struct {
	limit bucket.Limit
	hold  func(ctx context.Context) // before each answer, if not nil: the API's time to answer
	start time.Time
	srv   *http.Server
	ln    net.Listener
	done  chan struct{}

	mu      sync.Mutex
	tenants map[string]*mockTenant
}

type mockTenant struct {
	mu       sync.Mutex
	rate     *rate.Limiter
	quotas   []slidingLog
	arrivals []arrival
	inflight int // requests admitted and not yet answered
	peak     int // the most requests in flight at once, counting one refused for going over the cap
}

// An arrival is one request as the API saw it.
type arrival struct {
	At     time.Duration // since the API started, on the monotonic clock
	Status int
}

// A slidingLog admits at most max requests in any window.
type slidingLog struct {
	max    int
	window time.Duration
	times  []time.Duration // admitted, oldest first
}

// jitterAllowance is how much lateness of one request the mock forgives.
const jitterAllowance = 100 * time.Millisecond

// withJitterAllowance returns lim with room for jitterAllowance of arrival
// jitter: ⌈jitterAllowance / interval⌉ more units of burst, at least one.
func withJitterAllowance(lim bucket.Limit) bucket.Limit {
	t := lim.Interval()
	return lim.WithBurst(lim.Burst + max(int64((jitterAllowance+t-1)/t), 1))
}

// startMockAPI serves the API on a free loopback port until Close. hold,
// if not nil, is called before each answer and returns when it is to be
// written (or when its context ends): randomLatency's, or a test's gate.
func startMockAPI(lim bucket.Limit, hold func(ctx context.Context)) (*mockAPI, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &mockAPI{limit: lim, hold: hold, start: time.Now(), ln: ln, done: make(chan struct{}), tenants: make(map[string]*mockTenant)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tenants/{tenant}/items/{n}", m.serveItem)
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(m.done)
		m.srv.Serve(ln)
	}()
	return m, nil
}

// URL returns the API's base URL.
func (m *mockAPI) URL() string { return "http://" + m.ln.Addr().String() }

// Close stops the server and waits for it.
func (m *mockAPI) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if m.srv.Shutdown(ctx) != nil {
		m.srv.Close()
	}
	<-m.done
}

// Arrivals returns what each tenant sent, in arrival order.
func (m *mockAPI) Arrivals() map[string][]arrival {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string][]arrival, len(m.tenants))
	for name, t := range m.tenants {
		t.mu.Lock()
		out[name] = append([]arrival(nil), t.arrivals...)
		t.mu.Unlock()
	}
	return out
}

// Peak returns the most requests of tenant the API has had in flight at
// once, counting one it refused for going over the cap: above the limit's
// Inflight, the cap was broken.
func (m *mockAPI) Peak(tenant string) int {
	m.mu.Lock()
	t := m.tenants[tenant]
	m.mu.Unlock()
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peak
}

func (m *mockAPI) tenant(name string) *mockTenant {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.tenants[name]
	if t == nil {
		perSecond := float64(m.limit.Rate) / m.limit.Period.Seconds()
		burst := withJitterAllowance(m.limit).Burst
		t = &mockTenant{rate: rate.NewLimiter(rate.Limit(perSecond), int(burst))}
		for _, q := range m.limit.Quotas {
			t.quotas = append(t.quotas, slidingLog{max: int(q.Max), window: q.Window})
		}
		m.tenants[name] = t
	}
	return t
}

func (m *mockAPI) serveItem(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("tenant")
	n, err := strconv.Atoi(r.PathValue("n"))
	switch {
	case err != nil || n < 1:
		http.Error(w, "no such item", http.StatusNotFound)
		return
	case r.Header.Get("X-Tenant") != name:
		http.Error(w, "X-Tenant does not match the path", http.StatusBadRequest)
		return
	}
	t := m.tenant(name)
	wait, ok := t.admit(m.start, int(m.limit.Inflight))
	if !ok {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(wait.Seconds())), 10))
		http.Error(w, "rate limit exceeded", http.StatusTooManyRequests)
		return
	}
	if m.hold != nil {
		m.hold(r.Context())
	}
	// Before the answer is written, so that the client cannot see it, and
	// send its next request, while this one still counts.
	t.answered()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"tenant": name, "item": n})
}

// admit decides one request arriving now: ok, or refused with how long
// until it would be allowed. Refusals use up nothing. A request refused
// because inflight (0: no cap) of the tenant's are in flight already is
// told to come back in a second. An admitted request counts as in flight
// until answered is called.
func (t *mockTenant) admit(start time.Time, inflight int) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	at := now.Sub(start)
	t.peak = max(t.peak, t.inflight+1)
	var wait time.Duration
	if inflight > 0 && t.inflight >= inflight {
		wait = time.Second
	}
	if wait == 0 {
		wait = t.quotaWait(at)
	}
	if wait == 0 && !t.rate.AllowN(now, 1) {
		wait = time.Duration((1 - t.rate.TokensAt(now)) / float64(t.rate.Limit()) * float64(time.Second))
		wait = max(wait, time.Nanosecond)
	}
	if wait > 0 {
		t.arrivals = append(t.arrivals, arrival{at, http.StatusTooManyRequests})
		return wait, false
	}
	for i := range t.quotas {
		t.quotas[i].times = append(t.quotas[i].times, at)
	}
	t.arrivals = append(t.arrivals, arrival{at, http.StatusOK})
	t.inflight++
	return 0, true
}

// answered counts an admitted request as no longer in flight.
func (t *mockTenant) answered() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inflight--
}

// quotaWait returns how long until every quota has room at at, 0 if they
// have now.
func (t *mockTenant) quotaWait(at time.Duration) time.Duration {
	var wait time.Duration
	for i := range t.quotas {
		q := &t.quotas[i]
		for len(q.times) > 0 && q.times[0] <= at-q.window {
			q.times = q.times[1:]
		}
		if len(q.times) >= q.max {
			wait = max(wait, q.times[len(q.times)-q.max]+q.window-at)
		}
	}
	return wait
}
