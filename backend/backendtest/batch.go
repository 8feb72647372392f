package backendtest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// testBatch: a BatchBackend decides a batch as sequential Admit calls
// would, in order, each admission with its own error.
func (s *suite) testBatch(t *testing.T) {
	b := s.cfg.New(t)
	bb, ok := b.(driver.BatchBackend)
	if !ok {
		t.Skip("backend does not implement driver.BatchBackend")
	}
	key, other := s.key(t, "k"), s.key(t, "other")
	lim := bucket.PerHour(1).WithBurst(5)
	batch := make([]driver.Admission, 12)
	for i := range batch {
		batch[i].Request = req(key, lim, 1, 0)
	}
	batch[3].Request = req("", lim, 1, 0)
	batch[7].Request = req(other, lim, 1, 0)
	bb.AdmitBatch(context.Background(), batch)
	var allowed []int
	for i, a := range batch {
		if i == 3 {
			assert.ErrorIs(t, a.Err, bucket.ErrEmptyKey, "batch[3], with an empty key")
			continue
		}
		if assert.NoError(t, a.Err, "batch[%d]: %s", i, call(a.Request)) && a.Decision.Allowed {
			checkDecision(t, a.Request, a.Decision)
			allowed = append(allowed, i)
		}
	}
	assert.Equal(t, []int{0, 1, 2, 4, 5, 7}, allowed, "admitted in the batch, in order, as sequential Admit calls would")
}
