package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A Cluster is a PostgreSQL server a test started for itself, in a
// directory of its own on a free loopback port, with trust
// authentication. It stops with the test.
type Cluster struct {
	dir  string
	port int
	cred *syscall.Credential // the postgres user's, when run by root
	ctl  string
}

// Start initializes and starts a cluster, or skips t if PostgreSQL's
// programs are missing (or fails it, see EnvRequire). initdb refuses to
// run as root: a root test runs them as the user postgres.
func Start(t testing.TB) *Cluster {
	t.Helper()
	c, err := start(t.TempDir())
	if err != nil {
		Unavailable(t, err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func start(tmp string) (*Cluster, error) {
	initdb, err := Bin("initdb")
	if err != nil {
		return nil, err
	}
	ctl, err := Bin("pg_ctl")
	if err != nil {
		return nil, err
	}
	c := &Cluster{ctl: ctl, dir: filepath.Join(tmp, "pg")}
	if os.Geteuid() == 0 {
		if err := c.asPostgres(tmp); err != nil {
			return nil, err
		}
		if err := os.Mkdir(c.dir, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if out, err := c.run(initdb, "-D", c.dir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c.port = port
	conf := fmt.Sprintf("\nport = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nfsync = off\nmax_connections = 50\n", port)
	f, err := os.OpenFile(filepath.Join(c.dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf)
	f.Close()
	if err != nil {
		return nil, err
	}
	return c, c.Start()
}

// asPostgres makes c's programs run as the user postgres, and dir and
// its parents reachable by it: t.TempDir's parents are private to root.
func (c *Cluster) asPostgres(dir string) error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root, and no user postgres to run PostgreSQL's programs as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	for d := dir; d != "/" && d != "." && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd.CombinedOutput()
}

// URL returns the cluster's URL, on its database postgres.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// Port returns the port the cluster listens on.
func (c *Cluster) Port() int { return c.port }

// Start starts the cluster (again) and waits until it accepts
// connections.
func (c *Cluster) Start() error {
	if out, err := c.run(c.ctl, "start", "-w", "-t", "30", "-D", c.dir, "-l", filepath.Join(c.dir, "log")); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "log"))
		return fmt.Errorf("pg_ctl start: %w\n%s\n%s", err, out, lastLines(log, 20))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, c.URL())
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the cluster at once (pg_ctl stop -m immediate): its
// connections break, as in a crash.
func (c *Cluster) Stop() error {
	if _, err := os.Stat(filepath.Join(c.dir, "postmaster.pid")); err != nil {
		return nil // not running
	}
	if out, err := c.run(c.ctl, "stop", "-w", "-m", "immediate", "-D", c.dir); err != nil {
		return fmt.Errorf("pg_ctl stop: %w\n%s", err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
