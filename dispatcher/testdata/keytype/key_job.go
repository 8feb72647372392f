//go:build wrongjob

package keytype

import "github.com/leakybucket/leakybucket/dispatcher"

func newDispatcher() (*dispatcher.Dispatcher[job, int], error) {
	return dispatcher.NewWithCost(handle, func(j job) string { return j.tenant }, func(s string) int { return len(s) })
}
