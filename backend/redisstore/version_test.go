package redisstore_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEarlierVersionShares: processes running this version and earlier
// ones (testdata/gcra-before-seen.lua, whose states carry no Seen;
// testdata/gcra-before-learn.lua, which knows no learned records) share
// keys during an upgrade: each reads the states the other writes, so that
// a key's rate and quotas hold across both.
func TestEarlierVersionShares(t *testing.T) {
	for _, file := range []string{"gcra-before-seen.lua", "gcra-before-learn.lua"} {
		earlier, err := os.ReadFile("testdata/" + file)
		require.NoError(t, err)
		s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
		ctx := context.Background()
		for _, tc := range []struct {
			name string
			lim  bucket.Limit
			want int
		}{
			{"rate", bucket.PerHour(1).WithBurst(5), 5},
			{"quotas", bucket.PerSecond(1000).WithBurst(100).WithQuota(7, time.Hour).WithQuota(9, 24*time.Hour), 7},
		} {
			req := driver.Request{Key: tc.name, Limit: backendtest.Limit(tc.lim), Cost: 1}
			allowed := 0
			for i := range 2 * tc.want {
				var d driver.Decision
				if i%2 == 0 {
					d, err = redisstore.AdmitWith(ctx, s, string(earlier), req)
				} else {
					d, err = s.Admit(ctx, req)
				}
				require.NoError(t, err, "%s, %s: admission %d", file, tc.name, i)
				if d.Allowed {
					allowed++
				}
			}
			assert.Equal(t, tc.want, allowed, "%s, %s: admitted alternating between the versions", file, tc.name)
		}
	}
}
