//go:build unix

package sqlitestore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// maxWrite bounds what SQLite writes to a database file, its WAL or its
// shared memory at once: a WAL frame of the largest page, or a 32 KiB
// region of shared memory.
const maxWrite = 24 + 64<<10

// sizeLimitReached explains a failed write by the process's file size
// limit (RLIMIT_FSIZE) when a file of the database at path is within a
// write of it, and returns nil otherwise. It is asked only after a
// failure.
func sizeLimitReached(path string) error {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_FSIZE, &rl) != nil || rl.Cur == unix.RLIM_INFINITY {
		return nil
	}
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		if fi, err := os.Stat(name); err == nil && uint64(fi.Size())+maxWrite > uint64(rl.Cur) {
			return fmt.Errorf("%s reached the file size limit of %d bytes (RLIMIT_FSIZE)", name, rl.Cur)
		}
	}
	return nil
}
