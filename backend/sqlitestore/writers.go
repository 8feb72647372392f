package sqlitestore

import "sync"

// writers holds a writer token per database file open in this process,
// shared by its Stores. Stores on one file in one process then take turns
// in Go, in arrival order, rather than through SQLite, where a store that
// finds the lock taken tries again 1 to 8 ms later. (A file reached
// by two paths, through a link, gets two tokens, and its stores take turns
// through SQLite: correct, only slower.)
var writers = writerTokens{m: make(map[string]*writerToken)}

type writerTokens struct {
	mu sync.Mutex
	m  map[string]*writerToken
}

type writerToken struct {
	sem  chan struct{}
	refs int
}

// open returns the token of path, creating it for the first store.
func (w *writerTokens) open(path string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.m[path]
	if t == nil {
		t = &writerToken{sem: make(chan struct{}, 1)}
		w.m[path] = t
	}
	t.refs++
	return t.sem
}

// close forgets the token of path once its last store is closed.
func (w *writerTokens) close(path string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t := w.m[path]; t != nil {
		if t.refs--; t.refs == 0 {
			delete(w.m, path)
		}
	}
}
