// Package redistest provides Redis servers to tests: the one named by
// REDIS_ADDR, or redis-server processes it starts on free loopback ports,
// single or as a Redis Cluster. Without either, tests skip with a message,
// unless LEAKYBUCKET_REQUIRE_REDIS=1, where they fail.
//
// Servers shared by a test binary (Addr, ClusterAddrs) live until Exit,
// which a TestMain calls, for example under goleak:
//
//	func TestMain(m *testing.M) {
//		goleak.VerifyTestMain(m, goleak.Cleanup(redistest.Exit))
//	}
//
// Servers a test starts for itself (Start, StartCluster) stop with the
// test. Tests isolate themselves with key prefixes of their own, never
// FLUSHDB, so that a shared REDIS_ADDR can serve many packages at once.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment variables read by this package.
const (
	// EnvAddr names an existing Redis (host:port) for Addr.
	EnvAddr = "REDIS_ADDR"
	// EnvClusterAddrs names the masters of an existing Redis Cluster,
	// comma-separated, for ClusterAddrs.
	EnvClusterAddrs = "REDIS_CLUSTER_ADDRS"
	// EnvRequire, set to 1, turns every skip for want of Redis into a
	// failure (CI sets it).
	EnvRequire = "LEAKYBUCKET_REQUIRE_REDIS"
)

var shared struct {
	mu      sync.Mutex
	single  *Server
	cluster *Cluster
	err     error // why the shared server could not start
	cerr    error // why the shared cluster could not start
	dir     string
}

// Addr returns the address of a Redis for t: REDIS_ADDR if set, else a
// redis-server started on first use and shared by the whole test binary
// until Exit. Without either it skips t (or fails it, see EnvRequire).
func Addr(t testing.TB) string {
	t.Helper()
	if a := os.Getenv(EnvAddr); a != "" {
		return a
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.single == nil && shared.err == nil {
		shared.single, shared.err = startShared("single", false)
	}
	if shared.err != nil {
		unavailable(t, shared.err)
	}
	return shared.single.Addr()
}

// ClusterAddrs returns the master addresses of a Redis Cluster for t:
// REDIS_CLUSTER_ADDRS if set, else a 3-master cluster of redis-server
// processes started on first use and shared by the test binary until
// Exit. Without either it skips t (or fails it, see EnvRequire).
func ClusterAddrs(t testing.TB) []string {
	t.Helper()
	if a := os.Getenv(EnvClusterAddrs); a != "" {
		return strings.Split(a, ",")
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster == nil && shared.cerr == nil {
		var dir string
		if dir, shared.cerr = sharedDir("cluster"); shared.cerr == nil {
			shared.cluster, shared.cerr = startCluster(dir, ClusterOptions{Masters: 3})
		}
	}
	if shared.cerr != nil {
		unavailable(t, shared.cerr)
	}
	return shared.cluster.Addrs()
}

// Exit stops the servers shared by the test binary, removes their files
// and exits with code. Pass it to goleak.Cleanup, or call it at the end of
// TestMain.
func Exit(code int) {
	StopShared()
	os.Exit(code)
}

// StopShared stops the servers shared by the test binary and removes
// their files. Later calls of Addr and ClusterAddrs start new ones.
func StopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.single != nil {
		shared.single.stop()
	}
	if shared.cluster != nil {
		shared.cluster.stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	shared.single, shared.cluster, shared.err, shared.cerr, shared.dir = nil, nil, nil, nil, ""
}

func sharedDir(name string) (string, error) {
	if shared.dir == "" {
		d, err := os.MkdirTemp("", "redistest-")
		if err != nil {
			return "", err
		}
		shared.dir = d
	}
	dir := filepath.Join(shared.dir, name)
	return dir, os.MkdirAll(dir, 0o755)
}

func startShared(name string, cluster bool) (*Server, error) {
	dir, err := sharedDir(name)
	if err != nil {
		return nil, err
	}
	return start(dir, cluster, nil)
}

// unavailable skips t, or fails it when EnvRequire is set.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("redistest: no Redis and %s=1: %v", EnvRequire, err)
	}
	t.Skipf("redistest: skipping, no Redis (set %s, or put redis-server on PATH): %v", EnvAddr, err)
}

