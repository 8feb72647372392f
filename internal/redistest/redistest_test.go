package redistest_test

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(redistest.Exit))
}

func TestAddr(t *testing.T) {
	addr := redistest.Addr(t)
	got, err := redistest.Do(addr, "PING")
	require.NoError(t, err)
	require.Equal(t, "PONG", got)
	assert.Equal(t, addr, redistest.Addr(t), "a second Addr returns the shared server")
}

func TestKillRestart(t *testing.T) {
	s := redistest.Start(t)
	_, err := redistest.Do(s.Addr(), "SET", "k", "v")
	require.NoError(t, err)
	require.NoError(t, s.Kill())
	_, err = redistest.Do(s.Addr(), "PING")
	require.Error(t, err, "PING after Kill")
	require.NoError(t, s.Restart())
	assert.Error(t, s.Restart(), "Restart of a running server")
	got, err := redistest.Do(s.Addr(), "EXISTS", "k")
	require.NoError(t, err)
	assert.Equal(t, "0", got, "EXISTS k after a restart (no persistence)")
}

func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	c := redistest.StartCluster(t, 3)
	require.Len(t, c.Addrs(), 3)
	for _, addr := range c.Addrs() {
		info, err := redistest.Do(addr, "CLUSTER", "INFO")
		if assert.NoError(t, err, "CLUSTER INFO at %s", addr) {
			assert.Contains(t, info, "cluster_state:ok", "CLUSTER INFO at %s", addr)
		}
	}
}

// TestNoRedis runs TestAddr in a child process that can find no Redis: it
// must skip, or fail when LEAKYBUCKET_REQUIRE_REDIS=1.
func TestNoRedis(t *testing.T) {
	if os.Getenv("REDISTEST_CHILD") == "1" {
		t.Skip("child")
	}
	for _, required := range []string{"", "1"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAddr$", "-test.v")
		cmd.Env = append(os.Environ(), "PATH=", redistest.EnvAddr+"=", redistest.EnvRequire+"="+required, "REDISTEST_CHILD=1")
		out, err := cmd.CombinedOutput()
		if required == "" {
			assert.NoError(t, err, "without Redis:\n%s", out)
			assert.Contains(t, string(out), "--- SKIP: TestAddr", "without Redis, TestAddr must skip")
		} else {
			assert.Error(t, err, "without Redis and %s=1:\n%s", redistest.EnvRequire, out)
			assert.Contains(t, string(out), "--- FAIL: TestAddr", "without Redis and %s=1, TestAddr must fail", redistest.EnvRequire)
		}
	}
}

// TestClusterFailover starts a cluster of 3 masters and 3 replicas, kills
// the master of a key, and finds the replica that took its slots serving
// the key.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t0 := time.Now()
	c := redistest.StartClusterWith(t, redistest.ClusterOptions{Replicas: 1, NodeTimeout: time.Second})
	t.Logf("started in %v", time.Since(t0))
	require.Len(t, c.Servers, 6)
	masters, err := c.Masters()
	require.NoError(t, err)
	require.Len(t, masters, 3)
	assert.ElementsMatch(t, c.Servers[:3], masters)
	m, err := c.MasterOf("some-key")
	require.NoError(t, err)
	require.NoError(t, m.Kill())
	t0 = time.Now()
	p, err := c.WaitPromoted(m, 20*time.Second)
	require.NoError(t, err)
	t.Logf("promoted %s in %v", p.Addr(), time.Since(t0))
	assert.NotEqual(t, m, p, "the promoted server")
	m2, err := c.MasterOf("some-key")
	require.NoError(t, err)
	assert.Equal(t, p, m2)
}
