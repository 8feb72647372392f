package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/time/rate"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/middleware"
)

// The client side of the learn comparisons: each contender's workers
// calling the mock API for learnTenants tenants until a deadline, in a
// child process told which contender to run.

// learnTenant names tenant i in the mock's URLs and in our keys.
func learnTenant(i int) string { return fmt.Sprintf("tenant-%d", i) }

// newLearnHTTPClient returns a client that keeps a connection for each
// worker, so that no request waits for one to be dialled.
func newLearnHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 4 * learnWorkers
	return &http.Client{Transport: t}
}

// learnGet asks url for tenant's item n; it returns the response, its body
// read and closed.
func learnGet(ctx context.Context, c *http.Client, url, tenant string, n int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/tenants/%s/items/%d", url, tenant, n), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// learnJob is one call of a tenant's.
type learnJob struct {
	tenant string
	n      int64
}

// learnOurs runs our side until ctx ends: a Dispatcher of learnWorkers
// workers on a learned limit (learnLimit) whose handler reports each
// answer with middleware.CheckResponse, fed by one goroutine a tenant that
// keeps learnAhead of its jobs submitted. It returns the Dispatcher's
// Stats and, every learnSlice, each tenant's KeyStats.Interval in ms.
func learnOurs(ctx context.Context, lim *bucket.Limiter, url string) (learnOursReport, error) {
	client := newLearnHTTPClient()
	defer client.CloseIdleConnections()
	h := func(ctx context.Context, j learnJob) (struct{}, error) {
		resp, err := learnGet(ctx, client, url, j.tenant, j.n)
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, middleware.CheckResponse(ctx, resp)
	}
	d, err := dispatcher.New(h, func(j learnJob) string { return j.tenant },
		dispatcher.WithWorkers(learnWorkers), dispatcher.WithLimiter(lim),
		dispatcher.WithMaxRequeues(1<<20), dispatcher.WithKeyStats(learnTenants))
	if err != nil {
		return learnOursReport{}, err
	}
	var (
		rep      learnOursReport
		wg, jobs sync.WaitGroup
	)
	for i := range learnTenants {
		tenant := learnTenant(i)
		wg.Go(func() {
			ahead := make(chan struct{}, learnAhead)
			var n int64
			for {
				select {
				case ahead <- struct{}{}:
				case <-ctx.Done():
					return
				}
				n++
				f, err := d.Submit(ctx, learnJob{tenant, n})
				if err != nil {
					return
				}
				jobs.Go(func() { <-f.Done(); <-ahead }) // f resolves by the Dispatcher's Close at the latest
			}
		})
	}
	wg.Go(func() {
		t := time.NewTicker(learnSlice)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
			row := make([]float64, learnTenants)
			for i := range row {
				if ks, ok := d.KeyStats(learnTenant(i)); ok {
					row[i] = float64(ks.Interval) / 1e6
				}
			}
			rep.Intervals = append(rep.Intervals, row)
		}
	})
	wg.Wait()
	d.Close()
	jobs.Wait()
	st := d.Stats()
	rep.Learned, rep.Retried, rep.BackendErrors = st.Learned, st.Retried, st.BackendErrors
	return rep, nil
}

// learnOursReport is what our side tells the parent besides the mock's
// answers.
type learnOursReport struct {
	Learned, Retried, BackendErrors int64
	Intervals                       [][]float64 // [slice][tenant], ms
}

// learnPool runs learnWorkers goroutines until ctx ends, each calling do
// with the next tenant in turn: the anchors' worker pool.
func learnPool(ctx context.Context, do func(tenant int, n int64)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range learnWorkers {
		wg.Go(func() {
			for ctx.Err() == nil {
				n := next.Add(1)
				do(int(n%learnTenants), n)
			}
		})
	}
	wg.Wait()
}

// learnFixed runs the fixed anchor until ctx ends: a rate.Limiter per
// tenant at the starting limit, in this process alone, waited on before
// each call. A 429 is counted by the mock and the worker goes on.
func learnFixed(ctx context.Context, url string, perSecond float64) {
	client := newLearnHTTPClient()
	defer client.CloseIdleConnections()
	lims := make([]*rate.Limiter, learnTenants)
	for i := range lims {
		lims[i] = rate.NewLimiter(rate.Limit(perSecond), 1)
	}
	learnPool(ctx, func(t int, n int64) {
		if lims[t].Wait(ctx) != nil {
			return
		}
		learnGet(ctx, client, url, learnTenant(t), n)
	})
}

