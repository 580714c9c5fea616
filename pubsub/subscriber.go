package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/runner"
)

var (
	_ broker.Subscriber   = (*Subscriber)(nil)
	_ broker.Subscription = (*Subscription)(nil)
)

// slowWindow is how recently the buffer must have been full for a
// disconnect to count as a slow-subscriber disconnect.
const slowWindow = time.Second

// probeTimeout bounds the TIME and INFO calls made after a (re)subscription.
const probeTimeout = time.Second

// redialBackoff paces redials while Redis is unreachable. go-redis redials
// once by itself on the failing Receive; this spaces out the next attempts.
func redialBackoff() runner.Backoff {
	return runner.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}
}

// Subscriber subscribes handlers to channels. It is safe for concurrent use
// and holds no connection itself: each subscription has its own.
type Subscriber struct {
	c   redis.UniversalClient
	cfg config
}

// NewSubscriber returns a Subscriber on c, which it never closes. Each
// subscription takes one dedicated connection from outside c's pool.
func NewSubscriber(c redis.UniversalClient, opts ...Option) (*Subscriber, error) {
	if c == nil {
		return nil, fmt.Errorf("pubsub: %w: nil client", broker.ErrInvalidOption)
	}
	cfg, err := newConfig(false, opts)
	if err != nil {
		return nil, err
	}
	return &Subscriber{c: c, cfg: cfg}, nil
}

// Subscribe is Listen returning the broker.Subscription interface.
func (s *Subscriber) Subscribe(ctx context.Context, topic string, h broker.Handler) (broker.Subscription, error) {
	sub, err := s.Listen(ctx, topic, h)
	if err != nil {
		return nil, err // not a typed nil in an interface
	}
	return sub, nil
}

// Listen subscribes h to the channel topic (a pattern with WithPattern) and
// returns once Redis has confirmed the subscription: every message
// published after Listen returns reaches this subscription, unless it is
// lost in one of the ways the package doc lists, each of which Stats counts.
//
// Cancelling ctx is the hard stop; Shutdown is the graceful one.
func (s *Subscriber) Listen(ctx context.Context, topic string, h broker.Handler) (*Subscription, error) {
	if topic == "" {
		return nil, fmt.Errorf("pubsub: subscribe: %w: empty topic", broker.ErrInvalidOption)
	}
	if h == nil {
		return nil, fmt.Errorf("pubsub %s: subscribe: %w: nil handler", topic, broker.ErrInvalidOption)
	}
	sub := &Subscription{
		c:      s.c,
		cfg:    s.cfg,
		topic:  topic,
		h:      h,
		log:    s.cfg.logger.With("topic", topic),
		buf:    newRing(s.cfg.buffer),
		kind:   "subscribe",
		unkind: "unsubscribe",
	}
	switch {
	case s.cfg.pattern:
		sub.kind, sub.unkind = "psubscribe", "punsubscribe"
	case s.cfg.sharded:
		sub.kind, sub.unkind = "ssubscribe", "sunsubscribe"
	}
	ps, err := sub.open(ctx)
	if err == nil {
		err = sub.confirm(ctx, ps)
	}
	if err != nil {
		_ = ps.Close()
		return nil, sub.wrap("subscribe", err)
	}
	sub.probe(ctx)
	sub.ps = ps
	sub.r = runner.New(ctx, runner.Options[*broker.Message]{
		Concurrency: s.cfg.concurrency,
		// The ring is the buffer; the runner holds only what the workers
		// are running, so memory is bounded by buffer + concurrency.
		Prefetch: s.cfg.concurrency,
		Work:     sub.work,
		OnStop:   sub.onStop,
	})
	sub.r.Go(sub.read)
	sub.r.Go(sub.pump)
	sub.r.Go(sub.closeOnStop)
	if s.cfg.healthCheck > 0 {
		sub.r.Go(sub.health)
	}
	sub.log.Debug("pubsub: subscribed", "kind", sub.kind)
	return sub, nil
}

