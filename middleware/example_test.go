package middleware_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/middleware"
)

// A chain around an HTTP call: the API answers the first request with 429
// and Retry-After: 1, the second with 200. FromResponse turns the 429 into
// a retry-after error, Retry waits the second the server asked for, and
// Logging (inside Retry) writes one record per attempt.
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
	keyed, err := middleware.Keyed[item, string](func(it item) string { return it.tenant })
	if err != nil {
		panic(err)
	}
	retry, err := middleware.Retry[item, string](middleware.WithMaxAttempts(4),
		middleware.WithOnRetry(func(ctx context.Context, err error, wait time.Duration) {
			fmt.Printf("retrying in %v\n", wait)
		}))
	if err != nil {
		panic(err)
	}
	logging, err := middleware.Logging[item, string](logger)
	if err != nil {
		panic(err)
	}
	timeout, err := middleware.Timeout[item, string](5 * time.Second)
	if err != nil {
		panic(err)
	}

	h := middleware.Chain(keyed, retry, logging, timeout)(fetch)
	body, err := h(context.Background(), item{tenant: "tenant-1", id: "42"})
	fmt.Println(body, err)
	// Output:
	// level=ERROR msg=job key=tenant-1 attempt=1 outcome=error error="middleware: HTTP 429 Too Many Requests (retry after 1s)"
	// retrying in 1s
	// level=INFO msg=job key=tenant-1 attempt=2 outcome=ok
	// item 42 <nil>
}

// Chain's first middleware is the outermost.
func ExampleChain() {
	trace := func(name string) middleware.Middleware[string, string] {
		return func(next middleware.Handler[string, string]) middleware.Handler[string, string] {
			return func(ctx context.Context, job string) (string, error) {
				fmt.Println("enter", name)
				defer fmt.Println("leave", name)
				return next(ctx, job)
			}
		}
	}
	h := middleware.Chain(trace("m1"), trace("m2"))(func(ctx context.Context, job string) (string, error) {
		fmt.Println("handle", job)
		return job, nil
	})
	h(context.Background(), "job")
	// Output:
	// enter m1
	// enter m2
	// handle job
	// leave m2
	// leave m1
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
// call waits for its key's bucket.
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
	rl, err := middleware.RateLimit[call, string](lim, func(c call) string { return c.account })
	if err != nil {
		panic(err)
	}
	get := rl(func(ctx context.Context, c call) (string, error) {
		return "GET " + c.path + " for " + c.account, nil
	})
	for _, c := range []call{{"acme", "/users"}, {"acme", "/orders"}, {"globex", "/users"}} {
		out, err := get(context.Background(), c)
		fmt.Println(out, err)
	}
	// Output:
	// GET /users for acme <nil>
	// GET /orders for acme <nil>
	// GET /users for globex <nil>
}
