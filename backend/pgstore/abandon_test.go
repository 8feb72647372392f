package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

// TestAbandonedAdmissionGivenBack: a caller whose context ends while its
// admission is in the database (held there by the schema's lock, which
// the test holds) gets the context's error; Admit returns it at once,
// AdmitBatch once its round trip ends. What the database admitted for
// the caller is given back, its quota unit too: a Store opened after
// the first is closed is admitted on a key of burst 1 and a quota of 1.
func TestAbandonedAdmissionGivenBack(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  pgstore.Options
		batch bool
	}{
		{"Admit", pgstore.Options{}, false},
		{"Admit unbatched", pgstore.Options{Conns: -1}, false},
		{"AdmitBatch", pgstore.Options{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			ctx := context.Background()
			tc.opts.Schema, tc.opts.SweepInterval = pgtest.Schema(t, p.Config().ConnString()), -1
			s := newStore(t, p, tc.opts)
			req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithQuota(1, 24*time.Hour)), Cost: 1}
			_, err := s.Admit(ctx, driver.Request{Key: "warm-up", Limit: req.Limit, Cost: 1})
			require.NoError(t, err, "Admit installing the schema")

			conn, err := p.Acquire(ctx)
			require.NoError(t, err)
			defer conn.Release()
			_, err = conn.Exec(ctx, "SELECT pg_advisory_lock($1)", pgstore.LockKey(s))
			require.NoError(t, err, "take the schema's lock")
			callCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				if tc.batch {
					b := []driver.Admission{{Request: req}}
					s.AdmitBatch(callCtx, b)
					done <- b[0].Err
					return
				}
				_, err := s.Admit(callCtx, req)
				done <- err
			}()
			for waiting := false; !waiting; {
				err := conn.QueryRow(ctx, `SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
					AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid`,
					pgstore.LockKey(s)).Scan(&waiting)
				require.NoError(t, err, "look for the admission waiting for the lock")
			}
			cancel()
			if !tc.batch {
				assert.ErrorIs(t, <-done, context.Canceled, "Admit whose ctx ended while the database held it")
			}
			_, err = conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", pgstore.LockKey(s))
			require.NoError(t, err, "release the schema's lock")
			if tc.batch {
				assert.ErrorIs(t, <-done, context.Canceled, "AdmitBatch whose ctx ended while the database held it")
			}
			s.Close() // waits for the round trip and its give-back

			again := newStore(t, p, pgstore.Options{Schema: tc.opts.Schema, SweepInterval: -1})
			d, err := again.Admit(ctx, req)
			require.NoError(t, err)
			assert.True(t, d.Allowed, "Admit after the abandoned admission: its slot and quota unit were given back")
		})
	}
}
