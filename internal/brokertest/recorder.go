package brokertest

import (
	"bytes"
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/redisbroker/broker"
)

// Recorder is a broker.Handler that records every delivery, by message ID, before handing the
// message to an optional next handler. It is safe for concurrent use, so one Recorder can serve
// several subscriptions and concurrent handlers.
//
// A delivery is recorded when the handler is entered, so the next handler can read Count(msg.ID)
// to learn which delivery of the message it is processing (1 for the first).
type Recorder struct {
	next broker.Handler

	mu         sync.Mutex
	deliveries []broker.Message // copies, in delivery order
	counts     map[string]int   // deliveries per ID
	changed    chan struct{}    // closed and replaced on every delivery
}

var _ broker.Handler = (*Recorder)(nil)

// NewRecorder returns a Recorder that passes every message on to next, or acks it (returns nil)
// when next is nil.
func NewRecorder(next broker.Handler) *Recorder {
	return &Recorder{next: next, counts: make(map[string]int), changed: make(chan struct{})}
}

// Handle records a copy of msg, then calls the next handler.
func (r *Recorder) Handle(ctx context.Context, msg *broker.Message) error {
	c := *msg
	c.Payload = bytes.Clone(msg.Payload)
	c.Metadata = maps.Clone(msg.Metadata)
	r.mu.Lock()
	r.deliveries = append(r.deliveries, c)
	r.counts[c.ID]++
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	if r.next == nil {
		return nil
	}
	return r.next.Handle(ctx, msg)
}

// Count returns how many times the message with this ID was delivered.
func (r *Recorder) Count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[id]
}

// Len returns the number of distinct message IDs delivered.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counts)
}

// Deliveries returns the number of deliveries, redeliveries included.
func (r *Recorder) Deliveries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.deliveries)
}

// Counts returns a copy of the deliveries per ID.
func (r *Recorder) Counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.counts)
}

// Messages returns copies of every delivery, in delivery order.
func (r *Recorder) Messages() []broker.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]broker.Message(nil), r.deliveries...)
}

// Received returns copies of the deliveries of the message with this ID, in delivery order.
func (r *Recorder) Received(id string) []broker.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []broker.Message
	for _, m := range r.deliveries {
		if m.ID == id {
			out = append(out, m)
		}
	}
	return out
}

// Attempts returns the Attempt of each delivery of the message with this ID, in delivery order.
func (r *Recorder) Attempts(id string) []int {
	var out []int
	for _, m := range r.Received(id) {
		out = append(out, m.Attempt)
	}
	return out
}

// WaitFor waits until n distinct message IDs have been delivered and fails the test (t.Fatalf)
// if that takes longer than timeout. Call it from the test's goroutine.
func (r *Recorder) WaitFor(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	if !r.wait(timeout, func() bool { return len(r.counts) >= n }) {
		t.Fatalf("brokertest: %d distinct messages delivered within %v, want %d (%d deliveries)",
			r.Len(), timeout, n, r.Deliveries())
	}
}

// WaitCount waits until the message with this ID has been delivered n times and fails the test
// (t.Fatalf) if that takes longer than timeout. Call it from the test's goroutine.
func (r *Recorder) WaitCount(t testing.TB, id string, n int, timeout time.Duration) {
	t.Helper()
	if !r.wait(timeout, func() bool { return r.counts[id] >= n }) {
		t.Fatalf("brokertest: message %s delivered %d times within %v, want %d (attempts %v)",
			id, r.Count(id), timeout, n, r.Attempts(id))
	}
}

// wait blocks until cond, evaluated with r.mu held after every delivery, holds or timeout passes.
func (r *Recorder) wait(timeout time.Duration, cond func() bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		r.mu.Lock()
		ok, changed := cond(), r.changed
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}
