// Package limitmock serves an HTTP API whose per-tenant rate limit is
// hidden from its clients and changes on a schedule, and which tells its
// clients about it, or not, in the headers of one family: what the demo
// and the benchmarks learn against. It is an independent judge: its meter
// is its own (a GCRA written here), not this module's.
//
// Every tenant gets the limit of the schedule's current step, in requests
// per second, with Slack of arrival jitter forgiven (a request may arrive
// up to Slack ahead of its turn). A request over it gets 429; what the
// answers say depends on the family:
//
//   - None: nothing; a 429 has no Retry-After.
//   - IETF: every answer has `RateLimit-Policy: "default";q=R;w=1` with
//     the current rate R, and `RateLimit: "default";r=N;t=T`, N the
//     requests that could pass at once, this one included, and T the
//     whole seconds until the meter is empty; a 429 has r=0.
//   - GitHub: fixed windows of Window (10 s by default), aligned to whole
//     Unix seconds, each allowing R × Window requests (R the limit in
//     force, so that a change applies at once); every answer has
//     X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset (the
//     window's end, Unix seconds); a 429 has Remaining 0. The meter is the
//     window's count, not the GCRA.
package limitmock

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// A Family is the headers the API answers with.
type Family string

// The families.
const (
	None   Family = "none"
	IETF   Family = "ietf"
	GitHub Family = "github"
)

// ParseFamily reads a family's name, as a flag gives it.
func ParseFamily(s string) (Family, error) {
	switch f := Family(s); f {
	case None, IETF, GitHub:
		return f, nil
	}
	return "", fmt.Errorf("limitmock: unknown header family %q (want none, ietf or github)", s)
}

// A Step is the hidden limit from At, measured from the server's start:
// Rate requests per second per tenant.
type Step struct {
	At   time.Duration
	Rate int
}

// Config configures a Server.
type Config struct {
	// Schedule is the hidden limit over time, by increasing At, the
	// first at 0.
	Schedule []Step
	Headers  Family
	// Slack is how much arrival jitter the GCRA forgives: 100 ms if 0.
	Slack time.Duration
	// Window is the GitHub family's window: 10 s if 0.
	Window time.Duration
	// Latency, if set, is how long each answer takes.
	Latency func() time.Duration
}

// A Server is the API. Its methods are safe for concurrent use.
type Server struct {
	cfg   Config
	start time.Time
	srv   *http.Server
	ln    net.Listener
	done  chan struct{}

	mu      sync.Mutex
	tenants map[string]*tenant
}

type tenant struct {
	tat      time.Duration // the GCRA's theoretical arrival time, since start
	window   int64         // the GitHub window's index
	used     int           // in it
	quota    int           // its quota now
	answered []Answer
}

// An Answer is one request as the API saw it.
type Answer struct {
	At     time.Duration // since the server's start
	Status int           // 200 or 429
	Limit  int           // the hidden limit then, per second
}

