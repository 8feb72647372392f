package sqlitestore

// SetCheckpointEvery makes s checkpoint the WAL every n rows written
// instead of every 1,000, so that a test sees many checkpoints.
func SetCheckpointEvery(s *Store, n int) {
	s.sem <- struct{}{}
	s.checkpointEvery = n
	<-s.sem
}

// QueueLen returns how many Admit calls wait to join a transaction.
func QueueLen(s *Store) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Leading reports whether an Admit call is running a transaction for the
// calls queued.
func Leading(s *Store) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leading
}
