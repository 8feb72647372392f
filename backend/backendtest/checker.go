package backendtest

import (
	"fmt"
	"math/big"
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
// the least Y_i makes it linear. Sums of huge costs times long periods
// pass 128 bits, so the arithmetic is math/big's, on reused values.
func checkRate(lim bucket.Limit, s []Start) error {
	p, n := big.NewInt(int64(lim.Period)), big.NewInt(lim.Rate)
	base := big.NewInt(s[0].At) // times relative to the first keep products small
	bp := new(big.Int).Mul(big.NewInt(lim.Burst), p)
	var (
		sum, at, x, y, minY, tmp big.Int
		minAt                    int
	)
	for j, e := range s {
		at.Sub(at.SetInt64(e.At), base)
		y.Mul(&sum, p)
		y.Sub(&y, tmp.Mul(&at, n))
		if j == 0 || y.Cmp(&minY) < 0 {
			minY.Set(&y)
			minAt = j
		}
		sum.Add(&sum, tmp.SetInt64(e.Cost))
		x.Mul(&sum, p)
		x.Sub(&x, tmp.Mul(&at, n))
		if x.Sub(&x, &minY).Cmp(bp) > 0 {
			units := new(big.Int)
			for _, f := range s[minAt : j+1] {
				units.Add(units, tmp.SetInt64(f.Cost))
			}
			span := new(big.Int).Sub(big.NewInt(e.At), big.NewInt(s[minAt].At))
			return fmt.Errorf("rate %v violated: %v units started in an interval of %vns (starts %d..%d), at most %d + %vns×%d/%v allowed",
				lim, units, span, minAt, j, lim.Burst, span, lim.Rate, lim.Period)
		}
	}
	return nil
}

func checkQuota(q bucket.Quota, s []Start) error {
	var used int128 // a sum of int64 costs: 128 bits never overflow
	i := 0
	for j, e := range s {
		used = used.add(e.Cost)
		for s[i].At <= e.At-int64(q.Window) {
			used = used.add(-s[i].Cost)
			i++
		}
		if used.cmp(int128{lo: uint64(q.Max)}) > 0 {
			return fmt.Errorf("quota %d/%v violated: %s units started in [%d, %d], a span of %v (starts %d..%d)",
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

func (x int128) add(v int64) int128 {
	hi := int64(0)
	if v < 0 {
		hi = -1
	}
	lo, carry := bits.Add64(x.lo, uint64(v), 0)
	return int128{hi: x.hi + hi + int64(carry), lo: lo}
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

func (x int128) String() string {
	v := new(big.Int).SetInt64(x.hi)
	v.Lsh(v, 64)
	return v.Add(v, new(big.Int).SetUint64(x.lo)).String()
}
