package redistest_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/leakybucket/leakybucket/internal/redistest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(redistest.Exit))
}

func TestAddr(t *testing.T) {
	addr := redistest.Addr(t)
	if got, err := redistest.Do(addr, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING %s = %q, %v; want PONG", addr, got, err)
	}
	if again := redistest.Addr(t); again != addr {
		t.Errorf("second Addr = %s, want the shared %s", again, addr)
	}
}

func TestKillRestart(t *testing.T) {
	s := redistest.Start(t)
	if _, err := redistest.Do(s.Addr(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := redistest.Do(s.Addr(), "PING"); err == nil {
		t.Fatal("PING after Kill succeeded")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); err == nil {
		t.Error("Restart of a running server succeeded")
	}
	if got, err := redistest.Do(s.Addr(), "EXISTS", "k"); err != nil || got != "0" {
		t.Errorf("EXISTS k after a restart = %q, %v; want 0 (no persistence)", got, err)
	}
}

func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	c := redistest.StartCluster(t, 3)
	if len(c.Addrs()) != 3 {
		t.Fatalf("Addrs = %v, want 3", c.Addrs())
	}
	for _, addr := range c.Addrs() {
		info, err := redistest.Do(addr, "CLUSTER", "INFO")
		if err != nil || !strings.Contains(info, "cluster_state:ok") {
			t.Errorf("CLUSTER INFO at %s = %v:\n%s", addr, err, info)
		}
	}
}

// TestNoRedis runs TestAddr in a child process that can find no Redis: it
// must skip, or fail when LEAKYBUCKET_REQUIRE_REDIS=1.
func TestNoRedis(t *testing.T) {
	if os.Getenv("REDISTEST_CHILD") == "1" {
		t.Skip("child")
	}
	for _, require := range []string{"", "1"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAddr$", "-test.v")
		cmd.Env = append(os.Environ(), "PATH=", redistest.EnvAddr+"=", redistest.EnvRequire+"="+require, "REDISTEST_CHILD=1")
		out, err := cmd.CombinedOutput()
		switch {
		case require == "" && (err != nil || !strings.Contains(string(out), "--- SKIP: TestAddr")):
			t.Errorf("without Redis: %v, want TestAddr skipped:\n%s", err, out)
		case require == "1" && (err == nil || !strings.Contains(string(out), "--- FAIL: TestAddr")):
			t.Errorf("without Redis and %s=1: %v, want TestAddr failed:\n%s", redistest.EnvRequire, err, out)
		}
	}
}