// Subscription is one running subscription. It reads its connection in its
// own goroutine into a bounded buffer, from which up to WithConcurrency
// handlers take messages.
type Subscription struct {
	c      redis.UniversalClient
	cfg    config
	topic  string
	kind   string // subscribe, psubscribe or ssubscribe: the confirmation to expect
	unkind string // the matching unsubscription, which we never send
	h      broker.Handler
	log    *slog.Logger
	r      *runner.Runner[*broker.Message]
	buf    *ring
	n      counters

	mu      sync.Mutex
	ps      *redis.PubSub // nil once stopped
	retired *redis.PubSub // closed by the health check, to be replaced
	closed  bool
	err     error // why the subscription ended by itself

	// activity counts what is read from the connection other than messages
	// (which n.received counts); the health check pings only when both
	// stand still.
	activity atomic.Uint64
	// blocked is set while the read loop waits for room (Block): the
	// connection is then silent on purpose.
	blocked atomic.Bool

	// Owned by the read loop (and by Listen before it starts).
	gaps     gapTracker
	down     bool      // disconnected, not yet resubscribed
	lastFull time.Time // when the buffer was last found full
	// The server's client_output_buffer_limit_disconnections at the last
	// (re)subscription; oblKnown is false when the server does not report
	// it (before Redis 7.2).
	obl      int64
	oblKnown bool

	dropLog, gapLog, errLog throttle
}

// Topic returns the channel or pattern subscribed to.
func (s *Subscription) Topic() string { return s.topic }

// Shutdown stops reading, waits for running handlers, and drops what was
// buffered (counted in Stats.DroppedShutdown: pub/sub cannot hand messages
// back). If ctx ends first, it cancels the handlers' context and returns
// ctx.Err().
func (s *Subscription) Shutdown(ctx context.Context) error { return s.r.Shutdown(ctx) }

// Done is closed once every goroutine of the subscription has returned:
// after Shutdown, after the Subscribe ctx was cancelled, or when the
// subscription ended by itself (see Err).
func (s *Subscription) Done() <-chan struct{} { return s.r.Done() }

// Err returns why the subscription ended by itself, or nil. It ends by
// itself when the Redis client it reads through is closed under it: it then
// shuts down as with Shutdown (running handlers finish, buffered messages
// are counted in Stats.DroppedShutdown), Done closes, and Err returns an
// error matching broker.ErrClosed.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Stats returns the subscription's counters. Safe to call at any time,
// also after Shutdown.
func (s *Subscription) Stats() Stats {
	buffered, high := s.buf.len()
	return Stats{
		Received:               s.n.received.Load(),
		Delivered:              s.n.delivered.Load(),
		HandlerErrors:          s.n.handlerErrors.Load(),
		DroppedOverflow:        s.n.droppedOverflow.Load(),
		DroppedMalformed:       s.n.droppedMalformed.Load(),
		DroppedOversize:        s.n.droppedOversize.Load(),
		DroppedShutdown:        s.n.droppedShutdown.Load(),
		Gaps:                   s.n.gaps.Load(),
		Duplicates:             s.n.duplicates.Load(),
		SeqAnomalies:           s.n.seqAnomalies.Load(),
		TrackerEvictions:       s.n.trackerEvictions.Load(),
		Disconnects:            s.n.disconnects.Load(),
		SlowDisconnects:        s.n.slowDisconnects.Load(),
		BufferLimitDisconnects: s.n.bufferLimitDisconnects.Load(),
		Reconnects:             s.n.reconnects.Load(),
		Buffered:               buffered,
		BufferHighWater:        high,
		BufferCapacity:         len(s.buf.items),
	}
}

// open creates a PubSub and sends the subscribe command. The PubSub
// remembers the topic even when the write fails, and redials and
// resubscribes on its next Receive.
func (s *Subscription) open(ctx context.Context) (*redis.PubSub, error) {
	switch s.kind {
	case "psubscribe":
		ps := s.c.PSubscribe(ctx)
		return ps, ps.PSubscribe(ctx, s.topic)
	case "ssubscribe":
		ps := s.c.SSubscribe(ctx)
		return ps, ps.SSubscribe(ctx, s.topic)
	default:
		ps := s.c.Subscribe(ctx)
		return ps, ps.Subscribe(ctx, s.topic)
	}
}

