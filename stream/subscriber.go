package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/runner"
	"github.com/redisbroker/broker/internal/wire"
)

var (
	_ broker.Subscriber   = (*Subscriber)(nil)
	_ broker.Subscription = (*Subscription)(nil)
)

// Subscriber consumes streams through a consumer group. It is safe for
// concurrent use; each Subscribe starts an independent Subscription. The
// first subscription to a topic uses the consumer name as is, so a restarted
// process finds its pending entries; further subscriptions of the same
// Subscriber to the same topic get "-2", "-3"... appended, because two
// running consumers must never share a name. It never closes the client.
type Subscriber struct {
	c   redis.UniversalClient
	cfg *config

	mu     sync.Mutex
	topics map[string]int // subscriptions started per topic
}

// NewSubscriber returns a Subscriber on c, which it never closes. Options that
// apply only to a Publisher are rejected with broker.ErrInvalidOption.
//
// The client needs a connection per subscription for its blocked XREADGROUP
// plus a few for acks and recovery: size its pool accordingly.
func NewSubscriber(c redis.UniversalClient, opts ...Option) (*Subscriber, error) {
	if c == nil {
		return nil, fmt.Errorf("stream: %w: nil client", broker.ErrInvalidOption)
	}
	cfg, err := newConfig(forSubscriber, opts)
	if err != nil {
		return nil, err
	}
	return &Subscriber{c: c, cfg: cfg, topics: make(map[string]int)}, nil
}

// entry is one stream entry fetched for this consumer and not finished.
type entry struct {
	id     string
	values map[string]any
	// attempt is the entry's delivery count in the group; known is false
	// when it could not be looked up and attempt is a guess, on which no
	// entry is dead-lettered.
	attempt int
	known   bool
}

// holdState is where a held entry stands.
type holdState uint8

const (
	// holdQueued: waiting in the prefetch buffer, or its handler is running.
	holdQueued holdState = iota
	// holdSettling: its outcome is decided (acked by the handler, or being
	// dead-lettered) and not yet confirmed by Redis.
	holdSettling
	// holdLost: a lease renewal found it owned by another consumer; it is
	// not started, and no longer renewed.
	holdLost
)

// Subscription is a running consumer of one topic in one group. Subscribe
// returns it as a broker.Subscription; type-assert to *Subscription for
// Stats and Consumer.
type Subscription struct {
	c        redis.UniversalClient
	cfg      *config
	topic    string
	group    string
	consumer string
	h        broker.Handler
	log      *slog.Logger
	r        *runner.Runner[entry]
	// bg is for background calls (acks, leases, dead letters, hand back):
	// it keeps the Subscribe context's values but not its cancellation,
	// because acks must still reach Redis after the hard stop.
	bg context.Context

	mu sync.Mutex
	// held are the entries fetched and not settled. Their leases are
	// renewed until Redis confirmed their ack or dead letter, or they were
	// handed back, or left pending for a retry.
	held      map[string]holdState
	acks      []string      // acked by handlers, not yet sent
	ackSignal chan struct{} // capacity 1: acks are waiting
	// interrupted are held entries whose handler the hard stop cut short;
	// OnStop hands them back with the unstarted ones.
	interrupted []string
	// retries are entries left pending after a handler error, with the time
	// their backoff ends; the fetcher claims them then.
	retries []retry
	// deletedSeen are IDs of entries reported deleted while pending.
	deletedSeen map[string]struct{}
	// outstanding counts entries fetched and not settled: held, or acked by
	// the handler but not yet by Redis. The fetcher keeps it <= Prefetch, so
	// a crash repeats at most Prefetch handled-but-unacked entries, and
	// memory stays bounded even when XACK falls behind.
	outstanding int
	roomSignal  chan struct{} // capacity 1: outstanding went down

	// leaseMu orders the commands that set the idle time of held entries: a
	// lease renewal must not reset the idle time that a retry backoff or a
	// hand back has just set.
	leaseMu sync.Mutex

	// lastRead is the ID of the last entry read with ">"; the fetcher owns it.
	lastRead string

	stats subStats
}

type subStats struct {
	delivered, acked, failed, dead, deleted, claimed, recreated, handedBack, interrupted, leasesLost atomic.Int64
}

