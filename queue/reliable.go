package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/runner"
	"github.com/redisbroker/broker/internal/wire"
)

// reliable is one at-least-once consumer: it moves messages from ready into
// its own processing list, and every message leaves that list only by an ack
// (removed), a retry (into delayed), a dead letter, or a release back to
// ready (shutdown, or a reaper after this consumer died).
type reliable struct {
	*base
	name  string
	proc  string // processing list
	retry runner.Backoff

	acks chan ackOp
	wake *wakeup
	// held has one token per value this consumer may hold in its
	// processing list. A token is taken at fetch and returned once the
	// value's outcome is written, so the processing list never exceeds
	// Prefetch: that bounds memory and what a crash can redeliver.
	held chan struct{}

	// backlog is the length of ready as last reported by a fetch or an
	// ack (-1 before any): the fetcher moves batches while it is not 0,
	// and blocks in BLMOVE once the queue was seen empty.
	backlog atomic.Int64

	// known is what this consumer believes its processing list holds:
	// fetched and not yet settled, keyed by a sequence number given at
	// fetch (cheaper to hash than the value). fetching is the most values
	// a batch fetch in flight may move; highWater is the largest
	// len(known)+fetching since the current tick began. A tick that finds
	// the list longer than highWater, twice in a row, asks the fetcher to
	// reconcile: values moved by a BLMOVE whose reply was lost are
	// otherwise never delivered. A BLMOVE in flight is not counted: it
	// blocks for most of its time without having moved anything, and
	// counting it would hide a lost value for as long as the queue stays
	// empty. One that was served during the tick call raises highWater
	// when its reply arrives; one whose reply arrives after the tick's can
	// make that tick suspect, but the next one then knows the value, and a
	// needless reconcile finds nothing to return.
	knownMu   sync.Mutex
	known     map[uint64]string
	seq       uint64 // last sequence number given
	fetching  int
	highWater int
	suspect   int         // consecutive ticks that saw unknown values; tick loop only
	reconcile atomic.Bool // set by the tick loop, cleared by the fetcher

	// mu serialises ticks with the final release, so that no heartbeat
	// re-registers the consumer after it deregistered.
	mu       sync.Mutex
	released bool
}

// ackOp is one settled message for the ack loop, or a barrier (done != nil)
// that is closed once every op queued before it has been written.
type ackOp struct {
	kind     byte   // 'A' ack, 'R' retry, 'D' dead letter
	seq      uint64 // the value's entry in known
	raw      string
	value    []byte // R, D: the value to store, with its attempt updated
	delay    time.Duration
	attempts int
	reason   string
	done     chan struct{}
}

func subscribeReliable(ctx context.Context, b *base, name string) (*subscription, error) {
	q := &reliable{
		base:  b,
		name:  name,
		proc:  b.keys.processingOf(name),
		retry: runner.Backoff{Min: b.cfg.backoffMin, Max: b.cfg.backoffMax},
		acks:  make(chan ackOp, b.cfg.prefetch),
		wake:  newWakeup(),
		held:  make(chan struct{}, b.cfg.prefetch),
		known: make(map[uint64]string, b.cfg.prefetch),
	}
	q.backlog.Store(-1)
	for range b.cfg.prefetch {
		q.held <- struct{}{}
	}
	// A non-empty processing list under our name belongs to a predecessor
	// with the same (explicit) name. If its heartbeat is younger than the
	// lease it may be alive, in another process: sharing the list would
	// hand each other's messages around, so refuse. Otherwise it crashed:
	// return its list now, and start empty.
	reaped, err := q.reap(ctx, name, true)
	if err != nil {
		return nil, fmt.Errorf("queue %s: subscribe: %w", b.topic, err)
	}
	if reaped[0] == -2 {
		return nil, fmt.Errorf("queue %s: subscribe: %w: consumer %q sent a heartbeat %v ago, within the lease of %v: "+
			"it is alive in another process, or crashed less than a lease ago",
			b.topic, ErrConsumerNameInUse, name, time.Duration(reaped[1])*time.Millisecond, b.cfg.lease)
	}
	if reaped[0] > 0 || reaped[1] > 0 {
		b.log.Info("queue: returned messages of a previous consumer with this name",
			"returned", reaped[0], "dead_lettered", reaped[1])
	}
	res, err := b.runTick(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("queue %s: subscribe: %w", b.topic, err)
	}
	// Reap before fetching, so that what dead consumers held goes first.
	q.reapStale(res.stale)
	q.r = runner.New(ctx, runner.Options[*delivery]{
		Concurrency: b.cfg.concurrency,
		Prefetch:    b.cfg.prefetch,
		Work:        q.work,
		OnStop:      q.onStop,
	})
	q.r.GoBackground(q.ackLoop)
	q.r.GoBackground(func(stop <-chan struct{}) {
		tickLoop(stop, b.nextTick(res), q.wake, q.tick)
	})
	q.r.GoBackground(q.sweepLoop)
	q.r.Go(q.fetch)
	return &subscription{r: q.r}, nil
}