// confirm reads until Redis confirms the subscription. SUBSCRIBE itself has
// no reply: the confirmation arrives as the first message on the connection.
func (s *Subscription) confirm(ctx context.Context, ps *redis.PubSub) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultConfirmTimeout)
	defer cancel()
	for {
		v, err := ps.Receive(ctx)
		if err != nil {
			return err
		}
		if m, ok := v.(*redis.Subscription); ok && m.Kind == s.kind && m.Channel == s.topic {
			return nil
		}
	}
}

// probe reads, once the subscription is confirmed, the server's TIME (so
// that loss at the start of a publisher that starts later can be counted)
// and its count of output-buffer-limit disconnections. Failures only leave
// them unknown.
func (s *Subscription) probe(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	node, err := s.node(ctx)
	if err != nil {
		s.log.Debug("pubsub: finding the channel's node failed", "err", err)
		return
	}
	pipe := node.Pipeline()
	tm := pipe.Time(ctx)
	info := pipe.Info(ctx, "stats")
	_, _ = pipe.Exec(ctx)
	if t, err := tm.Result(); err == nil && t.UnixMicro() > 0 {
		s.gaps.confirmed = uint64(t.UnixMicro())
	} else {
		s.log.Debug("pubsub: reading the server time failed; loss at a new publisher's start will not be counted", "err", err)
	}
	if v, err := info.Result(); err == nil {
		s.obl, s.oblKnown = infoField(v, "client_output_buffer_limit_disconnections")
	}
}

// node returns the client for the server the subscription's channel lives
// on: its slot's master for a sharded channel on a Cluster, else c.
func (s *Subscription) node(ctx context.Context) (redis.Cmdable, error) {
	if cc, ok := s.c.(*redis.ClusterClient); ok && s.cfg.sharded {
		return cc.MasterForKey(ctx, s.topic)
	}
	return s.c, nil
}

