package memstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{
		New: func(t *testing.T) driver.Backend {
			s, err := memstore.New(memstore.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			return s
		},
		Forgotten: func(t *testing.T, b driver.Backend, key string) bool {
			s := b.(*memstore.Store)
			s.Sweep()
			return !s.Has(key)
		},
	})
}