// fetch moves batches into the processing list while a backlog exists, and
// blocks in BLMOVE for one message when ready is empty.
func (q *reliable) fetch() {
	k := q.keys
	failures := 0
	for {
		if q.reconcile.Swap(false) {
			q.reconcileOrphans()
		}
		n := q.acquire()
		if n == 0 {
			return
		}
		// A batch while ready was last seen with a backlog (or not seen
		// yet). Once it was seen empty, block instead: after a BLMOVE
		// returned a value, a batch fetch would usually come back empty at
		// moderate rates, one more round trip per message. An ack reply
		// that shows a backlog again switches back to batches.
		if q.backlog.Load() != 0 {
			q.startFetch(n)
			vals, ready, err := q.fetchBatch(n)
			first := q.addKnown(vals) // also ends the fetch
			if err != nil {
				q.release(n)
				failures++
				if !q.sleepErr(q.r.Stopping(), "fetch", failures, err) {
					return
				}
				continue
			}
			failures = 0
			q.backlog.Store(ready)
			if len(vals) > 0 {
				q.dispatch(n, vals, first)
				continue
			}
		}
		q.release(n - 1)
		select {
		case <-q.r.Stopping():
			q.release(1)
			return
		default:
		}
		v, err := q.c.BLMove(q.redisCtx, k.ready, q.proc, "LEFT", "RIGHT", q.cfg.block).Result()
		if err != nil {
			q.release(1)
			if errors.Is(err, redis.Nil) {
				continue // empty for a whole block period: block again
			}
			failures++
			if !q.sleepErr(q.r.Stopping(), "blmove", failures, err) {
				return
			}
			continue
		}
		failures = 0
		vals := []string{v}
		q.dispatch(1, vals, q.addKnown(vals))
	}
}

// dispatch delivers vals, fetched with n reserved slots and tokens, and
// gives back what they did not use. Values dead-lettered by deliver keep
// their held token until the dead letter is written, but give back their
// runner slot.
func (q *reliable) dispatch(n int, vals []string, first uint64) {
	q.r.Release(n - q.deliver(vals, first))
	put(q.held, n-len(vals))
}

// fetchBatch runs fetch.lua for up to n values and returns them, with the
// length of ready after the move.
func (q *reliable) fetchBatch(n int) (vals []string, ready int64, err error) {
	k := q.keys
	reply, err := fetchScript.Run(q.redisCtx, q.c, []string{k.ready, q.proc, k.dead, k.consumers, k.concurrency},
		n, q.cfg.maxValue, q.name, q.cfg.concurrency).Slice()
	if err != nil {
		return nil, 0, err
	}
	if len(reply) < 2 {
		return nil, 0, fmt.Errorf("fetch: reply of %d elements", len(reply))
	}
	ready, _ = reply[0].(int64)
	if registered, _ := reply[1].(int64); registered == 1 {
		q.log.Warn("queue: this consumer had been reaped (no heartbeat within the lease); registered again")
	}
	vals = make([]string, 0, len(reply)-2)
	for _, x := range reply[2:] {
		v, ok := x.(string)
		if !ok {
			// Not reached: every value of a list is a string. The moved
			// values are then unknown to this consumer, and a reconcile
			// returns them to ready.
			return nil, ready, fmt.Errorf("fetch: element of type %T", x)
		}
		vals = append(vals, v)
	}
	return vals, ready, nil
}

// acquire reserves room for up to Prefetch values: runner slots (bounding
// handlers and buffered messages) and held tokens (bounding the processing
// list, which also holds values whose outcome is not yet written). It
// returns 0 once the subscription is stopping.
func (q *reliable) acquire() int {
	n := q.r.Acquire(q.cfg.prefetch)
	if n == 0 {
		return 0
	}
	k := take(q.held, q.r.Stopping(), n)
	q.r.Release(n - k)
	return k
}

// release gives back n runner slots and n held tokens.
func (q *reliable) release(n int) {
	q.r.Release(n)
	put(q.held, n)
}

