package sqlitestore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func init() { helperBodies["diskfull"] = diskFull }

// TestDiskFull fills the disk under a store, in a helper process, in two
// ways: a tmpfs of 1 MiB that the helper mounts in a mount namespace of
// its own (which needs CAP_SYS_ADMIN; without it the subtest is skipped,
// saying so) and a file size limit, RLIMIT_FSIZE, that the helper sets on
// itself, which always works. Each write then fails with ErrFull and
// changes nothing, refusals are still answered, the file stays intact,
// and once there is room again every admission made before is still
// charged and none that failed is.
func TestDiskFull(t *testing.T) {
	t.Run("tmpfs", func(t *testing.T) {
		ns := func(cmd *exec.Cmd) {
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
		}
		probe := exec.Command(os.Args[0], "-test.run=^$")
		ns(probe)
		if err := probe.Run(); err != nil {
			t.Skipf("no mount namespace for a tmpfs (%v): the fsize subtest stands in", err)
		}
		runDiskFull(t, "tmpfs", ns)
	})
	t.Run("fsize", func(t *testing.T) { runDiskFull(t, "fsize") })
}

// runDiskFull runs a diskfull helper in mode and reports what it found.
func runDiskFull(t *testing.T, mode string, modify ...func(*exec.Cmd)) {
	cmd, stdout, stdin := startHelper(t, "diskfull", helperSpec{Path: t.TempDir(), Mode: mode}, modify...)
	stdin.Close()
	var report, nomount string
	other := readHelper(stdout, func(f []string) bool {
		switch {
		case len(f) > 0 && f[0] == "nomount":
			nomount = strings.Join(f[1:], " ")
		case len(f) > 0 && f[0] == "full":
			report = strings.Join(f[1:], " ")
		default:
			return false
		}
		return true
	})
	require.NoError(t, cmd.Wait(), "diskfull helper\n%s%s", other, cmd.Stderr)
	if nomount != "" {
		t.Skipf("cannot mount a tmpfs (%s): the fsize subtest stands in", nomount)
	}
	require.NotEmpty(t, report, "diskfull helper said nothing\n%s%s", other, cmd.Stderr)
	t.Logf("%s: %s", mode, report)
}

// diskFull is the body of a diskfull helper; spec.Path is a directory
// and spec.Mode says how to fill it. It prints "full" and what it found,
// or "nomount" and why if it cannot mount a tmpfs.
func diskFull(t *testing.T, spec helperSpec) {
	dir := spec.Path
	if spec.Mode == "tmpfs" {
		// The mount lives in this process's mount namespace and goes with
		// it: nothing to unmount.
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
			fmt.Println("nomount", err)
			return
		}
	}
	path := filepath.Join(dir, "b.db")
	s := open(t, path, sqlitestore.Options{SweepInterval: -1})
	ctx := context.Background()
	once := func(key string) (driver.Decision, error) { // each key admits one unit
		return s.Admit(ctx, driver.Request{Key: key, Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
	}
	led := &ledger{key: "ledger"}
	led.admit(t, s, 10)
	var charged, failed []string
	for i := range 10 {
		key := fmt.Sprint("before-", i)
		d, err := once(key)
		require.NoError(t, err)
		require.True(t, d.Allowed, "Admit(%q)", key)
		charged = append(charged, key)
	}

	topOff, free := fill(t, spec.Mode, path)
	// Admit new keys, a row each, until a write finds no room.
	var full error
	for i := 0; i < 100_000 && full == nil; i++ {
		key := fmt.Sprintf("new-%05d-%s", i, strings.Repeat("x", 100))
		d, err := once(key)
		switch {
		case err != nil:
			full = err
			assert.False(t, d.Allowed, "Admit that failed")
			failed = append(failed, key)
		case assert.True(t, d.Allowed, "Admit(%q)", key):
			charged = append(charged, key)
		}
	}
	wantErr(t, "Admit on a full disk", full, sqlitestore.ErrFull)
	topOff()
	// Every write fails now and changes nothing; refusals, which write
	// nothing, are answered.
	d, err := led.try(s)
	wantErr(t, "Admit of an existing key on a full disk", err, sqlitestore.ErrFull)
	assert.False(t, d.Allowed, "Admit of an existing key on a full disk")
	batch := []driver.Admission{{Request: led.request()}}
	for i := range 3 {
		failed = append(failed, fmt.Sprint("batch-", i))
		batch = append(batch, driver.Admission{Request: driver.Request{Key: failed[len(failed)-1], Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}})
	}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		wantErr(t, fmt.Sprintf("AdmitBatch[%d] on a full disk", i), a.Err, sqlitestore.ErrFull)
	}
	led.record(batch[0].Decision, batch[0].Err)
	wantErr(t, "Pause on a full disk", s.Pause(ctx, "before-0", time.Hour), sqlitestore.ErrFull)
	d, err = once("before-1")
	assert.NoError(t, err, "a refusal on a full disk")
	assert.False(t, d.Allowed, "Admit of a key admitted before the disk filled")
	intact(t, path)

	free()
	for _, key := range failed {
		d, err := once(key)
		require.NoError(t, err, "Admit(%q) once there is room", key)
		assert.True(t, d.Allowed, "Admit(%q) once there is room: refused, so the write that failed charged it", key)
	}
	for _, key := range charged {
		d, err := once(key)
		require.NoError(t, err, "Admit(%q) once there is room", key)
		assert.False(t, d.Allowed, "Admit(%q) once there is room: admitted again, so its first admission was lost", key)
	}
	led.admit(t, s, 10)
	intact(t, path)
	led.settle(t, s)
	fmt.Println("full", "after", len(charged)-10, "new keys:", full)
}

// fill takes away the room left for the database at path, all but a few
// pages of it, in mode, and returns a function that takes the rest and
// one that gives all of it back.
func fill(t *testing.T, mode, path string) (topOff, free func()) {
	switch mode {
	case "tmpfs":
		filler := filepath.Join(filepath.Dir(path), "filler")
		var st unix.Statfs_t
		require.NoError(t, unix.Statfs(filepath.Dir(filler), &st))
		room := int64(st.Bavail) * st.Bsize
		require.NoError(t, os.WriteFile(filler, make([]byte, room-32<<10), 0o644))
		return func() {
				f, err := os.OpenFile(filler, os.O_WRONLY|os.O_APPEND, 0)
				require.NoError(t, err)
				defer f.Close()
				page := make([]byte, 512)
				for {
					if _, err := f.Write(page); err != nil {
						require.True(t, errors.Is(err, syscall.ENOSPC), "topping off the tmpfs: %v", err)
						return
					}
				}
			}, func() {
				require.NoError(t, os.Remove(filler))
			}
	case "fsize":
		var was unix.Rlimit
		require.NoError(t, unix.Getrlimit(unix.RLIMIT_FSIZE, &was))
		var most int64
		for _, name := range []string{path, path + "-wal", path + "-shm"} {
			fi, err := os.Stat(name)
			require.NoError(t, err)
			most = max(most, fi.Size())
		}
		limit := unix.Rlimit{Cur: uint64(most + 32<<10), Max: was.Max}
		require.NoError(t, unix.Setrlimit(unix.RLIMIT_FSIZE, &limit))
		// A write that fails at the limit leaves the file at it: no
		// later write fits either.
		return func() {}, func() {
			require.NoError(t, unix.Setrlimit(unix.RLIMIT_FSIZE, &was))
		}
	}
	require.FailNow(t, "unknown mode "+mode)
	return nil, nil
}
