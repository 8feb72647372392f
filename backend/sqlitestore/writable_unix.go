//go:build unix

package sqlitestore

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// writable reports why this process may not write the file at path, with
// its effective IDs, as the kernel would decide an open for writing.
func writable(path string, _ fs.FileInfo) error {
	return unix.Faccessat(unix.AT_FDCWD, path, unix.W_OK, unix.AT_EACCESS)
}
