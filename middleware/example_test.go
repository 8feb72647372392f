package middleware_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/middleware"
)

// Logging, Retry and Timeout around an HTTP call, keyed by tenant: the API
// answers the first request with 429 and Retry-After: 1, the second with
// 200. FromResponse turns the 429 into a retry-after error, Retry waits the
// second the server asked for, and Logging (outside Retry) writes one
// record for the job, naming the attempt that ended it.
func Example() {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
		fmt.Fprintf(w, "item %s", r.URL.Query().Get("id"))
	}))
	defer srv.Close()
	client := srv.Client()

	type item struct{ tenant, id string }
	fetch := func(ctx context.Context, it item) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/items?id="+it.id, nil)
		if err != nil {
			return "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if err := middleware.FromResponse(resp); err != nil {
			return "", err
		}
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}

	// A log without times and durations, so that the output is the same on
	// every run.
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "duration" {
				return slog.Attr{}
			}
			return a
		},
	}))
	printWait := func(ctx context.Context, err error, wait time.Duration) { fmt.Println("retrying in", wait) }
	tenant := func(it item) string { return it.tenant }

	h := middleware.Keyed(middleware.Wrap(fetch,
		middleware.Logging(logger), // one record per job: key, attempt, duration, outcome
		middleware.Retry(middleware.WithMaxAttempts(4), middleware.WithOnRetry(printWait)),
		middleware.Timeout(5*time.Second), // per attempt
	), tenant)
	body, err := h(context.Background(), item{tenant: "tenant-1", id: "42"})
	fmt.Println(body, err)
	// Output:
	// retrying in 1s
	// level=INFO msg=job key=tenant-1 attempt=2 outcome=ok
	// item 42 <nil>
}

// Chain's first middleware is the outermost. A Middleware sees the call's
// context and error, not the job or the result, so one chain serves
// handlers of every type.
func ExampleChain() {
	trace := func(name string) middleware.Middleware {
		return func(next middleware.Next) middleware.Next {
			return func(ctx context.Context) error {
				fmt.Println("enter", name)
				defer fmt.Println("leave", name)
				return next(ctx)
			}
		}
	}
	chain := middleware.Chain(trace("m1"), trace("m2"))

	upper := middleware.Wrap(func(ctx context.Context, s string) (string, error) {
		fmt.Println("handle", s)
		return strings.ToUpper(s), nil
	}, chain)
	double := middleware.Wrap(func(ctx context.Context, n int) (int, error) {
		fmt.Println("handle", n)
		return 2 * n, nil
	}, chain)
	fmt.Println(upper(context.Background(), "job"))
	fmt.Println(double(context.Background(), 21))
	// Output:
	// enter m1
	// enter m2
	// handle job
	// leave m2
	// leave m1
	// JOB <nil>
	// enter m1
	// enter m2
	// handle 21
	// leave m2
	// leave m1
	// 42 <nil>
}

func ExampleParseRetryAfter() {
	now := time.Date(2015, 10, 21, 7, 0, 0, 0, time.UTC)
	for _, h := range []http.Header{
		{"Retry-After": {"120"}},
		{"Retry-After": {"Wed, 21 Oct 2015 07:28:00 GMT"}},
		{"X-Ratelimit-Reset": {"1445410830"}}, // a Unix time, 30s after now
		{"Ratelimit": {`"default";r=0;t=45`}},
		{"Retry-After": {"soon"}},
	} {
		d, ok := middleware.ParseRetryAfter(h, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 2m0s true
	// 28m0s true
	// 30s true
	// 45s true
	// 0s false
}

// RateLimit is the decorator for code that does not use a dispatcher: each
// call waits for its key's bucket, the key given by Keyed, outermost.
func ExampleRateLimit() {
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		panic(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(100).WithBurst(3))
	if err != nil {
		panic(err)
	}
	type call struct{ account, path string }
	get := middleware.Keyed(middleware.Wrap(func(ctx context.Context, c call) (string, error) {
		return "GET " + c.path + " for " + c.account, nil
	}, middleware.RateLimit(lim)), func(c call) string { return c.account })
	for _, c := range []call{{"acme", "/users"}, {"acme", "/orders"}, {"globex", "/users"}} {
		out, err := get(context.Background(), c)
		fmt.Println(out, err)
	}
	// Output:
	// GET /users for acme <nil>
	// GET /orders for acme <nil>
	// GET /users for globex <nil>
}