// Stats are counters of one Subscription.
type Stats struct {
	// Delivered counts handler calls.
	Delivered int64
	// Acked counts entries acknowledged after their handler returned nil.
	Acked int64
	// Failed counts handler errors (and panics) left pending for a retry.
	Failed int64
	// DeadLettered counts entries moved to the dead-letter stream.
	DeadLettered int64
	// DeletedWhilePending counts pending entries found deleted (XDEL or
	// trimming) before they were acked: they are acked and skipped.
	DeletedWhilePending int64
	// Claimed counts entries claimed from idle consumers (or from this
	// consumer after a handler error).
	Claimed int64
	// GroupRecreated counts NOGROUP errors answered by recreating the group.
	GroupRecreated int64
	// HandedBack counts fetched entries returned unstarted at Shutdown.
	HandedBack int64
	// Interrupted counts handler calls cut short by the hard stop (the
	// Shutdown deadline or the Subscribe context): their entries are handed
	// back, neither failed nor dead-lettered (see the package doc).
	Interrupted int64
	// LeasesLost counts held entries that a lease renewal found claimed by
	// another consumer (its renewal came too late) or deleted: they are no
	// longer renewed, and not started if they had not been.
	LeasesLost int64
}

// Stats returns the Subscription's counters.
func (s *Subscription) Stats() Stats {
	return Stats{
		Delivered:           s.stats.delivered.Load(),
		Acked:               s.stats.acked.Load(),
		Failed:              s.stats.failed.Load(),
		DeadLettered:        s.stats.dead.Load(),
		DeletedWhilePending: s.stats.deleted.Load(),
		Claimed:             s.stats.claimed.Load(),
		GroupRecreated:      s.stats.recreated.Load(),
		HandedBack:          s.stats.handedBack.Load(),
		Interrupted:         s.stats.interrupted.Load(),
		LeasesLost:          s.stats.leasesLost.Load(),
	}
}

// Consumer returns the consumer name of the Subscription in its group.
func (s *Subscription) Consumer() string { return s.consumer }

// Shutdown stops reading, waits for running handlers, flushes their acks and
// hands back the entries fetched but not started (see the package doc). It
// returns ctx.Err() if ctx ends first, cancelling the handlers' context.
func (s *Subscription) Shutdown(ctx context.Context) error { return s.r.Shutdown(ctx) }

// Done is closed once every goroutine of the Subscription has returned.
func (s *Subscription) Done() <-chan struct{} { return s.r.Done() }

// Subscribe creates the group if needed (XGROUP CREATE ... MKSTREAM at the
// start ID) and starts consuming topic. It returns once the group exists, so
// an entry added after Subscribe returns is delivered to the group.
// Cancelling ctx is the hard stop.
func (sb *Subscriber) Subscribe(ctx context.Context, topic string, h broker.Handler) (broker.Subscription, error) {
	if err := checkTopic(topic); err != nil {
		return nil, fmt.Errorf("stream: subscribe: %w", err)
	}
	if h == nil {
		return nil, fmt.Errorf("stream %s: subscribe: %w: nil handler", topic, broker.ErrInvalidOption)
	}
	consumer := sb.cfg.consumer
	sb.mu.Lock()
	sb.topics[topic]++
	n := sb.topics[topic]
	sb.mu.Unlock()
	if n > 1 {
		consumer += "-" + strconv.Itoa(n)
	}
	s := &Subscription{
		c:          sb.c,
		cfg:        sb.cfg,
		topic:      topic,
		group:      sb.cfg.group,
		consumer:   consumer,
		h:          h,
		log:        sb.cfg.logger.With("topic", topic, "group", sb.cfg.group, "consumer", consumer),
		bg:         context.WithoutCancel(ctx),
		held:       make(map[string]holdState),
		ackSignal:  make(chan struct{}, 1),
		roomSignal: make(chan struct{}, 1),
	}
	if err := s.createGroup(ctx, sb.cfg.startID); err != nil {
		return nil, err
	}
	s.r = runner.New(ctx, runner.Options[entry]{
		Concurrency: sb.cfg.concurrency,
		Prefetch:    sb.cfg.prefetch,
		Work:        s.work,
		OnStop:      s.handBack,
	})
	s.r.Go(s.fetch)
	s.r.GoBackground(s.ackLoop)
	s.r.GoBackground(s.leaseLoop)
	return s, nil
}

// createGroup creates the group, and the stream if missing. An existing
// group (BUSYGROUP) keeps its position.
func (s *Subscription) createGroup(ctx context.Context, start string) error {
	err := s.c.XGroupCreateMkStream(ctx, s.topic, s.group, start).Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return wrapErr(s.topic, "create group "+s.group, err)
	}
	return nil
}

// pushBatch records entries as held (their leases are renewed from now on)
// and hands them to the workers, taking the lock once per batch.
func (s *Subscription) pushBatch(es []entry) {
	if len(es) == 0 {
		return
	}
	s.mu.Lock()
	for _, e := range es {
		s.held[e.id] = holdQueued
	}
	s.outstanding += len(es)
	s.mu.Unlock()
	for _, e := range es {
		s.r.Push(e)
	}
}

