package dispatcher

// A jobList is an intrusive FIFO of jobs; removal is O(1).
type jobList[T, R any] struct {
	head, tail *job[T, R]
	n          int
}

func (l *jobList[T, R]) pushBack(j *job[T, R]) {
	j.prev, j.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = j
	} else {
		l.head = j
	}
	l.tail = j
	l.n++
}

func (l *jobList[T, R]) remove(j *job[T, R]) {
	if j.prev != nil {
		j.prev.next = j.next
	} else {
		l.head = j.next
	}
	if j.next != nil {
		j.next.prev = j.prev
	} else {
		l.tail = j.prev
	}
	j.prev, j.next = nil, nil
	l.n--
}

// insert puts a job back in submission order; jobs come back near the
// head, so the walk is short.
func (l *jobList[T, R]) insert(j *job[T, R]) {
	at := l.head
	for at != nil && at.seq < j.seq {
		at = at.next
	}
	if at == nil {
		l.pushBack(j)
		return
	}
	j.prev, j.next = at.prev, at
	if at.prev != nil {
		at.prev.next = j
	} else {
		l.head = j
	}
	at.prev = j
	l.n++
}

func (l *jobList[T, R]) popFront() *job[T, R] {
	j := l.head
	if j != nil {
		l.remove(j)
	}
	return j
}
