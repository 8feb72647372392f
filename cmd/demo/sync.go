package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/middleware"
)

// An item is one thing to sync: GET {base}/tenants/{tenant}/items/{n}.
type item struct {
	tenant string
	n      int
}

// share returns the items of worker w of count: those whose number is w
// modulo count, interleaved across tenants so that every tenant starts at
// once.
func share(cfg *config, w, count int) []item {
	tenants := cfg.tenantNames()
	var items []item
	for n := 1 + w; n <= cfg.jobs; n += count {
		for _, t := range tenants {
			items = append(items, item{t, n})
		}
	}
	return items
}

// A recorder receives what a sync does as it does it: the tally in a
// single process, the parent (through JSON lines) in a worker process.
// Its methods are called concurrently.
type recorder interface {
	// request reports one HTTP request: when it was sent and the status of
	// its answer, 0 if there was none.
	request(tenant string, sent time.Time, status int)
	// done reports a job's outcome: nil, or its final error.
	done(tenant string, err error)
	// learned reports the emission interval a tenant's bucket applied
	// at the time given (-learn).
	learned(tenant string, at time.Time, interval time.Duration)
	// finish reports the dispatcher's figures once it has stopped.
	finish(keys map[string]keyFigures)
}

// keyFigures are one tenant's figures from one dispatcher.
type keyFigures struct {
	Retries   int64         `json:"retries"`   // requeues after a 429, and retries after other errors
	Throttled int64         `json:"throttled"` // admissions the bucket refused (the job waited)
	Late      int64         `json:"late"`      // admissions given back because the job reached its worker late
	WaitP50   time.Duration `json:"wait_p50"`
	WaitP99   time.Duration `json:"wait_p99"`
	Interval  time.Duration `json:"interval"` // the emission interval its bucket applied last (dispatcher.KeyStats)
}

type syncer struct {
	base    string
	learn   bool // -learn: answers are reported (middleware.CheckResponse)
	client  *http.Client
	rec     recorder
	retries map[string]*atomic.Int64 // by tenant: retries Retry made itself
}

// syncItems syncs items against the API at base through a Dispatcher
// whose buckets live in be, and reports to rec; if metrics is not nil,
// it serves the Dispatcher's metrics there while it runs, and closes it.
// It returns an error only if it could not start; an interrupt (ctx
// ending) stops it at once, every job resolved.
func syncItems(ctx context.Context, cfg *config, be driver.Backend, base string, items []item, rec recorder, metrics net.Listener) error {
	if metrics != nil {
		defer metrics.Close() // if serving never started
	}
	lim, err := bucket.NewLimiter(be, cfg.limit)
	if err != nil {
		return err
	}
	s := newSyncer(cfg, base, rec)
	defer s.client.CloseIdleConnections()
	d, err := s.dispatcher(cfg, lim)
	if err != nil {
		return err
	}
	if metrics != nil {
		stop, err := serveMetrics(metrics, cfg, d)
		if err != nil {
			d.Shutdown(ctx)
			return err
		}
		defer stop()
	}
	if cfg.learn {
		stop := sampleLearned(d, cfg.tenantNames(), rec)
		s.run(ctx, d, items)
		stop()
	} else {
		s.run(ctx, d, items)
	}
	rec.finish(s.figures(d))
	return nil
}

func newSyncer(cfg *config, base string, rec recorder) *syncer {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = cfg.workers // reuse connections: no handshake jitter, no port exhaustion
	s := &syncer{base: base, learn: cfg.learn, client: &http.Client{Transport: tr}, rec: rec, retries: make(map[string]*atomic.Int64)}
	for _, t := range cfg.tenantNames() {
		s.retries[t] = new(atomic.Int64)
	}
	return s
}

