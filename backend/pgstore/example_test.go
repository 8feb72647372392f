package pgstore_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
)

// Processes on many hosts share a tenant's limit of 5 requests per second
// and 1,000 per hour through the PostgreSQL they already run (behind
// PgBouncer in transaction mode too).
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/app?connect_timeout=2")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store, err := pgstore.New(pool, pgstore.Options{
		FailurePolicy: pgstore.FailLocal, // while the database is down, each process limits on its own
		Timeout:       time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close() // before the pool
	limiter, err := bucket.NewLimiter(store, bucket.PerSecond(5).WithQuota(1000, time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	for i := range 3 {
		if err := limiter.Wait(ctx, "tenant-42"); err != nil {
			log.Fatal(err)
		}
		fmt.Println("request", i)
	}
}
