package driver

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// plainValid never vouches for a request that check (Validate in full)
// rejects, over random requests with edge values in every field.
func TestPlainValidImpliesValid(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2))
	pick := func(vs ...int64) int64 { return vs[rng.IntN(len(vs))] }
	edges := func() int64 {
		return pick(-1, 0, 1, 2, 7, 1000, 1e9, math.MaxInt64/2, math.MaxInt64, int64(MaxDuration), int64(MaxDuration)+1, rng.Int64())
	}
	var vouched int
	for range 200_000 {
		r := Request{Key: []string{"", "k"}[rng.IntN(2)], Cost: edges(), Limit: Limit{Rate: edges(), Period: time.Duration(edges()), Burst: edges()}}
		if rng.IntN(8) == 0 {
			r.Limit.Quotas = []Quota{{Max: edges(), Window: time.Duration(edges())}}
		}
		if r.plainValid() {
			vouched++
			require.NoError(t, r.check(), "plainValid(%+v), but check", r)
		}
	}
	require.NotZero(t, vouched, "plainValid vouched for no request: the test exercised nothing")
}
