package pubsub

import (
	"sync"

	"github.com/redisbroker/broker"
)

// ring is the bounded FIFO between a subscription's read loop (the only
// producer) and its pump (the only consumer). With one producer and one
// consumer, a capacity-1 signal channel per direction is enough: a stale
// signal only causes a re-check under the lock.
type ring struct {
	mu    sync.Mutex
	items []*broker.Message
	head  int
	n     int
	high  int

	ready chan struct{} // an item was added
	space chan struct{} // an item was removed
}

func newRing(capacity int) *ring {
	return &ring{
		items: make([]*broker.Message, capacity),
		ready: make(chan struct{}, 1),
		space: make(chan struct{}, 1),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// offer adds m without blocking. When the ring is full it applies policy
// (DropOldest or DropNewest) and returns the message it discarded, and
// full=true. With Block it adds nothing when full and returns full=true.
func (q *ring) offer(m *broker.Message, policy Overflow) (dropped *broker.Message, full bool) {
	q.mu.Lock()
	if q.n == len(q.items) {
		switch policy {
		case DropNewest:
			q.mu.Unlock()
			return m, true
		case DropOldest:
			dropped = q.items[q.head]
			q.items[q.head] = m
			q.head = (q.head + 1) % len(q.items)
			q.mu.Unlock()
			signal(q.ready)
			return dropped, true
		default:
			q.mu.Unlock()
			return nil, true
		}
	}
	q.items[(q.head+q.n)%len(q.items)] = m
	q.n++
	q.high = max(q.high, q.n)
	q.mu.Unlock()
	signal(q.ready)
	return nil, false
}

// put adds m, waiting for room (the Block policy). It reports false, without
// adding m, when stop closes first.
func (q *ring) put(m *broker.Message, stop <-chan struct{}) bool {
	for {
		if _, full := q.offer(m, Block); !full {
			return true
		}
		select {
		case <-q.space:
		case <-stop:
			return false
		}
	}
}

// get removes the oldest message, waiting for one. It reports false when
// stop closes first.
func (q *ring) get(stop <-chan struct{}) (*broker.Message, bool) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			m := q.items[q.head]
			q.items[q.head] = nil
			q.head = (q.head + 1) % len(q.items)
			q.n--
			q.mu.Unlock()
			signal(q.space)
			return m, true
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-stop:
			return nil, false
		}
	}
}

// getN appends up to n of the oldest messages to dst, waiting for at least
// one. It returns dst unchanged when stop closes first.
func (q *ring) getN(dst []*broker.Message, n int, stop <-chan struct{}) []*broker.Message {
	for {
		q.mu.Lock()
		if q.n > 0 {
			for k := min(n, q.n); k > 0; k-- {
				dst = append(dst, q.items[q.head])
				q.items[q.head] = nil
				q.head = (q.head + 1) % len(q.items)
				q.n--
			}
			q.mu.Unlock()
			signal(q.space)
			return dst
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-stop:
			return dst
		}
	}
}

// drain removes and returns how many messages were left.
func (q *ring) drain() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.n
	clear(q.items)
	q.head, q.n = 0, 0
	return n
}

// len returns the number of buffered messages and the high-water mark.
func (q *ring) len() (n, high int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n, q.high
}
