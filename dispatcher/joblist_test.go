package dispatcher

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestJobListInsertWraps: a key's jobs are ordered by 32-bit sequences
// that wrap; a job put back goes before the jobs submitted after it even
// across the wrap.
func TestJobListInsertWraps(t *testing.T) {
	seqs := []uint32{math.MaxUint32 - 1, math.MaxUint32, 0, 1}
	var l jobList[int, int]
	for _, i := range []int{0, 2, 3} {
		l.pushBack(&job[int, int]{seq: seqs[i]})
	}
	l.insert(&job[int, int]{seq: seqs[1]}) // back from a worker
	var got []uint32
	for j := l.head; j != nil; j = j.next {
		got = append(got, j.seq)
	}
	assert.Equal(t, seqs, got, "the key's queue after the put-back")
	assert.True(t, submittedBefore(math.MaxUint32, 0), "MaxUint32 before 0")
	assert.False(t, submittedBefore(0, math.MaxUint32), "0 before MaxUint32")
}