// deliver decodes fetched values, whose entries in known are first,
// first+1..., and pushes them to the workers. A value that cannot be
// delivered (too large, or a malformed envelope) is dead-lettered with the
// reason. It returns the number pushed.
//
// Decoding copies each value ([]byte(v)): the message's Payload aliases
// the bytes it is decoded from, and the handler owns the message, so it may
// write to them, while v must stay exactly what the processing list holds
// for the ack to remove it.
func (q *reliable) deliver(vals []string, first uint64) int {
	pushed := 0
	for i, v := range vals {
		seq := first + uint64(i)
		if len(v) > q.cfg.maxValue {
			q.deadLetter(v, seq, fmt.Sprintf("value of %d bytes exceeds limit of %d", len(v), q.cfg.maxValue))
			continue
		}
		m, err := wire.Decode([]byte(v))
		if err != nil {
			q.deadLetter(v, seq, err.Error())
			continue
		}
		m.Topic = q.topic
		m.Attempt++ // stored attempts count past deliveries
		q.r.Push(&delivery{msg: m, raw: v, seq: seq, attempt: m.Attempt, idless: m.ID == ""})
		pushed++
	}
	return pushed
}

func (q *reliable) deadLetter(v string, seq uint64, reason string) {
	a, _ := wire.Attempt([]byte(v))
	q.log.Warn("queue: dead-lettering undeliverable value", "reason", reason, "bytes", len(v))
	q.acks <- ackOp{kind: 'D', seq: seq, raw: v, value: []byte(v), attempts: a, reason: truncateReason(reason)}
}

// work runs the handler and queues the outcome for the ack loop.
func (q *reliable) work(ctx context.Context, d *delivery) {
	err := runner.Call(ctx, q.h, d.msg)
	if err == nil {
		q.acks <- ackOp{kind: 'A', seq: d.seq, raw: d.raw}
		return
	}
	a := d.attempt // not d.msg.Attempt: the handler may have changed it
	discard := errors.Is(err, broker.ErrDiscard)
	if ctx.Err() != nil && !discard {
		// The hard stop cut the handler short: not the message's fault.
		// The cut delivery counts, but never as the one that exhausts
		// MaxAttempts, and the message is due again at once, without
		// backoff.
		a = min(a, q.cfg.maxAttempts-1)
		q.log.Debug("queue: handler interrupted by the hard stop; message rescheduled", "attempt", d.attempt)
		q.acks <- ackOp{kind: 'R', seq: d.seq, raw: d.raw, value: q.redeliveryValue(d, a)}
		return
	}
	value := q.redeliveryValue(d, a)
	if discard || a >= q.cfg.maxAttempts {
		q.acks <- ackOp{kind: 'D', seq: d.seq, raw: d.raw, value: value, attempts: a, reason: truncateReason(err.Error())}
		return
	}
	q.acks <- ackOp{kind: 'R', seq: d.seq, raw: d.raw, value: value, delay: q.retry.Delay(a)}
}

// redeliveryValue returns the value to store after delivery a failed: the
// same bytes with the stored attempt set to a. A value without an ID is
// re-encoded with a new one.
func (q *reliable) redeliveryValue(d *delivery, a int) []byte {
	b := []byte(d.raw)
	if _, ok := wire.Attempt(b); ok && !d.idless {
		b[wire.AttemptOffset] = byte(min(a, wire.MaxAttempt) >> 8)
		b[wire.AttemptOffset+1] = byte(min(a, wire.MaxAttempt))
		return b
	}
	m, err := wire.Decode(b) // decode again: the handler may have changed d.msg
	if err != nil {
		return b // not reached: the value decoded when it was fetched
	}
	m.ID = wire.NewID()
	m.Attempt = a
	return wire.Encode(m)
}

// ackLoop writes settled messages in batches: one script call per batch.
func (q *reliable) ackLoop(stop <-chan struct{}) {
	ops := make([]ackOp, 0, maxAckBatch)
	for {
		select {
		case op := <-q.acks:
			ops = q.collect(append(ops[:0], op))
		case <-stop:
			// OnStop flushed behind a barrier; anything queued later is
			// written once more before leaving.
			for {
				select {
				case op := <-q.acks:
					ops = q.collect(append(ops[:0], op))
					q.settle(ops)
				default:
					return
				}
			}
		}
		q.settle(ops)
	}
}

