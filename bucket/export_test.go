package bucket

import "github.com/leakybucket/leakybucket/bucket/driver"

// LeaseRefOf returns the lease a Lease holds, for tests that take it
// away behind the Lease's back.
func LeaseRefOf(l *Lease) driver.LeaseRef { return l.ref }
