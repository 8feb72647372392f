//go:build !unix

package sqlitestore

// sizeLimitReached returns nil: there is no file size limit of a process
// to explain a failed write by.
func sizeLimitReached(string) error { return nil }
