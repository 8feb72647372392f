package backendtest

import (
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Limit returns l as a backend receives it, for tests that build requests
// with package bucket's constructors:
//
//	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(10)), Cost: 1}
//
// It panics on bucket.Unlimited, which no backend receives.
func Limit(l bucket.Limit) driver.Limit {
	if l.IsUnlimited() {
		panic("backendtest: Limit(bucket.Unlimited): no backend receives an unlimited limit")
	}
	return driver.Limit{Rate: l.Rate, Period: l.Period, Burst: l.Burst, Quotas: l.Quotas, Inflight: l.Inflight,
		FloorRate: l.FloorRate, FloorPeriod: l.FloorPeriod}
}
