package batch

// fifo is the queue of waiters behind the in-flight flush. It reuses one
// backing array (compacting instead of growing when the front has been
// consumed), so its memory is bounded by MaxPending, and it supports the
// rare removal of a cancelled waiter from the middle.
type fifo[T any] struct {
	buf  []*waiter[T]
	head int // buf[head:] are queued; buf[:head] are consumed and nil
}

func (q *fifo[T]) len() int { return len(q.buf) - q.head }

func (q *fifo[T]) push(w *waiter[T]) {
	if q.head > 0 && len(q.buf) == cap(q.buf) {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf = q.buf[:n]
		q.head = 0
	}
	q.buf = append(q.buf, w)
}

func (q *fifo[T]) pop() (*waiter[T], bool) {
	if q.head == len(q.buf) {
		return nil, false
	}
	w := q.buf[q.head]
	q.buf[q.head] = nil
	q.head++
	q.reset()
	return w, true
}

// remove deletes w, if queued, keeping the others in order. It is O(n),
// which is fine for cancellations.
func (q *fifo[T]) remove(w *waiter[T]) {
	for i := q.head; i < len(q.buf); i++ {
		if q.buf[i] != w {
			continue
		}
		last := len(q.buf) - 1
		copy(q.buf[i:], q.buf[i+1:])
		q.buf[last] = nil
		q.buf = q.buf[:last]
		q.reset()
		return
	}
}

// reset rewinds to the start of the array once the queue is empty, so the
// common case never copies.
func (q *fifo[T]) reset() {
	if q.head == len(q.buf) {
		q.buf = q.buf[:0]
		q.head = 0
	}
}
