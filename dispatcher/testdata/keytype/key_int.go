//go:build wrongkey

package keytype

import "github.com/leakybucket/leakybucket/dispatcher"

func newDispatcher() (*dispatcher.Dispatcher[job, int], error) {
	return dispatcher.New(handle, func(j job) int { return j.id })
}