// learnAWS runs the AWS SDK's adaptive retry mode until ctx ends: an
// AdaptiveMode per tenant (a client per tenant, each with its own rate),
// in this process alone, driven as the SDK's retry middleware
// (retry.Attempt) drives it: an attempt token before each call (the
// adaptive rate limiter: unrestricted until the first throttle, then a
// token bucket whose rate follows CUBIC), both tokens released with the
// call's error, and a retryable error retried after the retryer's backoff,
// while the retry quota lasts, up to its MaxAttempts. A 429 reaches it as
// the SDK's deserializers build an unmodeled error (awsResponseError),
// which it takes for a throttle.
func learnAWS(ctx context.Context, url string) {
	client := newLearnHTTPClient()
	defer client.CloseIdleConnections()
	modes := make([]*retry.AdaptiveMode, learnTenants)
	for i := range modes {
		modes[i] = retry.NewAdaptiveMode()
	}
	learnPool(ctx, func(t int, n int64) {
		am := modes[t]
		releaseRetry := func(error) error { return nil }
		for attempt := 1; ; attempt++ {
			release, err := am.GetAttemptToken(ctx)
			if err != nil {
				return
			}
			resp, opErr := learnGet(ctx, client, url, learnTenant(t), n)
			if opErr == nil && resp.StatusCode != http.StatusOK {
				opErr = awsResponseError(resp)
			}
			releaseRetry(opErr)
			release(opErr)
			if opErr == nil || ctx.Err() != nil || !am.IsErrorRetryable(opErr) || attempt >= am.MaxAttempts() {
				return
			}
			if releaseRetry, err = am.GetRetryToken(ctx, opErr); err != nil {
				return // the retry quota is spent: the call fails
			}
			// A throttle's backoff starts at 1 s, another error's at 50 ms.
			delay, err := am.RetryDelay(attempt, opErr)
			if err != nil {
				return
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	})
}

// awsResponseError returns the error the SDK's deserializers return for
// an answer of resp's status that no API model names: an
// awshttp.ResponseError around a smithyhttp.ResponseError.
func awsResponseError(resp *http.Response) error {
	return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
		Response: &smithyhttp.Response{Response: resp}, Err: errors.New(resp.Status)}}
}

// learnChild serves a parent: for each line "run CONTENDER STOP_NS PREFIX
// URL" it runs the contender (ours, aws or fixed) against the mock at URL
// until STOP_NS (Unix ns), our side on a fresh store (a memstore, or Redis
// keys under PREFIX when backend is a Redis address), and answers "done"
// and our side's report in JSON (empty for the others).
func learnChild(backend string, in io.Reader, out io.Writer) error {
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var stop int64
		if len(f) != 5 || f[0] != "run" {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		if _, err := fmt.Sscan(f[2], &stop); err != nil {
			return fmt.Errorf("bad command %q: %v", sc.Text(), err)
		}
		ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, stop))
		var (
			rep learnOursReport
			err error
		)
		switch url := f[4]; f[1] {
		case "ours":
			rep, err = learnOursOn(ctx, backend, f[3], url)
		case "aws":
			learnAWS(ctx, url)
		case "fixed":
			learnFixed(ctx, url, float64(learnSchedule[0].Rate))
		default:
			err = fmt.Errorf("unknown contender %q", f[1])
		}
		cancel()
		if err != nil {
			return err
		}
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "done %s\n", b)
	}
	return sc.Err()
}

// learnOursOn runs our side on a fresh store: a memstore, or a redisstore
// on the Redis at backend with its keys under prefix. One admission of a
// key of its own first loads the Redis script and dials, so that the run
// does not start cold.
func learnOursOn(ctx context.Context, backend, prefix, url string) (learnOursReport, error) {
	var store driver.Backend
	if backend == "memstore" {
		s, err := memstore.New(memstore.Options{})
		if err != nil {
			return learnOursReport{}, err
		}
		defer s.Close()
		store = s
	} else {
		client := newRedisClient(backend)
		defer client.Close()
		s, err := redisstore.New(client, redisstore.Options{Prefix: prefix})
		if err != nil {
			return learnOursReport{}, err
		}
		defer s.Close()
		store = s
	}
	lim, err := bucket.NewLimiter(store, learnLimit)
	if err != nil {
		return learnOursReport{}, err
	}
	if _, err := lim.Allow(ctx, "warm-up"); err != nil {
		return learnOursReport{}, err
	}
	return learnOurs(ctx, lim, url)
}
