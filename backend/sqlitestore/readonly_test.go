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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	require.NoError(t, err)
	w, r := filepath.Join(dir, "w"), filepath.Join(dir, "r")
	t.Cleanup(func() {
		os.Chmod(r, 0o755)
		os.RemoveAll(dir)
	})
	for _, d := range []string{dir, w, r} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	require.NoError(t, os.Chmod(dir, 0o755)) // MkdirTemp made it 0700
	require.NoError(t, os.Chmod(w, 0o777))   // anyone may create files in w
	readOnlyFile := filepath.Join(w, "readonly.db")
	writableFile := filepath.Join(r, "writable.db")
	for _, path := range []string{readOnlyFile, writableFile} {
		open(t, path, sqlitestore.Options{}).Close()
	}
	require.NoError(t, os.Chmod(readOnlyFile, 0o444))
	require.NoError(t, os.Chmod(writableFile, 0o666))
	before, err := os.ReadFile(readOnlyFile)
	require.NoError(t, err)

	var asNobody func(*exec.Cmd)
	if os.Geteuid() == 0 {
		// The helper runs as nobody, which may not enter the directory
		// of the test binary: run a copy.
		bin := filepath.Join(dir, "sqlitestore.test")
		require.NoError(t, copyFile(bin, os.Args[0]))
		asNobody = func(cmd *exec.Cmd) {
			cmd.Path, cmd.Args[0] = bin, bin
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
	} else {
		require.NoError(t, os.Chmod(r, 0o555))
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
	require.NoError(t, cmd.Wait(), "helper:\n%s%s", other, cmd.Stderr)
	for _, path := range paths {
		res, ok := results[filepath.Base(path)]
		if !assert.True(t, ok, "Open(%s): no result\n%s%s", path, other, cmd.Stderr) {
			continue
		}
		t.Logf("Open(%s): %s", filepath.Base(path), res)
		matched, msg, _ := strings.Cut(res, " ")
		assert.Equal(t, "true", matched, "Open(%s) without write permission: %s; want an error matching ErrReadOnly", path, res)
		assert.Regexp(t, "^sqlitestore: ", msg, "Open(%s) without write permission", path)
	}
	after, err := os.ReadFile(readOnlyFile)
	assert.NoError(t, err)
	assert.True(t, bytes.Equal(after, before), "the read-only file changed")
	// Nothing was left beside the read-only file: -wal and -shm files the
	// helper's user created would lock the file's owner out.
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		_, err := os.Stat(readOnlyFile + suffix)
		assert.ErrorIs(t, err, os.ErrNotExist, "opening the read-only file left %s behind", filepath.Base(readOnlyFile+suffix))
	}
	_, err = os.Stat(filepath.Join(r, "new.db"))
	assert.ErrorIs(t, err, os.ErrNotExist, "a file appeared in the read-only directory")
	// The writable file in the read-only directory is intact.
	os.Chmod(r, 0o755)
	db := rawDB(t, writableFile)
	var integrity string
	assert.NoError(t, db.QueryRow("PRAGMA integrity_check").Scan(&integrity))
	assert.Equal(t, "ok", integrity, "PRAGMA integrity_check")
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