// collect adds whatever is queued, up to a batch.
func (q *reliable) collect(ops []ackOp) []ackOp {
	for len(ops) < maxAckBatch {
		select {
		case op := <-q.acks:
			ops = append(ops, op)
		default:
			return ops
		}
	}
	return ops
}

// settle writes ops, retrying while Redis is unreachable (until the hard
// stop), then releases any barrier among them. A batch that cannot be
// written leaves its messages in the processing list: they are redelivered
// (released at shutdown, or reaped), never lost.
func (q *reliable) settle(ops []ackOp) {
	args := make([]any, 0, 4*len(ops))
	var earliest time.Duration = -1
	for _, op := range ops {
		switch op.kind {
		case 'A':
			args = append(args, "A", op.raw)
		case 'R':
			args = append(args, "R", op.raw, op.value, op.delay.Milliseconds())
			if earliest < 0 || op.delay < earliest {
				earliest = op.delay
			}
		case 'D':
			args = append(args, "D", op.raw, op.value, op.attempts, op.reason)
		}
	}
	if len(args) > 0 {
		keys := []string{q.proc, q.keys.delayed, q.keys.dead, q.keys.ready}
		for failures := 1; ; failures++ {
			reply, err := ackScript.Run(q.redisCtx, q.c, keys, args...).Int64Slice()
			if err == nil {
				if len(reply) == 2 {
					q.backlog.Store(reply[1])
				}
				break
			}
			if q.r.Context().Err() != nil && failures >= cleanupTries {
				q.log.Error("queue: acks not written; their messages will be redelivered",
					"error", fmt.Errorf("queue %s: ack: %w", q.topic, err), "messages", len(ops))
				break
			}
			// Returns at once after the hard stop: a few quick tries, then give up.
			q.sleepErr(q.r.Context().Done(), "ack", failures, err)
		}
		if earliest >= 0 {
			q.wake.set(time.Now().Add(earliest))
		}
	}
	// Written or given up: either way the value is no longer ours to
	// track. One still in the list (a failed write) is then unknown, and a
	// reconcile returns it to ready.
	q.knownMu.Lock()
	for _, op := range ops {
		if op.done == nil {
			delete(q.known, op.seq)
		}
	}
	q.knownMu.Unlock()
	settled := 0
	for _, op := range ops {
		if op.done != nil {
			close(op.done)
		} else {
			settled++
		}
	}
	put(q.held, settled)
}

// onStop runs after every handler returned: flush the acks, then return
// what is left in the processing list (unstarted messages, failed acks) to
// the head of ready and deregister.
func (q *reliable) onStop(ctx context.Context, _ []*delivery) {
	done := make(chan struct{})
	q.acks <- ackOp{done: done}
	<-done
	q.mu.Lock()
	defer q.mu.Unlock()
	q.released = true
	k := q.keys
	for failures := 1; ; failures++ {
		n, err := releaseScript.Run(ctx, q.c, []string{q.proc, k.ready, k.consumers, k.concurrency}, q.name).Int64()
		if err == nil {
			if n > 0 {
				q.log.Debug("queue: returned unfinished messages to the queue", "messages", n)
			}
			return
		}
		if failures >= cleanupTries && q.r.Context().Err() != nil {
			q.log.Error("queue: release failed; a live consumer reaps this one after the lease",
				"error", fmt.Errorf("queue %s: release: %w", q.topic, err))
			return
		}
		q.sleepErr(q.r.Context().Done(), "release", failures, err)
	}
}

// tick heartbeats, promotes due delayed messages and reaps dead consumers.
// It returns when to tick next.
func (q *reliable) tick() time.Duration {
	q.mu.Lock()
	if q.released {
		q.mu.Unlock()
		return time.Hour
	}
	q.beginHeld()
	res, err := q.runTick(q.redisCtx, q.name)
	q.mu.Unlock()
	if err != nil {
		q.log.Warn("queue: tick failed; retrying", "error", fmt.Errorf("queue %s: tick: %w", q.topic, err))
		return min(errBackoffMax, q.cfg.tickInterval())
	}
	if q.holdsUnknown(res.processing) {
		q.suspect++
		if q.suspect >= 2 {
			q.suspect = 0
			q.reconcile.Store(true)
		}
	} else {
		q.suspect = 0
	}
	if res.created {
		q.log.Warn("queue: this consumer had been reaped (no heartbeat within the lease); its messages were redelivered")
	}
	q.reapStale(res.stale)
	return q.nextTick(res)
}

