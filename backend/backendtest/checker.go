package backendtest

import (
	"fmt"
	"math/bits"
	"slices"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
)

// A Start is one admitted unit of work as the rate-limited side sees it:
// the time it started, in nanoseconds of any one time base, and its cost.
type Start struct {
	At   int64
	Cost int64
}

// Check returns nil if starts conform to lim, or an error describing the
// first violation found:
//
//   - rate: in every interval [a, b], the units started are at most
//     Burst + (b-a)/T, with T = Period/Rate exactly (no rounding);
//   - quotas: in every window [t, t+Window), at most Max units start.
//
// starts may be in any order; Check sorts a copy. It is exact (128-bit
// integer arithmetic) and runs in O(n log n + n·len(Quotas)).
func Check(lim bucket.Limit, starts []Start) error {
	if lim.IsUnlimited() || len(starts) == 0 {
		return nil
	}
	s := slices.Clone(starts)
	slices.SortFunc(s, func(a, b Start) int { return compare(a.At, b.At) })
	if err := checkRate(lim, s); err != nil {
		return err
	}
	for _, q := range lim.Quotas {
		if err := checkQuota(q, s); err != nil {
			return err
		}
	}
	return nil
}

// checkRate verifies Σ_{i..j} cost ≤ B + (a_j − a_i)·N/P for all i ≤ j. With
// S_j the running sum of costs, that is X_j − Y_i ≤ B·P where
// X_j = S_j·P − a_j·N and Y_i = S_{i−1}·P − a_i·N; scanning j while keeping
// the least Y_i makes it linear.
func checkRate(lim bucket.Limit, s []Start) error {
	p, n := uint64(lim.Period), uint64(lim.Rate)
	base := s[0].At // times relative to the first keep products non-negative
	bp := mul(uint64(lim.Burst), p)
	var sum uint64
	var minY int128
	minAt := 0
	for j, e := range s {
		at := uint64(e.At - base)
		y := mul(sum, p).sub(mul(at, n))
		if j == 0 || y.cmp(minY) < 0 {
			minY, minAt = y, j
		}
		sum += uint64(e.Cost)
		x := mul(sum, p).sub(mul(at, n))
		if x.sub(minY).cmp(bp) > 0 {
			units := int64(0)
			for _, f := range s[minAt : j+1] {
				units += f.Cost
			}
			d := time.Duration(e.At - s[minAt].At)
			return fmt.Errorf("rate %v violated: %d units started in an interval of %v (starts %d..%d), at most %d + %v/%v allowed",
				lim, units, d, minAt, j, lim.Burst, d, lim.Period/time.Duration(lim.Rate))
		}
	}
	return nil
}

func checkQuota(q bucket.Quota, s []Start) error {
	var used int64
	i := 0
	for j, e := range s {
		used += e.Cost
		for s[i].At <= e.At-int64(q.Window) {
			used -= s[i].Cost
			i++
		}
		if used > q.Max {
			return fmt.Errorf("quota %d/%v violated: %d units started in [%d, %d], a span of %v (starts %d..%d)",
				q.Max, q.Window, used, s[i].At, e.At, time.Duration(e.At-s[i].At), i, j)
		}
	}
	return nil
}

func compare(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// int128 is a two's complement 128-bit integer.
type int128 struct {
	hi int64
	lo uint64
}

func mul(a, b uint64) int128 {
	hi, lo := bits.Mul64(a, b)
	return int128{hi: int64(hi), lo: lo}
}

func (x int128) sub(y int128) int128 {
	lo, borrow := bits.Sub64(x.lo, y.lo, 0)
	return int128{hi: x.hi - y.hi - int64(borrow), lo: lo}
}

func (x int128) cmp(y int128) int {
	if x.hi != y.hi {
		return compare(x.hi, y.hi)
	}
	switch {
	case x.lo < y.lo:
		return -1
	case x.lo > y.lo:
		return 1
	}
	return 0
}
