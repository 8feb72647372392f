package dispatcher

// A ring is a FIFO of values backed by a slice that grows as needed, and
// is let go once the ring is empty if it grew large.
type ring[E any] struct {
	buf  []E
	head int
	n    int
}

func (r *ring[E]) push(e E) {
	if r.n == len(r.buf) {
		buf := make([]E, max(16, 2*len(r.buf)))
		for i := range r.n {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
}

func (r *ring[E]) pop() (E, bool) {
	var zero E
	if r.n == 0 {
		return zero, false
	}
	e := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 && len(r.buf) > 1024 {
		r.buf, r.head = nil, 0
	}
	return e, true
}