// Start serves the API on a free loopback port until Close.
func Start(cfg Config) (*Server, error) {
	if len(cfg.Schedule) == 0 || cfg.Schedule[0].At != 0 {
		return nil, fmt.Errorf("limitmock: the schedule must start at 0")
	}
	for i, s := range cfg.Schedule {
		if s.Rate < 1 || i > 0 && s.At <= cfg.Schedule[i-1].At {
			return nil, fmt.Errorf("limitmock: schedule step %d (%v, %d/s): rates must be positive, times increasing", i, s.At, s.Rate)
		}
	}
	if cfg.Headers == "" {
		cfg.Headers = None
	}
	if _, err := ParseFamily(string(cfg.Headers)); err != nil {
		return nil, err
	}
	if cfg.Slack == 0 {
		cfg.Slack = 100 * time.Millisecond
	}
	if cfg.Window == 0 {
		cfg.Window = 10 * time.Second
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, start: time.Now(), ln: ln, done: make(chan struct{}), tenants: make(map[string]*tenant)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tenants/{tenant}/items/{n}", s.serve)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// URL returns the API's base URL; a request is GET
// URL/tenants/{tenant}/items/{n}.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// Close stops the server and waits for it.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
	<-s.done
}

// LimitAt returns the hidden limit at at, since the server's start.
func (s *Server) LimitAt(at time.Duration) int {
	r := s.cfg.Schedule[0].Rate
	for _, st := range s.cfg.Schedule {
		if st.At <= at {
			r = st.Rate
		}
	}
	return r
}

// Allowed returns what schedule allows one tenant from from to to (since
// the server's start): the integral of its rate, in requests.
func Allowed(schedule []Step, from, to time.Duration) float64 {
	var n float64
	for i, s := range schedule {
		end := time.Duration(math.MaxInt64)
		if i+1 < len(schedule) {
			end = schedule[i+1].At
		}
		if lo, hi := max(from, s.At), min(to, end); hi > lo {
			n += float64(s.Rate) * (hi - lo).Seconds()
		}
	}
	return n
}

// Answers returns what the API answered each tenant, in order.
func (s *Server) Answers() map[string][]Answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]Answer, len(s.tenants))
	for name, t := range s.tenants {
		out[name] = append([]Answer(nil), t.answered...)
	}
	return out
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("tenant")
	if _, err := strconv.Atoi(r.PathValue("n")); err != nil {
		http.Error(w, "no such item", http.StatusNotFound)
		return
	}
	if s.cfg.Latency != nil {
		select {
		case <-time.After(s.cfg.Latency()):
		case <-r.Context().Done():
			return
		}
	}
	now := time.Now()
	ok := s.decide(name, now, w.Header())
	if !ok {
		http.Error(w, "rate limit exceeded", http.StatusTooManyRequests)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"tenant": name, "item": r.PathValue("n")})
}

// decide judges a request of name arriving at now and writes the
// family's headers to h.
func (s *Server) decide(name string, now time.Time, h http.Header) bool {
	at := now.Sub(s.start)
	rate := s.LimitAt(at)
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[name]
	if t == nil {
		t = &tenant{window: -1}
		s.tenants[name] = t
	}
	var ok bool
	switch s.cfg.Headers {
	case GitHub:
		ok = t.github(now, rate, s.cfg.Window, h)
	default:
		ok = t.gcra(at, rate, s.cfg.Slack, s.cfg.Headers == IETF, h)
	}
	status := http.StatusOK
	if !ok {
		status = http.StatusTooManyRequests
	}
	t.answered = append(t.answered, Answer{At: at, Status: status, Limit: rate})
	return ok
}

// gcra meters at rate per second, forgiving slack, and writes the IETF
// fields if ietf.
func (t *tenant) gcra(at time.Duration, rate int, slack time.Duration, ietf bool, h http.Header) bool {
	interval := time.Second / time.Duration(rate)
	ahead := max(t.tat-at, 0) // how far ahead the meter runs
	ok := ahead <= slack
	if ok {
		t.tat = max(t.tat, at) + interval
	}
	if ietf {
		left := 0
		if ok {
			left = int((slack-ahead)/interval) + 1 // this one included
		}
		empty := (max(t.tat-at, 0) + time.Second - 1) / time.Second
		h.Set("RateLimit-Policy", fmt.Sprintf(`"default";q=%d;w=1`, rate))
		h.Set("RateLimit", fmt.Sprintf(`"default";r=%d;t=%d`, left, int64(empty)))
	}
	return ok
}

// github meters the fixed window at now and writes its headers.
func (t *tenant) github(now time.Time, rate int, window time.Duration, h http.Header) bool {
	w := now.UnixNano() / int64(window)
	if w != t.window {
		t.window, t.used = w, 0
	}
	t.quota = rate * int(window/time.Second)
	ok := t.used < t.quota
	if ok {
		t.used++
	}
	reset := time.Unix(0, (w+1)*int64(window))
	h.Set("Date", now.UTC().Format(http.TimeFormat))
	h.Set("X-RateLimit-Limit", strconv.Itoa(t.quota))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(max(t.quota-t.used, 0)))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
	return ok
}
