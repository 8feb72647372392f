package sqlitestore

// SetCheckpointEvery makes s checkpoint the WAL every n rows written
// instead of every 1,000, so that a test sees many checkpoints.
func SetCheckpointEvery(s *Store, n int) {
	s.sem <- struct{}{}
	s.checkpointEvery = n
	<-s.sem
}
