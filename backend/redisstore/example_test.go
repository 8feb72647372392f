package redisstore_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/redis/go-redis/v9"
)

// Processes on many hosts share a tenant's limit of 5 requests per second
// and 1,000 per hour through one Redis.
func Example() {
	rdb := redis.NewClient(&redis.Options{
		Addr:          "127.0.0.1:6379",
		DialTimeout:   500 * time.Millisecond,
		ReadTimeout:   500 * time.Millisecond,
		DialerRetries: 1, // fail fast: the failure policy decides what then
		MaxRetries:    -1,
	})
	defer rdb.Close()
	store, err := redisstore.New(rdb, redisstore.Options{FailurePolicy: redisstore.FailLocal})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	limiter, err := bucket.NewLimiter(store, bucket.PerSecond(5).WithQuota(1000, time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for i := range 3 {
		if err := limiter.Wait(ctx, "tenant-42"); err != nil {
			log.Fatal(err)
		}
		fmt.Println("request", i)
	}
}
