package dispatcher

import "container/heap"

// A timed value waits in a timerHeap: it knows when it is due (ties broken
// by sequence) and keeps its index there, so it can be moved or removed.
type timed interface {
	due() (at int64, seq uint64)
	heapIndex() *int32
}

func (k *keyState[T, R]) due() (int64, uint64) { return k.wakeAt, 0 }

func (k *keyState[T, R]) heapIndex() *int32 { return &k.heapIdx }

func (j *job[T, R]) due() (int64, uint64) { return j.releaseAt, j.seq }

func (j *job[T, R]) heapIndex() *int32 { return &j.heapIdx }

// A timerHeap orders values by when they are due: the scheduler keeps one
// of waiting keys and one of booked jobs.
type timerHeap[E timed] []E

func (h timerHeap[E]) Len() int { return len(h) }

func (h timerHeap[E]) Less(i, j int) bool {
	a, as := h[i].due()
	b, bs := h[j].due()
	return a < b || a == b && as < bs
}

func (h timerHeap[E]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	*h[i].heapIndex(), *h[j].heapIndex() = int32(i), int32(j)
}

func (h *timerHeap[E]) Push(x any) {
	e := x.(E)
	*e.heapIndex() = int32(len(*h))
	*h = append(*h, e)
}

func (h *timerHeap[E]) Pop() any {
	old := *h
	e := old[len(old)-1]
	var zero E
	old[len(old)-1] = zero
	*h = old[:len(old)-1]
	if len(*h) == 0 && cap(*h) > 1024 {
		*h = nil // a burst is over: let its room go
	}
	*e.heapIndex() = -1
	return e
}

// set puts e in the heap at its due time, or moves it there.
func (h *timerHeap[E]) set(e E) {
	if i := *e.heapIndex(); i >= 0 {
		heap.Fix(h, int(i))
		return
	}
	heap.Push(h, e)
}

// remove takes e out of the heap if it is there.
func (h *timerHeap[E]) remove(e E) {
	if i := *e.heapIndex(); i >= 0 {
		heap.Remove(h, int(i))
	}
}

// next returns when the first value is due, or false if the heap is empty.
func (h timerHeap[E]) next() (int64, bool) {
	if len(h) == 0 {
		return 0, false
	}
	at, _ := h[0].due()
	return at, true
}
