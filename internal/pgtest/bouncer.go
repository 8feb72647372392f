package pgtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Bouncer starts PgBouncer in transaction pool mode in front of the
// server at url, on a free loopback port, stopped at the end of t, and
// returns the URL to reach the server through it. It skips t if the
// pgbouncer program is missing (or fails it, see EnvRequire).
func Bouncer(t testing.TB, url string) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		Unavailable(t, fmt.Errorf("pgbouncer: %w", err))
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	dir := t.TempDir()
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
max_client_conn = 200
default_pool_size = 8
ignore_startup_parameters = extra_float_digits
logfile = %s
`, cfg.Host, cfg.Port, port, filepath.Join(dir, "users.txt"), filepath.Join(dir, "log"))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("pgtest: pgbouncer: %v", err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "users.txt"), []byte(fmt.Sprintf("%q \"\"\n", cfg.User)), 0o644))
	must(os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644))
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 { // pgbouncer refuses to run as root
		c := &Cluster{}
		if err := c.asPostgres(dir); err != nil {
			Unavailable(t, err)
		}
		cmd.SysProcAttr.Credential = c.cred
		must(os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)))
	}
	out, err := os.Create(filepath.Join(dir, "stderr"))
	must(err)
	cmd.Stdout, cmd.Stderr = out, out
	must(cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); out.Close() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "stderr"))
			t.Fatalf("pgtest: pgbouncer did not listen on %s: %v\n%s", addr, err, lastLines(log, 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", cfg.User, addr, cfg.Database)
}