// waitRoom waits until fewer than Prefetch entries are outstanding and
// returns how many more may be fetched; false once stop is closed.
func (s *Subscription) waitRoom(stop <-chan struct{}) (int, bool) {
	for {
		s.mu.Lock()
		room := s.cfg.prefetch - s.outstanding
		s.mu.Unlock()
		if room > 0 {
			return room, true
		}
		select {
		case <-s.roomSignal:
		case <-stop:
			return 0, false
		}
	}
}

// settle ends n outstanding entries: acked by Redis, left for a retry,
// dead-lettered or handed back.
func (s *Subscription) settle(n int) {
	s.mu.Lock()
	s.outstanding -= n
	s.mu.Unlock()
	select {
	case s.roomSignal <- struct{}{}:
	default:
	}
}

// isHeld reports whether this subscription is already working on id.
func (s *Subscription) isHeld(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.held[id]
	return ok
}

// setState moves a held entry to st.
func (s *Subscription) setState(id string, st holdState) {
	s.mu.Lock()
	if _, ok := s.held[id]; ok {
		s.held[id] = st
	}
	s.mu.Unlock()
}

// release ends an entry that this subscription will not settle any further.
func (s *Subscription) release(id string) {
	s.mu.Lock()
	delete(s.held, id)
	s.mu.Unlock()
	s.settle(1)
}

// work runs the handler for one entry and settles it: ack, dead letter,
// hand back (hard stop), or leave pending for a retry after its backoff.
func (s *Subscription) work(ctx context.Context, e entry) {
	s.mu.Lock()
	lost := s.held[e.id] == holdLost
	s.mu.Unlock()
	if lost {
		// Another consumer owns it now and delivers it.
		s.release(e.id)
		return
	}
	msg := decodeEntry(s.topic, e.id, e.values)
	msg.Attempt = e.attempt
	hctx := ctx
	if msg.ID != e.id {
		// Foreign entries, whose ID is the entry ID, skip the allocation.
		hctx = &entryCtx{Context: ctx, id: e.id}
	}
	s.stats.delivered.Add(1)
	err := runner.Call(hctx, s.h, msg)
	switch {
	case err == nil:
		s.ack(e.id)
	case errors.Is(err, broker.ErrDiscard):
		s.deadLetterHeld(ctx, e, "discarded: "+err.Error())
	case ctx.Err() != nil:
		// The hard stop: the handler most likely returned ctx.Err(). That
		// is not the message's fault, so it is neither a failed attempt nor
		// a dead letter: the entry is handed back at stop.
		s.interrupt(e.id)
	case e.known && e.attempt >= s.cfg.maxAttempts:
		s.deadLetterHeld(ctx, e, fmt.Sprintf("attempt %d of %d failed: %v", e.attempt, s.cfg.maxAttempts, err))
	default:
		s.stats.failed.Add(1)
		s.retryLater(e, err)
	}
}

// interrupt keeps an entry whose handler the hard stop cut short, for OnStop
// to hand back; its lease is renewed until then.
func (s *Subscription) interrupt(id string) {
	s.stats.interrupted.Add(1)
	s.mu.Lock()
	s.interrupted = append(s.interrupted, id)
	s.mu.Unlock()
}

// ack queues id for the ack loop, which sends one XACK per flush. The entry
// stays held, and its lease renewed, until the XACK succeeded: a stalled ack
// must not let another consumer claim the entry.
func (s *Subscription) ack(id string) {
	s.mu.Lock()
	s.held[id] = holdSettling
	s.acks = append(s.acks, id)
	s.mu.Unlock()
	select {
	case s.ackSignal <- struct{}{}:
	default:
	}
}

// deleted acks pending entries that no longer exist (XDEL or trimming while
// they were pending), so they are not read or claimed forever. One warning
// per batch.
func (s *Subscription) deleted(ids []string) {
	ids = s.newlyDeleted(ids)
	if len(ids) == 0 {
		return
	}
	s.log.Warn("stream: pending entries were deleted before they were acked; acking them", "count", len(ids), "first_id", ids[0])
	s.mu.Lock()
	s.acks = append(s.acks, ids...)
	s.outstanding += len(ids) // settled by the flush, like every queued ack
	s.mu.Unlock()
	select {
	case s.ackSignal <- struct{}{}:
	default:
	}
}

// maxDeletedSeen bounds the IDs remembered by newlyDeleted.
const maxDeletedSeen = 4096

