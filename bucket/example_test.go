package bucket_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
)

// Wait before each call: at most 50 calls a second to the API, whatever
// the caller's pace.
func ExampleLimiter_Wait() {
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(50))
	if err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	for i := range 3 {
		if err := lim.Wait(ctx, "api.example.com"); err != nil {
			log.Fatal(err)
		}
		fmt.Println("call", i+1) // the rate-limited call goes here
	}
	// Output:
	// call 1
	// call 2
	// call 3
}

// Wrap a function so that every call waits for the limiter first: a
// decorator that callers use like the function itself.
func ExampleLimiter_Wait_wrap() {
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(100).WithBurst(5))
	if err != nil {
		log.Fatal(err)
	}

	fetch := func(ctx context.Context, url string) (string, error) {
		return "body of " + url, nil
	}
	limited := func(ctx context.Context, url string) (string, error) {
		if err := lim.Wait(ctx, "fetch"); err != nil {
			return "", err
		}
		return fetch(ctx, url)
	}

	for _, url := range []string{"/a", "/b", "/c"} {
		body, err := limited(context.Background(), url)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(body)
	}
	// Output:
	// body of /a
	// body of /b
	// body of /c
}

// Try without waiting: a burst of 3, then nothing until the bucket drains.
func ExampleLimiter_Allow() {
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerHour(60).WithBurst(3))
	if err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	for range 4 {
		ok, err := lim.Allow(ctx, "user:42")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ok)
	}
	// Each key has its own bucket.
	ok, _ := lim.Allow(ctx, "user:43")
	fmt.Println("another key:", ok)
	// Output:
	// true
	// true
	// true
	// false
	// another key: true
}

// Book a slot ahead, then give it back when the work will not happen.
func ExampleLimiter_Reserve() {
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerMinute(1))
	if err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	first, _ := lim.Reserve(ctx, "job", 1, 0)
	fmt.Println(first.OK, first.Delay)

	// The next slot is a minute away: book it if that is soon enough.
	second, _ := lim.Reserve(ctx, "job", 1, 2*time.Minute)
	fmt.Println(second.OK, second.Delay.Round(time.Second))

	// Plans change: give the slot back, and the next caller gets it.
	if err := second.Cancel(ctx); err != nil {
		log.Fatal(err)
	}
	third, _ := lim.Reserve(ctx, "job", 1, 2*time.Minute)
	fmt.Println(third.OK, third.Delay.Round(time.Second))

	// Not willing to wait: refused, with how long it would take.
	fourth, _ := lim.Reserve(ctx, "job", 1, 0)
	fmt.Println(fourth.OK, fourth.Delay.Round(time.Second))
	// Output:
	// true 0s
	// true 1m0s
	// true 1m0s
	// false 2m0s
}

// Limits come from flags and configuration files in their textual form.
func ExampleParse() {
	lim, err := bucket.Parse("5/s burst=10 quota=1000/1h quota=50000/1d")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(lim.Rate, lim.Period, lim.Burst)
	for _, q := range lim.Quotas {
		fmt.Println(q.Max, q.Window)
	}
	fmt.Println(lim)

	_, err = bucket.Parse("5/s burst=0")
	fmt.Println(errors.Is(err, bucket.ErrInvalidLimit))
	fmt.Println(err)
	// Output:
	// 5 1s 10
	// 1000 1h0m0s
	// 50000 24h0m0s
	// 5/s burst=10 quota=1000/h quota=50000/d
	// true
	// bucket: invalid limit: Burst must be at least 1, got 0
}

// Build a limit from the constructors.
func ExampleLimit_WithQuota() {
	lim := bucket.PerSecond(10).WithBurst(20).WithQuota(10_000, 24*time.Hour)
	fmt.Println(lim)
	fmt.Println(lim.Validate())
	// Output:
	// 10/s burst=20 quota=10000/d
	// <nil>
}
