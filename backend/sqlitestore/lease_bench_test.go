//go:build unix

package sqlitestore_test

import (
	"context"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// BenchmarkLeases compares admissions of a capped limit with uncapped
// ones, on one key and over 1,000, from one goroutine and from 8. Each key
// has 2 other leases held throughout, under a cap of 10. "capped" asks
// again with a lease it holds (renewed by each admission): the cost of a
// capped admission. "capped+release" takes a new lease and releases it:
// the cost of a leased job, two transactions; admissions/s counts the
// jobs. cpu-µs/op is the process's CPU time per operation, which other
// programs on the machine sway less than the rate.
func BenchmarkLeases(b *testing.B) {
	ctx := context.Background()
	capped := unbounded.WithInflight(10)
	for _, bc := range []struct {
		keys, goroutines int
	}{{1, 1}, {1000, 1}, {1, 8}} {
		keys := make([]string, bc.keys)
		for i := range keys {
			keys[i] = "tenant-" + strconv.Itoa(i)
		}
		for _, mode := range []string{"uncapped", "capped", "capped+release"} {
			name := "keys=" + strconv.Itoa(bc.keys) + "/goroutines=" + strconv.Itoa(bc.goroutines) + "/" + mode
			b.Run(name, func(b *testing.B) {
				s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
				for _, key := range keys {
					for _, id := range []driver.LeaseID{"other-1", "other-2"} {
						if d, err := s.Admit(ctx, leaseReq(key, capped, id, time.Hour)); !d.Allowed || err != nil {
							b.Fatalf("Admit = %v, %v", d.Allowed, err)
						}
					}
				}
				ids := driver.NewLeaseIDs()
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := cpuTime()
				var (
					next atomic.Int64
					wg   sync.WaitGroup
				)
				for range bc.goroutines {
					wg.Go(func() {
						own := ids.Next()
						for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
							key := keys[i*7%int64(len(keys))]
							var req driver.Request
							switch mode {
							case "uncapped":
								req = leaseReq(key, unbounded, "", 0)
							case "capped":
								req = leaseReq(key, capped, own, 0)
							default:
								req = leaseReq(key, capped, ids.Next(), 0)
							}
							d, err := s.Admit(ctx, req)
							if err == nil && mode == "capped+release" {
								err = s.Release(ctx, []driver.LeaseRef{{Key: key, ID: req.Lease}})
							}
							if !d.Allowed || err != nil {
								b.Errorf("Admit = %v, %v", d.Allowed, err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(cpuTime()-cpu0)/1e3/float64(b.N), "cpu-µs/op")
				reportRate(b, b.N)
			})
		}
	}
}