// newlyDeleted returns the IDs of ids not reported deleted before, and
// counts them in Stats.DeletedWhilePending. One deleted entry can be reported
// twice: read without fields by the drain, then, before its XACK, dropped by
// an XAUTOCLAIM (Redis 7 checks for deleted entries before the idle time).
func (s *Subscription) newlyDeleted(ids []string) []string {
	if len(ids) == 0 {
		return nil
	}
	s.mu.Lock()
	if s.deletedSeen == nil || len(s.deletedSeen) >= maxDeletedSeen {
		s.deletedSeen = make(map[string]struct{})
	}
	fresh := ids[:0:0]
	for _, id := range ids {
		if _, ok := s.deletedSeen[id]; !ok {
			s.deletedSeen[id] = struct{}{}
			fresh = append(fresh, id)
		}
	}
	s.mu.Unlock()
	s.stats.deleted.Add(int64(len(fresh)))
	return fresh
}

// maxAckBatch bounds the IDs of one XACK, keeping each command's reply time
// short for the other clients of the server.
const maxAckBatch = 4096

// ackLoop flushes acks whenever some are waiting: one XACK per flush, so the
// acks that pile up while one XACK is in flight go out together in the next.
// After the stop signal it flushes what is left and returns.
func (s *Subscription) ackLoop(stop <-chan struct{}) {
	failures := 0
	for {
		select {
		case <-s.ackSignal:
		case <-stop:
			for range 3 {
				if s.flushAcks() == nil {
					return
				}
				runner.Sleep(s.r.Done(), s.cfg.backoff.Delay(1))
			}
			s.mu.Lock()
			lost := len(s.acks)
			s.mu.Unlock()
			if lost > 0 {
				s.log.Error("stream: acks not sent at shutdown; the entries will be delivered again", "count", lost)
			}
			return
		}
		if err := s.flushAcks(); err != nil {
			failures++
			d := s.cfg.backoff.Delay(failures)
			s.log.Warn("stream: ack failed; retrying", "err", err, "retry_in", d)
			runner.Sleep(stop, d)
			select {
			case s.ackSignal <- struct{}{}: // retry even if no new ack comes
			default:
			}
			continue
		}
		failures = 0
	}
}

// flushAcks sends the waiting acks and releases their entries once Redis
// confirmed them. On error they are put back for the next flush, except
// after NOGROUP: the group's pending list is gone with it.
func (s *Subscription) flushAcks() error {
	s.mu.Lock()
	ids := s.acks
	s.acks = nil
	s.mu.Unlock()
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), maxAckBatch)]
		err := s.c.XAck(s.bg, s.topic, s.group, chunk...).Err()
		if err != nil && !redis.HasErrorPrefix(err, "NOGROUP") {
			s.mu.Lock()
			s.acks = append(ids, s.acks...)
			s.mu.Unlock()
			return wrapErr(s.topic, "ack", err)
		}
		if err == nil {
			s.stats.acked.Add(int64(len(chunk)))
		}
		s.mu.Lock()
		for _, id := range chunk {
			delete(s.held, id)
		}
		s.mu.Unlock()
		s.settle(len(chunk))
		ids = ids[len(chunk):]
	}
	return nil
}

// decodeEntry turns a stream entry into a message: the envelope fields, or a
// foreign entry's fields as metadata (wire.DecodeFields). The "id" field is
// the message ID; an entry without one (another client's) takes its entry ID.
// A message without a "time" field gets the time of its entry ID.
func decodeEntry(topic, id string, values map[string]any) *broker.Message {
	m := wire.DecodeFields(values)
	m.Topic = topic
	if m.ID == "" {
		m.ID = id
	}
	if m.Time.IsZero() {
		if ms, _, ok := parseEntryID(id); ok && ms <= 1<<62/uint64(time.Millisecond) {
			m.Time = time.UnixMilli(int64(ms))
		}
	}
	return m
}

// entryCtx is the handler's context for an entry whose message ID is not its
// entry ID: one allocation per message, where context.WithValue would take
// two (the context and the boxed string).
type entryCtx struct {
	context.Context
	id string
}

type entryIDKey struct{}

func (c *entryCtx) Value(key any) any {
	if key == (entryIDKey{}) {
		return c.id
	}
	return c.Context.Value(key)
}

// EntryID returns the stream entry ID of msg inside a Handler called by a
// Subscription, given the handler's ctx: the ID to Replay from, or to find in
// XPENDING. Messages from Publish carry their own ID (the "id" field), so
// the entry ID travels in ctx; for an entry added by another client without
// an "id" field, msg.ID is the entry ID.
func EntryID(ctx context.Context, msg *broker.Message) string {
	if c, ok := ctx.(*entryCtx); ok {
		return c.id
	}
	if id, ok := ctx.Value(entryIDKey{}).(string); ok {
		return id
	}
	return msg.ID
}