func (q *reliable) reapStale(names []string) {
	for _, name := range names {
		n, err := q.reap(q.redisCtx, name, false)
		if err != nil {
			q.log.Warn("queue: reap failed", "dead_consumer", name, "error", err)
			continue
		}
		if n[0] >= 0 {
			q.log.Info("queue: reaped dead consumer", "dead_consumer", name, "returned", n[0], "dead_lettered", n[1])
		}
	}
}

// reap returns the processing list of consumer name to ready if its
// heartbeat is older than the lease (or, with own, missing). It returns
// {returned, dead-lettered}, or {-1, 0} when the consumer is alive or gone;
// with own, {-2, heartbeat age in ms} when it is alive.
func (q *reliable) reap(ctx context.Context, name string, own bool) ([2]int64, error) {
	k := q.keys
	force := "0"
	if own {
		force = "1"
	}
	v, err := reapScript.Run(ctx, q.c, []string{k.consumers, k.processingOf(name), k.ready, k.dead, k.concurrency},
		name, q.cfg.lease.Milliseconds(), q.cfg.maxAttempts, force, q.cfg.concurrency).Int64Slice()
	if err != nil {
		return [2]int64{}, fmt.Errorf("reap %s: %w", name, err)
	}
	if len(v) != 2 {
		return [2]int64{}, fmt.Errorf("reap %s: reply of %d elements", name, len(v))
	}
	return [2]int64{v[0], v[1]}, nil
}

// take blocks until a token of sem is free (or stop closes: 0), then takes up
// to n without blocking.
func take(sem chan struct{}, stop <-chan struct{}, n int) int {
	if n <= 0 {
		return 0
	}
	select {
	case <-sem:
	case <-stop:
		return 0
	}
	got := 1
	for got < n {
		select {
		case <-sem:
			got++
		default:
			return got
		}
	}
	return got
}

// put returns n tokens to sem. It never blocks: tokens beyond the capacity
// would be a counting bug, and a stuck ack loop a worse one.
func put(sem chan struct{}, n int) {
	for range n {
		select {
		case sem <- struct{}{}:
		default:
			return
		}
	}
}

// beginHeld starts the high-water mark of what this consumer holds, before
// a call that reads its processing list's length.
func (q *reliable) beginHeld() {
	q.knownMu.Lock()
	q.highWater = len(q.known) + q.fetching
	q.knownMu.Unlock()
}

// holdsUnknown reports whether a processing list length read since
// beginHeld shows values this consumer does not know it holds. The length
// was read at some moment of the call; what the consumer held at that
// moment is at most the high-water mark since beginHeld. What it holds
// after the reply can be less (acks written meanwhile), so comparing with
// that would see unknown values where there are none.
func (q *reliable) holdsUnknown(length int64) bool {
	q.knownMu.Lock()
	defer q.knownMu.Unlock()
	return length > int64(q.highWater)
}

// startFetch records a batch fetch of up to n values in flight: until its
// reply is known, the processing list may hold n values this consumer
// cannot name yet.
func (q *reliable) startFetch(n int) {
	q.knownMu.Lock()
	q.fetching = n
	q.highWater = max(q.highWater, len(q.known)+n)
	q.knownMu.Unlock()
}

// addKnown ends the batch fetch in flight, if any, and records the values
// moved. It returns the sequence number of the first; the others follow in
// order.
func (q *reliable) addKnown(vals []string) (first uint64) {
	q.knownMu.Lock()
	first = q.seq + 1
	for _, v := range vals {
		q.seq++
		q.known[q.seq] = v
	}
	q.fetching = 0
	q.highWater = max(q.highWater, len(q.known))
	q.knownMu.Unlock()
	return first
}

// reconcileOrphans returns to ready the values of the processing list this
// consumer does not know it holds. Only the fetcher calls it, between
// fetches, so no value it is about to deliver can be mistaken for one.
func (q *reliable) reconcileOrphans() {
	q.knownMu.Lock()
	args := make([]any, 0, len(q.known))
	for _, v := range q.known {
		args = append(args, v)
	}
	q.knownMu.Unlock()
	n, err := reconcileScript.Run(q.redisCtx, q.c, []string{q.proc, q.keys.ready}, args...).Int64()
	if err != nil {
		q.log.Warn("queue: reconcile failed; retried on a later tick", "error", fmt.Errorf("queue %s: reconcile: %w", q.topic, err))
		return
	}
	if n > 0 {
		q.log.Warn("queue: returned values this consumer held without knowing (a fetch reply was lost)", "messages", n)
	}
}
