//go:build !unix

package sqlitestore

import "io/fs"

// writable reports whether the file is marked read-only; where there are
// no Unix permissions, that is what refuses writes.
func writable(_ string, fi fs.FileInfo) error {
	if fi.Mode().Perm()&0o200 == 0 {
		return fs.ErrPermission
	}
	return nil
}
