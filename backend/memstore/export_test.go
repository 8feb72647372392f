package memstore

// Test-only access to a Store's keys: the three stores offer no
// maintenance methods, so these live here, not in the API.

// Has reports whether s holds state for key.
func (s *Store) Has(key string) bool {
	sh, h := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.get(h, key) != nil
}

// Len returns the number of keys s holds state for.
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.len()
		sh.mu.Unlock()
	}
	return n
}

// len returns the number of keys the shard holds.
func (sh *shard) len() int {
	n := 0
	for _, e := range sh.m {
		for ; e != nil; e = e.next {
			n++
		}
	}
	return n
}

// Sweep runs one sweep now, as the background sweeper would.
func (s *Store) Sweep() { s.sweep() }
