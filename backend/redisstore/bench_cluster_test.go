package redisstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// BenchmarkAdmitCluster measures Store.Admit on a Redis Cluster of 3
// masters with 1 and 16 concurrent callers on 1 and 1,000 keys, and
// AdmitBatch of 64 admissions over 1,000 keys, every master healthy:
// what a Cluster's admissions cost, the look for masters known down
// included.
func BenchmarkAdmitCluster(b *testing.B) {
	addrs := redistest.ClusterAddrs(b)
	newCluster := func(b *testing.B) *redis.ClusterClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		b.Cleanup(func() { c.Close() })
		// The slot map loaded and every master dialled before the clock.
		err := c.ForEachShard(context.Background(), func(ctx context.Context, m *redis.Client) error {
			return m.Ping(ctx).Err()
		})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	for _, callers := range []int{1, 16} {
		for _, nkeys := range []int{1, 1000} {
			b.Run(fmt.Sprintf("admit/callers=%d/keys=%d", callers, nkeys), func(b *testing.B) {
				benchAdmit(b, newStore(b, newCluster(b), redisstore.Options{}), callers, benchKeys(nkeys), uncapped)
			})
		}
	}
	b.Run("batch=64/callers=1/keys=1000", func(b *testing.B) {
		benchBatch(b, newStore(b, newCluster(b), redisstore.Options{}), 1, benchKeys(1000))
	})
}
