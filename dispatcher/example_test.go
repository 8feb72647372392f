package dispatcher_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

type Sync struct {
	Tenant string
	Item   int
}

// fetch stands in for a call to a rate-limited API.
func fetch(_ context.Context, s Sync) (string, error) {
	return fmt.Sprintf("%s/item-%d", s.Tenant, s.Item), nil
}

// The README's quick start: jobs keyed by tenant, each tenant held to 5
// requests a second (burst 2) and 1,000 an hour.
func Example() {
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	limit, err := bucket.Parse("5/s burst=2 quota=1000/1h")
	if err != nil {
		log.Fatal(err)
	}
	limiter, err := bucket.NewLimiter(store, limit)
	if err != nil {
		log.Fatal(err)
	}
	d, err := dispatcher.New(fetch, func(s Sync) string { return s.Tenant },
		dispatcher.WithWorkers(8),
		dispatcher.WithLimiter(limiter))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Shutdown(context.Background())

	ctx := context.Background()
	results := d.DoAll(ctx, []Sync{{"acme", 1}, {"acme", 2}, {"globex", 1}})
	for _, r := range results {
		fmt.Println(r.Value, r.Err)
	}
	// Output:
	// acme/item-1 <nil>
	// acme/item-2 <nil>
	// globex/item-1 <nil>
}

// Stream pulls jobs from a channel the caller owns and delivers outcomes as
// jobs finish; closing the input drains the dispatcher and closes the
// output.
func ExampleDispatcher_Stream() {
	d, err := dispatcher.New(func(_ context.Context, s string) (string, error) {
		return strings.ToUpper(s), nil
	}, nil, dispatcher.WithWorkers(1))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Shutdown(context.Background())

	in := make(chan string)
	go func() {
		defer close(in)
		for _, s := range []string{"a", "b", "c"} {
			in <- s
		}
	}()
	for o := range d.Stream(context.Background(), in) {
		fmt.Println(o.Job, "→", o.Value)
	}
	// Output:
	// a → A
	// b → B
	// c → C
}