// A Server is a redis-server process started by this package, without
// persistence (--save "" --appendonly no), so a restart forgets every key.
type Server struct {
	mu      sync.Mutex
	port    int
	dir     string
	cluster bool
	conf    []string  // more arguments of redis-server (a cluster node's settings)
	cmd     *exec.Cmd // nil while stopped
}

// Start starts a redis-server of t's own on a free loopback port, in
// t.TempDir(), stopped when t ends. It skips t if redis-server is not on
// PATH (or fails it, see EnvRequire). Use it for tests that stop and
// restart Redis.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := start(t.TempDir(), false, nil)
	if err != nil {
		unavailable(t, err)
	}
	t.Cleanup(s.stop)
	return s
}

// Addr returns the server's address, 127.0.0.1:port. It stays the same
// across Kill and Restart.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Kill stops the server at once with SIGKILL, as a crash would, and waits
// for it to exit. Killing a stopped server does nothing.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	err := s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
	return err
}

// Freeze stops the server with SIGSTOP: it keeps its connections and its
// data but answers nothing, as a hung host would, until Thaw.
func (s *Server) Freeze() error { return s.signal(sigStop) }

// Thaw resumes a frozen server with SIGCONT.
func (s *Server) Thaw() error { return s.signal(sigCont) }

func (s *Server) signal(sig os.Signal) error {
	if sig == nil {
		return errors.New("redistest: Freeze and Thaw need Unix signals")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("redistest: server not running")
	}
	return s.cmd.Process.Signal(sig)
}

// Restart starts a killed server again on the same port and waits until
// it answers. Without persistence it comes back empty.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("redistest: Restart of a running server")
	}
	return s.run()
}

func (s *Server) stop() { s.Kill() }

// running reports whether the server's process runs (it may be frozen).
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// start starts a redis-server in dir, with conf as more arguments.
func start(dir string, cluster bool, conf []string) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, err
	}
	var err error
	for range 5 { // another process may take the port between choice and bind
		var port int
		if port, err = freePort(cluster); err != nil {
			return nil, err
		}
		s := &Server{port: port, dir: dir, cluster: cluster, conf: conf}
		if err = s.run(); err == nil {
			return s, nil
		}
	}
	return nil, err
}

// run starts the process; s.mu is held or s is not yet shared.
func (s *Server) run() error {
	logPath := filepath.Join(s.dir, "redis-"+strconv.Itoa(s.port)+".log")
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", logPath,
		"--daemonize", "no",
	}
	if s.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes-"+strconv.Itoa(s.port)+".conf")
	}
	args = append(args, s.conf...)
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr() // dies with the test binary
	// No Stdout/Stderr and no CommandContext: the process costs no
	// goroutine, so goleak finds none between tests.
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start redis-server: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := Do(s.Addr(), "PING")
		if err == nil && r == "PONG" {
			s.cmd = cmd
			return nil
		}
		log, _ := os.ReadFile(logPath)
		if time.Now().After(deadline) || strings.Contains(string(log), "Address already in use") {
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("redistest: redis-server on port %d did not answer PING (%v); log:\n%s", s.port, err, lastLines(log, 10))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freePort returns a loopback TCP port that is free now, and for a cluster
// node also its bus port (port+10000).
func freePort(cluster bool) (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !cluster {
			return port, nil
		}
		if port+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		bus.Close()
		return port, nil
	}
	return 0, errors.New("redistest: no free port pair for a cluster node")
}

// Do sends one command to the Redis at addr on a new connection and
// returns its reply: a simple or bulk string, or an integer in decimal.
// An error reply is returned as an error. It needs no client library and
// starts no goroutine.
func Do(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("redistest: empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redistest: unsupported reply %q", line)
}
