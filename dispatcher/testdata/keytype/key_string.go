//go:build !wrongkey && !wrongjob

package keytype

import "github.com/leakybucket/leakybucket/dispatcher"

func newDispatcher() (*dispatcher.Dispatcher[job, int], error) {
	return dispatcher.New(handle, func(j job) string { return j.tenant })
}
