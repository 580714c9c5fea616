package pubsub

import (
	"sync/atomic"
	"time"
)

// Stats are a subscription's counters since Subscribe. Every message read
// from the connection ends in exactly one of Delivered, HandlerErrors or a
// Dropped counter, or is still Buffered or in a handler:
//
//	Received = Delivered + HandlerErrors + DroppedOverflow + DroppedMalformed
//	         + DroppedOversize + DroppedShutdown + Buffered + (messages in handlers)
//
// Stats reads each counter on its own while messages flow, so a snapshot can
// show a message in Received before it shows where it went; the identity is
// exact once no message is arriving.
//
// Messages that never arrived are counted in Gaps, for publishers of this
// package (not raw ones), once a later message of the same publisher and
// channel arrives.
type Stats struct {
	// Received counts messages read from the connection.
	Received uint64
	// Delivered counts messages whose handler returned nil.
	Delivered uint64
	// HandlerErrors counts messages whose handler returned an error
	// (ErrDiscard included) or panicked. Pub/sub has no retry: they are
	// dropped.
	HandlerErrors uint64
	// DroppedOverflow counts messages discarded because the buffer was full
	// (DropOldest or DropNewest).
	DroppedOverflow uint64
	// DroppedMalformed counts values that claimed to be an envelope but did
	// not decode.
	DroppedMalformed uint64
	// DroppedOversize counts values larger than WithMaxValueSize.
	DroppedOversize uint64
	// DroppedShutdown counts messages received but never started because
	// the subscription stopped.
	DroppedShutdown uint64
	// Gaps counts messages a publisher sent to this channel that never
	// arrived: while disconnected, or discarded by Redis when it closed the
	// connection for exceeding client-output-buffer-limit. It leaves out
	// numbers the publisher itself reported as failed (see MetaResync), a
	// loss at the very end of a publisher's stream (it shows only when the
	// publisher's next message arrives), and implausible jumps
	// (SeqAnomalies).
	Gaps uint64
	// Duplicates counts messages whose sequence number was already seen: a
	// publisher's pipeline retried after a connection error. They are
	// delivered.
	Duplicates uint64
	// SeqAnomalies counts sequence numbers that jumped more than 16,777,216
	// ahead of or behind the last one seen from the same publisher: a
	// forged or foreign MetaSeq rather than a loss. They are not counted as
	// gaps; tracking restarts from the new number.
	SeqAnomalies uint64
	// TrackerEvictions counts (channel, publisher) pairs forgotten because
	// more than 4096 were being tracked. A forgotten pair's next message
	// starts afresh, so a loss just before it is not counted; after the
	// first eviction, a loss at a new publisher's start is not counted
	// either.
	TrackerEvictions uint64
	// Disconnects counts lost subscriptions (one per outage, however many
	// redial attempts it took): connection errors, a connection the health
	// check found dead, and unsubscriptions Redis sent on its own (a
	// sharded channel's slot moved away).
	Disconnects uint64
	// SlowDisconnects counts the Disconnects that happened while this
	// subscription was behind: waiting for room (Block) or with its buffer
	// full within the last second. That is the signature of Redis closing
	// a subscriber for client-output-buffer-limit pubsub, but it is
	// inferred: Redis does not tell a client why it closed it.
	SlowDisconnects uint64
	// BufferLimitDisconnects counts the Disconnects across which the
	// server's own count of client-output-buffer-limit disconnections
	// (INFO stats client_output_buffer_limit_disconnections) went up. Redis
	// 7.2 and later only; always 0 on older servers. The server counts
	// every client, so with several subscribers on one server the one it
	// closed may not be this one.
	BufferLimitDisconnects uint64
	// Reconnects counts subscriptions re-established after a disconnect.
	Reconnects uint64
	// Buffered is the number of messages in the buffer now.
	Buffered int
	// BufferHighWater is the most messages the buffer has held at once; it
	// never exceeds BufferCapacity.
	BufferHighWater int
	// BufferCapacity is the buffer's capacity (WithBuffer).
	BufferCapacity int
}

// Dropped returns the messages that arrived but were discarded by this
// subscription, whatever the cause.
func (s Stats) Dropped() uint64 {
	return s.DroppedOverflow + s.DroppedMalformed + s.DroppedOversize + s.DroppedShutdown
}

// Lost returns every message known not to have been handled successfully:
// dropped, failed in the handler, or never arrived.
func (s Stats) Lost() uint64 {
	return s.Dropped() + s.HandlerErrors + s.Gaps
}

// counters are updated with atomics by the read loop and the workers, and
// read by Stats at any time. The read loop's and the handlers' counters sit
// on separate cache lines.
type counters struct {
	// Read loop.
	received               atomic.Uint64
	droppedOverflow        atomic.Uint64
	droppedMalformed       atomic.Uint64
	droppedOversize        atomic.Uint64
	gaps                   atomic.Uint64
	duplicates             atomic.Uint64
	seqAnomalies           atomic.Uint64
	trackerEvictions       atomic.Uint64
	disconnects            atomic.Uint64
	slowDisconnects        atomic.Uint64
	bufferLimitDisconnects atomic.Uint64
	reconnects             atomic.Uint64
	_                      [64]byte
	// Handlers and shutdown.
	delivered       atomic.Uint64
	handlerErrors   atomic.Uint64
	droppedShutdown atomic.Uint64
}

// throttle lets a log line through at most once per second, so a flood of
// drops costs counters, not log volume.
type throttle struct{ last atomic.Int64 }

func (t *throttle) allow() bool {
	now := time.Now().UnixNano()
	last := t.last.Load()
	if now-last < int64(time.Second) {
		return false
	}
	return t.last.CompareAndSwap(last, now)
}
