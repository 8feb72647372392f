package pgstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

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

			lock := lockSchema(t, p, s)
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
			lock.await(1)
			cancel()
			if !tc.batch {
				assert.ErrorIs(t, <-done, context.Canceled, "Admit whose ctx ended while the database held it")
			}
			lock.release()
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

// A schemaLock is a Store's schema lock held by the test on a connection
// of its own, so that the Store's statements wait in the database.
type schemaLock struct {
	t    *testing.T
	conn *pgxpool.Conn
	s    *pgstore.Store
	held bool
}

// lockSchema takes s's schema lock, released at the latest at the end of
// t (before s is closed).
func lockSchema(t *testing.T, p *pgxpool.Pool, s *pgstore.Store) *schemaLock {
	t.Helper()
	conn, err := p.Acquire(context.Background())
	require.NoError(t, err)
	l := &schemaLock{t: t, conn: conn, s: s}
	t.Cleanup(func() {
		l.release()
		conn.Release()
	})
	_, err = conn.Exec(context.Background(), "SELECT pg_advisory_lock($1)", pgstore.LockKey(s))
	require.NoError(t, err, "take the schema's lock")
	l.held = true
	return l
}

// await returns once n statements wait for the lock.
func (l *schemaLock) await(n int) {
	l.t.Helper()
	for waiting := 0; waiting < n; {
		err := l.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid`,
			pgstore.LockKey(l.s)).Scan(&waiting)
		require.NoError(l.t, err, "look for statements waiting for the schema's lock")
	}
}

// release releases the lock if it is held.
func (l *schemaLock) release() {
	l.t.Helper()
	if l.held {
		_, err := l.conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", pgstore.LockKey(l.s))
		require.NoError(l.t, err, "release the schema's lock")
		l.held = false
	}
}

// TestCloseWaitsForCalls: Close, called while a call waits in the
// database for the schema's lock (which the test holds), returns only
// after the call is answered; it succeeds, and later calls get
// ErrClosed. An AdmitBatch (outside the batcher), a coalesced Admit and a
// coalesced Pause are checked. Close returning while the lock is still
// held fails the test; the lock is released once Close has had 200ms to
// do so, which bounds only how surely a Close that does not wait is
// caught, never whether a Close that waits passes.
func TestCloseWaitsForCalls(t *testing.T) {
	lim := backendtest.Limit(bucket.PerHour(1))
	req := driver.Request{Key: "k", Limit: lim, Cost: 1}
	for _, tc := range []struct {
		name  string
		call  func(*pgstore.Store) error
		pause bool
	}{
		{"AdmitBatch", func(s *pgstore.Store) error {
			b := []driver.Admission{{Request: req}}
			s.AdmitBatch(context.Background(), b)
			if b[0].Err == nil && !b[0].Decision.Allowed {
				return errors.New("AdmitBatch refused")
			}
			return b[0].Err
		}, false},
		{"Admit", func(s *pgstore.Store) error {
			d, err := s.Admit(context.Background(), req)
			if err == nil && !d.Allowed {
				return errors.New("Admit refused")
			}
			return err
		}, false},
		{"Pause", func(s *pgstore.Store) error { return s.Pause(context.Background(), req.Key, time.Hour) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			ctx := context.Background()
			s := newStore(t, p, pgstore.Options{SweepInterval: -1})
			_, err := s.Admit(ctx, driver.Request{Key: "warm-up", Limit: lim, Cost: 1})
			require.NoError(t, err, "Admit installing the schema")

			lock := lockSchema(t, p, s)
			done := make(chan error, 1)
			go func() { done <- tc.call(s) }()
			lock.await(1) // the call is in flight
			closed := make(chan struct{})
			go func() {
				s.Close()
				close(closed)
			}()
			select {
			case <-closed:
				t.Errorf("Close returned while %s waited in the database", tc.name)
			case <-time.After(200 * time.Millisecond):
			}
			_, err = s.Admit(ctx, req)
			assert.ErrorIs(t, err, bucket.ErrClosed, "Admit after Close")
			lock.release()
			<-closed
			assert.NoError(t, <-done, "%s in flight at Close", tc.name)
			if tc.pause {
				var n int
				err = p.QueryRow(ctx, "SELECT count(*) FROM "+s.Table()+" WHERE key = $1", []byte(req.Key)).Scan(&n)
				require.NoError(t, err)
				assert.Equal(t, 1, n, "rows of the key Pause in flight at Close paused")
			}
		})
	}
}
