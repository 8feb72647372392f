//go:build unix

package sqlitestore_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/leakybucket/leakybucket/backend/sqlitestore"
)

func init() { helperBodies["readonly"] = openReadOnly }

// openReadOnly is the body of a readonly helper: it opens each of
// spec.Paths and prints, for each, whether the error matched ErrReadOnly
// and the error.
func openReadOnly(t *testing.T, spec helperSpec) {
	for _, path := range spec.Paths {
		s, err := sqlitestore.Open(path, sqlitestore.Options{})
		if err == nil {
			s.Close()
			fmt.Printf("result %s false opened\n", filepath.Base(path))
			continue
		}
		fmt.Printf("result %s %v %s\n", filepath.Base(path), errors.Is(err, sqlitestore.ErrReadOnly), err)
	}
}

// TestReadOnly opens, in a process that may not write them, a read-only
// database file, a new file in a read-only directory, and a writable file
// in a read-only directory (where its -wal and -shm files cannot be
// created). Run as root, the test drops to user nobody for the helper:
// permissions do not bind root.
func TestReadOnly(t *testing.T) {
	dir, err := os.MkdirTemp("", "sqlitestore-readonly-")
	if err != nil {
		t.Fatal(err)
	}
	w, r := filepath.Join(dir, "w"), filepath.Join(dir, "r")
	t.Cleanup(func() {
		os.Chmod(r, 0o755)
		os.RemoveAll(dir)
	})
	for _, d := range []string{dir, w, r} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil { // MkdirTemp made it 0700
		t.Fatal(err)
	}
	if err := os.Chmod(w, 0o777); err != nil { // anyone may create files in w
		t.Fatal(err)
	}
	readOnlyFile := filepath.Join(w, "readonly.db")
	writableFile := filepath.Join(r, "writable.db")
	for _, path := range []string{readOnlyFile, writableFile} {
		open(t, path, sqlitestore.Options{}).Close()
	}
	if err := os.Chmod(readOnlyFile, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(writableFile, 0o666); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(readOnlyFile)
	if err != nil {
		t.Fatal(err)
	}

	var asNobody func(*exec.Cmd)
	if os.Geteuid() == 0 {
		// The helper runs as nobody, which may not enter the directory
		// of the test binary: run a copy.
		bin := filepath.Join(dir, "sqlitestore.test")
		if err := copyFile(bin, os.Args[0]); err != nil {
			t.Fatal(err)
		}
		asNobody = func(cmd *exec.Cmd) {
			cmd.Path, cmd.Args[0] = bin, bin
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
	} else {
		if err := os.Chmod(r, 0o555); err != nil {
			t.Fatal(err)
		}
		asNobody = func(*exec.Cmd) {}
	}

	paths := []string{readOnlyFile, filepath.Join(r, "new.db"), writableFile}
	cmd, stdout, _ := startHelper(t, "readonly", helperSpec{Paths: paths}, asNobody)
	results := map[string]string{}
	other := readHelper(stdout, func(f []string) bool {
		if len(f) < 3 || f[0] != "result" {
			return false
		}
		results[f[1]] = strings.Join(f[2:], " ")
		return true
	})
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s%s", err, other, cmd.Stderr)
	}
	for _, path := range paths {
		res, ok := results[filepath.Base(path)]
		if !ok {
			t.Errorf("Open(%s): no result\n%s%s", path, other, cmd.Stderr)
			continue
		}
		t.Logf("Open(%s): %s", filepath.Base(path), res)
		matched, msg, _ := strings.Cut(res, " ")
		if matched != "true" || !strings.HasPrefix(msg, "sqlitestore: ") {
			t.Errorf("Open(%s) without write permission: %s, want an error matching ErrReadOnly", path, res)
		}
	}
	if after, err := os.ReadFile(readOnlyFile); err != nil || !bytes.Equal(after, before) {
		t.Errorf("the read-only file changed (%v)", err)
	}
	// Nothing was left beside the read-only file: -wal and -shm files the
	// helper's user created would lock the file's owner out.
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Stat(readOnlyFile + suffix); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("opening the read-only file left %s behind (%v)", filepath.Base(readOnlyFile+suffix), err)
		}
	}
	if _, err := os.Stat(filepath.Join(r, "new.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file appeared in the read-only directory: %v", err)
	}
	// The writable file in the read-only directory is intact.
	os.Chmod(r, 0o755)
	db := rawDB(t, writableFile)
	var integrity string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&integrity); err != nil || integrity != "ok" {
		t.Errorf("PRAGMA integrity_check = %q, %v, want ok", integrity, err)
	}
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
