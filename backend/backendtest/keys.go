package backendtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
)

// testKeys: keys of any bytes name buckets of their own: none collides
// with another, none loses its state.
func (s *suite) testKeys(t *testing.T) {
	b := s.cfg.New(t)
	base := s.key(t, "")
	keys := []string{
		"a", "a ", " a", "A", "{a}", "a}", "{a", "}{", "a\x00b", "a\x00", "a\nb", "a\r\nb",
		"\xff\xfe", "ключ", "🔑", `a"b`, "a'b", "a\\b", "a:b", "a::b", "%s", "*", "?",
		strings.Repeat("k", 1024), strings.Repeat("k", 1023) + "j",
	}
	lim := bucket.PerHour(1)
	for _, k := range keys {
		assert.True(t, admit(t, b, req(base+k, lim, 1, 0)).Allowed, "first admission for key %q refused: it collides with another key", k)
	}
	for _, k := range keys {
		assert.False(t, admit(t, b, req(base+k, lim, 1, 0)).Allowed, "second admission for key %q allowed: its state was lost", k)
	}
}

// testIdleExpiry (guarantee 8): a key whose bucket has become fresh is
// forgotten; a key with a quota in use, or paused, is kept.
func (s *suite) testIdleExpiry(t *testing.T) {
	if s.cfg.Forgotten == nil {
		t.Skip("Config.Forgotten not set")
	}
	b := s.cfg.New(t)
	short := bucket.Every(10*time.Millisecond, 1).WithQuota(5, 100*time.Millisecond)
	long := bucket.PerHour(1).WithQuota(5, time.Hour)
	idle, busy, paused := s.key(t, "idle"), s.key(t, "busy"), s.key(t, "paused")
	admit(t, b, req(idle, short, 1, 0))
	admit(t, b, req(busy, long, 1, 0))
	require.NoError(t, b.Pause(context.Background(), paused, time.Hour), "Pause(%q, 1h)", paused)
	require.False(t, s.cfg.Forgotten(t, b, busy), "key forgotten right after admission")
	// The backend forgets on its own schedule: poll until a deadline
	// generous for slow machines.
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !s.cfg.Forgotten(t, b, idle) {
		require.False(t, time.Now().After(deadline), "idle key still held 10s after its bucket became fresh")
		<-tick.C
	}
	assert.False(t, s.cfg.Forgotten(t, b, busy), "key with an hour's quota in use was forgotten")
	assert.False(t, s.cfg.Forgotten(t, b, paused), "paused key was forgotten during its pause")
	assert.False(t, admit(t, b, req(busy, long, 1, 0)).Allowed, "busy key's state was lost")
}