// infoField returns an integer field of an INFO reply.
func infoField(info, name string) (int64, bool) {
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == name {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

func (s *Subscription) current() *redis.PubSub {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ps
}

func (s *Subscription) stopping() bool {
	select {
	case <-s.r.Stopping():
		return true
	default:
		return false
	}
}

// What the read loop does after a failed Receive.
const (
	recvIgnore = iota // nothing is wrong with the subscription
	recvRetry         // it is down: read again after a backoff
	recvEnd           // it cannot continue: return
)

// read is the loop that owns the connection. It uses Receive rather than
// go-redis's Channel, which buffers 100 messages and drops the next one
// after a minute with only a log line: here every message goes into our
// buffer or into a counter.
func (s *Subscription) read() {
	ctx := s.r.Context()
	failures := 0
	for {
		ps := s.current()
		if ps == nil {
			return
		}
		// No deadline: the read blocks until a message arrives or the
		// connection is closed (by Redis, by closeOnStop, by the health
		// check). go-redis ignores ctx cancellation on a blocked read.
		v, err := ps.Receive(ctx)
		if err != nil {
			if s.stopping() {
				return
			}
			switch s.receiveError(ctx, ps, err) {
			case recvIgnore:
				continue
			case recvEnd:
				return
			}
			failures++
			if failures > 1 && !runner.Sleep(s.r.Stopping(), redialBackoff().Delay(failures-1)) {
				return
			}
			continue
		}
		failures = 0
		switch m := v.(type) {
		case *redis.Message:
			s.receive(m) // counted in received, which the health check watches too
		case *redis.Subscription:
			s.activity.Add(1)
			s.subscription(ps, m)
		default:
			s.activity.Add(1)
		}
	}
}

// receiveError handles an error from Receive.
func (s *Subscription) receiveError(ctx context.Context, ps *redis.PubSub, err error) int {
	if strings.HasPrefix(err.Error(), "redis: unsupported pubsub") {
		if s.errLog.allow() {
			s.log.Warn("pubsub: unexpected message on subscription connection", "err", err)
		}
		return recvIgnore
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		// An error reply. We send nothing but the subscription and PINGs,
		// so it is a refused (re)subscription: NOPERM after an ACL change,
		// CLUSTERDOWN or MOVED after a slot moved, LOADING after a
		// restart. The connection is healthy but subscribed to nothing, and
		// go-redis would never try again: replace it.
		s.lost(err)
		if s.errLog.allow() {
			s.log.Warn("pubsub: Redis refused the subscription; retrying", "err", err)
		}
		s.replace(ps)
		return recvRetry
	}
	s.mu.Lock()
	retired := s.retired == ps
	s.mu.Unlock()
	if errors.Is(err, redis.ErrClosed) && !retired && s.clientClosed(ctx) {
		s.end(err)
		return recvEnd
	}
	s.lost(err)
	if retired || errors.Is(err, redis.ErrClosed) {
		s.replace(ps)
	}
	return recvRetry
}

// clientClosed reports whether the caller closed the client.
func (s *Subscription) clientClosed(ctx context.Context) bool {
	return errors.Is(s.c.Ping(ctx).Err(), redis.ErrClosed)
}

// end ends the subscription by itself, as Shutdown would.
func (s *Subscription) end(err error) {
	err = s.wrap("receive", err)
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	s.log.Error("pubsub: the Redis client was closed; the subscription ends", "err", err)
	// Shutdown waits for the read loop, which calls end, so it runs on its
	// own. It returns once the subscription is done.
	go func() { _ = s.r.Shutdown(context.WithoutCancel(s.r.Context())) }()
}

// lost records the start of an outage (once per outage).
func (s *Subscription) lost(err error) {
	if s.down {
		return
	}
	s.down = true
	s.n.disconnects.Add(1)
	if s.blocked.Load() || time.Since(s.lastFull) < slowWindow {
		s.n.slowDisconnects.Add(1)
		s.log.Warn("pubsub: disconnected while falling behind; possibly closed by Redis for exceeding client-output-buffer-limit pubsub; messages published meanwhile are lost and counted as gaps",
			"err", err)
	} else {
		s.log.Warn("pubsub: disconnected; messages published until the resubscription are lost and counted as gaps",
			"err", err)
	}
}

// replace swaps the PubSub ps, which can no longer deliver (closed by the
// health check, or unsubscribed or refused by Redis), for a new one.
func (s *Subscription) replace(old *redis.PubSub) {
	ps, err := s.open(s.r.Context())
	if err != nil {
		// The new PubSub keeps the topic and redials on its next Receive.
		s.log.Debug("pubsub: resubscribe failed; retrying", "err", err)
	}
	s.mu.Lock()
	if s.closed || s.ps != old {
		s.mu.Unlock()
		_ = ps.Close()
		return
	}
	s.ps, s.retired = ps, nil
	s.mu.Unlock()
	_ = old.Close()
}

// subscription handles a subscription message from Redis.
func (s *Subscription) subscription(ps *redis.PubSub, m *redis.Subscription) {
	if m.Channel != s.topic {
		return
	}
	switch m.Kind {
	case s.kind:
		// The first confirmation was consumed by Listen: this is go-redis
		// (or replace) resubscribing on a new connection.
		if !s.down {
			// go-redis redialled by itself (after a failed PING write)
			// without Receive reporting an error.
			s.lost(errors.New("connection replaced by go-redis"))
		}
		s.down = false
		s.n.reconnects.Add(1)
		s.log.Info("pubsub: resubscribed")
		s.checkBufferLimit()
	case s.unkind:
		// We never unsubscribe (we close), so Redis did: on Cluster when a
		// sharded channel's slot moved or was removed. go-redis keeps the
		// dead subscription; a new one finds the slot's new owner.
		s.lost(fmt.Errorf("redis sent %s for the channel", m.Kind))
		s.replace(ps)
	}
}

// checkBufferLimit compares, after a resubscription, the server's count of
// client-output-buffer-limit disconnections with the last one seen.
func (s *Subscription) checkBufferLimit() {
	if !s.oblKnown {
		return
	}
	ctx, cancel := context.WithTimeout(s.r.Context(), probeTimeout)
	defer cancel()
	node, err := s.node(ctx)
	if err != nil {
		return
	}
	info, err := node.Info(ctx, "stats").Result()
	if err != nil {
		return
	}
	n, ok := infoField(info, "client_output_buffer_limit_disconnections")
	if !ok {
		return
	}
	if n > s.obl {
		s.n.bufferLimitDisconnects.Add(1)
		s.log.Warn("pubsub: Redis counted client-output-buffer-limit disconnections during the outage (of this or another client)",
			"count", n-s.obl)
	}
	s.obl = n
}

func (s *Subscription) receive(rm *redis.Message) {
	s.n.received.Add(1)
	if len(rm.Payload) > s.cfg.maxValue {
		s.n.droppedOversize.Add(1)
		if !s.cfg.raw {
			s.track(rm.Channel, stampOf(rm.Payload))
		}
		if s.dropLog.allow() {
			s.log.Warn("pubsub: dropped oversized message", "channel", rm.Channel,
				"bytes", len(rm.Payload), "limit", s.cfg.maxValue, "dropped_oversize", s.n.droppedOversize.Load())
		}
		return
	}
	m := &broker.Message{}
	if s.cfg.raw {
		// A copy: the handler owns the message and may modify its
		// payload, which must not write into a Go string.
		m.Payload = []byte(rm.Payload)
	} else {
		res, err := decodeValue(rm.Payload, m)
		if err != nil {
			s.n.droppedMalformed.Add(1)
			if s.dropLog.allow() {
				s.log.Warn("pubsub: dropped malformed message", "channel", rm.Channel, "err", err,
					"dropped_malformed", s.n.droppedMalformed.Load())
			}
			return
		}
		s.track(rm.Channel, res)
	}
	m.Topic = rm.Channel
	m.Attempt = 0 // pub/sub cannot know

	if s.cfg.overflow == Block {
		if _, full := s.buf.offer(m, Block); !full {
			return
		}
		s.lastFull = time.Now()
		s.blocked.Store(true)
		ok := s.buf.put(m, s.r.Stopping())
		s.blocked.Store(false)
		if !ok {
			s.n.droppedShutdown.Add(1)
		}
		return
	}
	dropped, full := s.buf.offer(m, s.cfg.overflow)
	if !full {
		return
	}
	s.lastFull = time.Now()
	if dropped != nil {
		s.n.droppedOverflow.Add(1)
		if s.dropLog.allow() {
			s.log.Warn("pubsub: buffer full, message dropped", "policy", s.cfg.overflow.String(),
				"capacity", len(s.buf.items), "dropped_overflow", s.n.droppedOverflow.Load())
		}
	}
}

// track feeds a message's sequence stamp to the gap tracker.
func (s *Subscription) track(channel string, res reserved) {
	if res.seq == "" {
		return
	}
	ident, seq, ok := parseStamp(res.seq)
	if !ok {
		return // not ours after all, or damaged: deliver without tracking
	}
	o := s.gaps.observe(channel, ident, seq, res.rs)
	if o.gap > 0 {
		s.n.gaps.Add(o.gap)
		if s.gapLog.allow() {
			s.log.Warn("pubsub: messages missed (sequence gap)", "channel", channel,
				"missed", o.gap, "gaps", s.n.gaps.Load())
		}
	}
	if o.dup {
		s.n.duplicates.Add(1)
	}
	if o.anomaly {
		s.n.seqAnomalies.Add(1)
		if s.gapLog.allow() {
			s.log.Warn("pubsub: implausible sequence jump ignored (forged or foreign stamp?)", "channel", channel,
				"stamp", res.seq, "seq_anomalies", s.n.seqAnomalies.Load())
		}
	}
	if o.evicted {
		s.n.trackerEvictions.Add(1)
	}
}

// pump moves messages from the ring to the handlers.
func (s *Subscription) pump() {
	if s.cfg.concurrency == 1 {
		s.pumpInline()
		return
	}
	// It reserves worker slots before taking messages, so a message leaves
	// the ring only when a handler is free to start it, and moves as many
	// as there are free slots at once.
	batch := make([]*broker.Message, 0, s.cfg.concurrency)
	for {
		n := s.r.Acquire(s.cfg.concurrency)
		if n == 0 {
			return
		}
		batch = s.buf.getN(batch[:0], n, s.r.Stopping())
		if len(batch) < n {
			s.r.Release(n - len(batch))
		}
		if len(batch) == 0 {
			return
		}
		for _, m := range batch {
			s.r.Push(m)
		}
		clear(batch)
	}
}

// pumpInline runs the handler in the pump itself when only one may run at a
// time: one goroutine handoff less per message. Shutdown semantics are the
// runner's: no message starts once the subscription stops, the running one
// finishes (its ctx is cancelled on the hard stop), and what is left in the
// ring is counted by onStop.
func (s *Subscription) pumpInline() {
	ctx := s.r.Context()
	for {
		m, ok := s.buf.get(s.r.Stopping())
		if !ok {
			return
		}
		if s.stopping() {
			s.n.droppedShutdown.Add(1)
			return
		}
		s.work(ctx, m)
	}
}

func (s *Subscription) work(ctx context.Context, m *broker.Message) {
	if err := runner.Call(ctx, s.h, m); err != nil {
		s.n.handlerErrors.Add(1)
		if s.errLog.allow() {
			s.log.Warn("pubsub: handler failed; message dropped (pub/sub has no retry)",
				"channel", m.Topic, "id", m.ID, "err", err, "handler_errors", s.n.handlerErrors.Load())
		}
		return
	}
	s.n.delivered.Add(1)
}

// onStop counts what was received but never started: pub/sub has nowhere to
// hand it back to.
func (s *Subscription) onStop(_ context.Context, unstarted []*broker.Message) {
	// closeOnStop normally closed the connection already; it may not have
	// run at all when the Subscribe ctx ended while the loops were being
	// started, and OnStop always runs.
	s.closeConn()
	n := len(unstarted) + s.buf.drain()
	if n > 0 {
		s.n.droppedShutdown.Add(uint64(n))
		s.log.Info("pubsub: dropped buffered messages at shutdown", "dropped", n)
	}
}

// closeOnStop closes the connection once the subscription stops, which is
// what ends the read loop's blocked Receive.
func (s *Subscription) closeOnStop() {
	<-s.r.Stopping()
	s.closeConn()
}

// closeConn closes the connection and marks the subscription closed, so
// that no replacement is opened. It is idempotent.
func (s *Subscription) closeConn() {
	s.mu.Lock()
	ps := s.ps
	s.ps, s.closed = nil, true
	s.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
}

// health pings a silent connection and replaces it when even the pong does
// not come: a half-open TCP connection (a NAT or firewall dropped it
// silently) otherwise blocks the read loop forever with no error.
func (s *Subscription) health() {
	d := s.cfg.healthCheck
	t := time.NewTicker(d)
	defer t.Stop()
	activity := func() uint64 { return s.activity.Load() + s.n.received.Load() }
	seen := activity()
	pinged := false
	for {
		select {
		case <-s.r.Stopping():
			return
		case <-t.C:
		}
		if a := activity(); a != seen || s.blocked.Load() {
			seen, pinged = a, false
			continue
		}
		ps := s.current()
		if ps == nil {
			return
		}
		if pinged {
			s.log.Warn("pubsub: connection silent after a ping; replacing it", "interval", d)
			s.mu.Lock()
			if s.ps == ps {
				s.retired = ps
			}
			s.mu.Unlock()
			_ = ps.Close() // the read loop sees the error and replaces it
			pinged = false
			continue
		}
		ctx, cancel := context.WithTimeout(s.r.Context(), d)
		// The pong, or its absence, is seen by the read loop. A failed write
		// makes go-redis redial by itself.
		_ = ps.Ping(ctx)
		cancel()
		pinged = true
	}
}

func (s *Subscription) wrap(op string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("pubsub %s: %s: %w: %w", s.topic, op, broker.ErrClosed, err)
	}
	return fmt.Errorf("pubsub %s: %s: %w", s.topic, op, err)
}
