package jobinfo_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/leakybucket/leakybucket/jobinfo"
)

func TestNewContext(t *testing.T) {
	info, ok := jobinfo.FromContext(context.Background())
	assert.False(t, ok, "FromContext(Background) = %+v, true", info)

	want := jobinfo.Info{Key: "tenant-1", Attempt: 3}
	ctx := jobinfo.NewContext(context.Background(), want)
	got, ok := jobinfo.FromContext(ctx)
	assert.True(t, ok)
	assert.Equal(t, want, got)

	// A later NewContext hides the earlier one, and leaves it as it was.
	inner := jobinfo.NewContext(ctx, jobinfo.Info{Key: "tenant-1", Attempt: 4})
	got, _ = jobinfo.FromContext(inner)
	assert.Equal(t, 4, got.Attempt)
	got, _ = jobinfo.FromContext(ctx)
	assert.Equal(t, 3, got.Attempt)
}

// jobContext answers ContextKey itself, as a dispatcher's job contexts do.
type jobContext struct {
	context.Context
	info jobinfo.Info
}

func (c *jobContext) Value(key any) any {
	if _, ok := key.(jobinfo.ContextKey); ok {
		return &c.info
	}
	return c.Context.Value(key)
}

// A context that answers ContextKey is read like one made by NewContext,
// through contexts derived from it, and what FromContext returns is a copy.
func TestContextKeyAnsweredByAContext(t *testing.T) {
	c := &jobContext{Context: context.Background(), info: jobinfo.Info{Key: "k", Attempt: 1}}
	derived, cancel := context.WithCancel(c)
	defer cancel()
	got, ok := jobinfo.FromContext(derived)
	assert.True(t, ok)
	assert.Equal(t, jobinfo.Info{Key: "k", Attempt: 1}, got)
	got.Attempt = 9
	again, _ := jobinfo.FromContext(derived)
	assert.Equal(t, 1, again.Attempt, "FromContext must return a copy")
}