// dispatcher builds the Dispatcher: jobs keyed by tenant, admitted by
// lim, with retry, logging and timeout around fetch. Retry hands every
// 429 back at once (WithMaxRetryAfter(0)): the dispatcher then pauses the
// tenant in the backend, for every process sharing it, and requeues the
// job. Other failures are retried here with backoff.
func (s *syncer) dispatcher(cfg *config, lim *bucket.Limiter) (*dispatcher.Dispatcher[item, struct{}], error) {
	fetch := middleware.Wrap(s.fetch,
		middleware.Retry(middleware.WithMaxRetryAfter(0), middleware.WithOnRetry(s.countRetry)),
		middleware.Logging(cfg.logger),
		middleware.Timeout(10*time.Second))
	return dispatcher.New(fetch, func(it item) string { return it.tenant },
		dispatcher.WithWorkers(cfg.workers),
		dispatcher.WithLimiter(lim),
		dispatcher.WithKeyStats(cfg.tenants)) // the summary's per-tenant figures
}

func (s *syncer) countRetry(ctx context.Context, _ error, _ time.Duration) {
	if info, ok := jobinfo.FromContext(ctx); ok {
		if n := s.retries[info.Key]; n != nil {
			n.Add(1)
		}
	}
}

// fetch is the handler: one GET of one item. A 429 (or a 503 with
// Retry-After) becomes a *middleware.RetryAfterError; other 4xx answers
// are permanent failures, 5xx and network errors are retried. With
// -learn every answer's headers are reported to the Dispatcher, which
// learns the tenant's limit from them (middleware.CheckResponse).
func (s *syncer) fetch(ctx context.Context, it item) (struct{}, error) {
	path := fmt.Sprintf("/tenants/%s/items/%d", it.tenant, it.n)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		return struct{}{}, middleware.Permanent(err)
	}
	req.Header.Set("X-Tenant", it.tenant)
	sent := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		s.rec.request(it.tenant, sent, 0)
		return struct{}{}, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	s.rec.request(it.tenant, sent, resp.StatusCode)
	check := middleware.FromResponse
	if s.learn {
		check = func(resp *http.Response) error { return middleware.CheckResponse(ctx, resp) }
	}
	if err := check(resp); err != nil {
		return struct{}{}, err
	}
	switch {
	case resp.StatusCode < 300:
		return struct{}{}, nil
	case resp.StatusCode >= 500:
		return struct{}{}, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return struct{}{}, middleware.Permanent(fmt.Errorf("GET %s: %s", path, resp.Status))
}

// run streams items through d and reports each outcome. If ctx ends, it
// stops feeding d and closes it: queued jobs resolve with
// dispatcher.ErrClosed and requests in flight are cancelled. Outcomes are
// streamed under a context that is not cancelled, so every one arrives.
func (s *syncer) run(ctx context.Context, d *dispatcher.Dispatcher[item, struct{}], items []item) {
	in := make(chan item)
	var producer sync.WaitGroup
	producer.Go(func() { feed(ctx, in, items) })
	defer producer.Wait()

	outcomes := d.Stream(context.WithoutCancel(ctx), in)
	interrupt := ctx.Done()
	for {
		select {
		case o, ok := <-outcomes:
			if !ok {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				d.Shutdown(sctx) // nothing is left: this joins its goroutines
				return
			}
			s.rec.done(o.Job.tenant, o.Err)
		case <-interrupt:
			interrupt = nil
			d.Close() // Shutdown with a context already ended: stop now
		}
	}
}

func feed(ctx context.Context, in chan<- item, items []item) {
	defer close(in)
	for _, it := range items {
		select {
		case in <- it:
		case <-ctx.Done():
			return
		}
	}
}

// figures reads each tenant's retries and admission waits.
func (s *syncer) figures(d *dispatcher.Dispatcher[item, struct{}]) map[string]keyFigures {
	out := make(map[string]keyFigures, len(s.retries))
	for t, n := range s.retries {
		ks, _ := d.KeyStats(t)
		out[t] = keyFigures{
			Retries:   ks.Retried + n.Load(),
			Throttled: ks.Throttled,
			Late:      ks.Late,
			WaitP50:   ks.AdmissionWait.P50,
			WaitP99:   ks.AdmissionWait.P99,
			Interval:  ks.Interval,
		}
	}
	return out
}
