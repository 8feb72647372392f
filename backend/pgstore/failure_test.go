package pgstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// TestFailedWriteAdmitsNothing: a trigger on the test's own table makes
// every write of the decide statement fail, as a full disk would (SQLSTATE
// 53100, which the Store counts as unavailable) or as an error about the
// statement does (P0001). Admit returns an error and no admission,
// Limiter.Allow answers false, for a key without a row (an insert) and a
// key with one (an update); once the trigger is dropped, the first key
// still has no row and the second's row is as it was: nothing was
// charged. SQLite's test of the same name is the model.
func TestFailedWriteAdmitsNothing(t *testing.T) {
	lim := bucket.PerSecond(10).WithBurst(5).WithQuota(100, time.Hour)
	for _, tc := range []struct {
		name, state string
		unavailable bool
	}{
		{"disk full", "53100", true},
		{"statement error", "P0001", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			ctx := context.Background()
			s := newStore(t, p, pgstore.Options{SweepInterval: -1, RetryInterval: -1})
			d, err := s.Admit(ctx, driver.Request{Key: "old", Limit: backendtest.Limit(lim), Cost: 1})
			require.NoError(t, err, "Admit(old) before the fault")
			require.True(t, d.Allowed, "Admit(old) before the fault")
			before := row(t, s, "old")
			require.NotEmpty(t, before, "the row of old before the fault")

			schema := strings.TrimSuffix(s.Table(), ".buckets")
			_, err = p.Exec(ctx, `CREATE FUNCTION `+schema+`.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN RAISE EXCEPTION 'write refused (simulated)' USING ERRCODE = '`+tc.state+`'; END $$`)
			require.NoError(t, err)
			_, err = p.Exec(ctx, `CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON `+s.Table()+`
				FOR EACH ROW EXECUTE FUNCTION `+schema+`.refuse()`)
			require.NoError(t, err)
			l, err := bucket.NewLimiter(s, lim)
			require.NoError(t, err)
			for _, key := range []string{"new", "old"} {
				d, err := s.Admit(ctx, driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1})
				require.Error(t, err, "Admit(%s) although its write failed", key)
				assert.Equal(t, tc.unavailable, errors.Is(err, pgstore.ErrUnavailable), "Admit(%s): %v matches ErrUnavailable", key, err)
				assert.False(t, d.Allowed, "Admit(%s) whose write was rolled back", key)
				assert.Zero(t, d.Booking, "Admit(%s) whose write was rolled back", key)
				ok, err := l.Allow(ctx, key)
				assert.Error(t, err, "Limiter.Allow(%s)", key)
				assert.False(t, ok, "Limiter.Allow(%s)", key)
			}

			_, err = p.Exec(ctx, `DROP TRIGGER refuse ON `+s.Table())
			require.NoError(t, err)
			assert.Empty(t, row(t, s, "new"), "the row of new after failed writes")
			assert.Equal(t, before, row(t, s, "old"), "the row of old after failed writes")
		})
	}
}

// row returns key's row in s's table as text, "" if it has none.
func row(t *testing.T, s *pgstore.Store, key string) string {
	t.Helper()
	var r string
	err := s.Pool().QueryRow(context.Background(), "SELECT b::text FROM "+s.Table()+" b WHERE key = $1", []byte(key)).Scan(&r)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	require.NoError(t, err, "the row of %s", key)
	return r
}
