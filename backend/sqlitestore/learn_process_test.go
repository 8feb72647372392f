package sqlitestore_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/proctest"
)

// learnEnv carries a learnOrder to the child of TestLearnProcesses.
const learnEnv = "SQLITESTORE_TEST_LEARN"

// A learnOrder tells the child of TestLearnProcesses what to learn.
type learnOrder struct {
	Path, Key string
	Gen       int64 // the throttled admission's
}

// learnLimit is the learned limit of TestLearnProcesses.
var learnLimit = backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))

// TestLearnProcesses: a throttle one process learns slows another's
// admissions of the key, and a throttle of the same overload seen by the
// other drops nothing again.
func TestLearnProcesses(t *testing.T) {
	ctx := context.Background()
	if env := os.Getenv(learnEnv); env != "" {
		var o learnOrder
		require.NoError(t, json.Unmarshal([]byte(env), &o))
		iv, err := open(t, o.Path, sqlitestore.Options{}).Learn(ctx, o.Key, learnLimit, driver.Feedback{Throttled: true, Gen: o.Gen})
		require.NoError(t, err)
		fmt.Printf("learned %d\n", iv)
		return
	}
	path := filepath.Join(t.TempDir(), "learn.db")
	s := open(t, path, sqlitestore.Options{})
	first, err := s.Admit(ctx, driver.Request{Key: "k", Limit: learnLimit, Cost: 1})
	require.NoError(t, err)
	require.True(t, first.Allowed)
	require.Equal(t, 10*time.Millisecond, first.Interval, "the limit's own interval")

	order, err := json.Marshal(learnOrder{Path: path, Key: "k", Gen: first.Booking.Gen})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLearnProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), learnEnv+"="+string(order))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the child:\n%s", out)
	var dropped time.Duration
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		fmt.Sscanf(sc.Text(), "learned %d", &dropped)
	}
	require.Greater(t, dropped, first.Interval, "the child's throttle dropped nothing:\n%s", out)

	d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: learnLimit, Cost: 1, MaxWait: time.Second})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	assert.Greater(t, d.Interval, first.Interval, "the interval after the child's throttle")
	assert.LessOrEqual(t, d.Interval, dropped, "the interval after the child's throttle, climbing back")
	again, err := s.Learn(ctx, "k", learnLimit, driver.Feedback{Throttled: true, Gen: first.Booking.Gen})
	require.NoError(t, err)
	assert.LessOrEqual(t, again, dropped, "a throttle of the same admission dropped the rate again")
}

// learnsEnv carries the database file's path to the children of
// TestLearnsAcrossProcesses.
const learnsEnv = "SQLITESTORE_TEST_LEARNS"

// TestLearnsAcrossProcesses runs internal/proctest's learned-limit test on
// one file: 3 processes admit on one key, one of them reports a 429, and
// the merged starts after it must keep to the dropped rate.
func TestLearnsAcrossProcesses(t *testing.T) {
	if path := os.Getenv(learnsEnv); path != "" {
		proctest.LearnChild(t, open(t, path, sqlitestore.Options{}))
		return
	}
	path := filepath.Join(t.TempDir(), "learns.db")
	open(t, path, sqlitestore.Options{}).Close() // create the schema once
	proctest.Learns(t, proctest.Config{
		Env:    learnsEnv,
		Orders: path,
		Now:    func() (time.Time, error) { return time.Now(), nil },
	})
}
