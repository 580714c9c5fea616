package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/runner"
)

var (
	_ broker.Subscriber   = (*Subscriber)(nil)
	_ broker.Subscription = (*subscription)(nil)
)

const (
	// errBackoffMin and errBackoffMax space the retries of background
	// Redis calls (fetch, tick, ack) while Redis is unreachable.
	errBackoffMin = 50 * time.Millisecond
	errBackoffMax = 2 * time.Second

	// promoteLimit bounds the delayed messages one tick promotes; a full
	// batch makes the next tick run at once.
	promoteLimit = 1000
	// maxAckBatch bounds the operations of one ack script call.
	maxAckBatch = 512
	// cleanupTries bounds the attempts of a stop-time Redis call (release,
	// final acks) once the hard stop has begun.
	cleanupTries = 3
)

// ErrConsumerNameInUse is returned, wrapped, by Subscribe when the name set
// with WithConsumerName is taken: by a subscription of the same Subscriber,
// or by a consumer whose heartbeat is younger than the lease (alive in
// another process, or crashed less than a lease ago). Pick another name, or
// retry once the lease has run out.
var ErrConsumerNameInUse = errors.New("queue: consumer name in use")

// Subscriber consumes queues. Create it with NewSubscriber; each Subscribe
// call starts an independent consumer.
type Subscriber struct {
	c   redis.UniversalClient
	cfg subscriberConfig

	mu     sync.Mutex
	active map[string]struct{} // topic + "\x00" + consumer name of live reliable subscriptions
}

// NewSubscriber returns a Subscriber reading through c, which it never
// closes. Each subscription holds one connection of c's pool while it
// blocks, plus short-lived ones for acks and housekeeping: size the pool
// for the number of subscriptions.
func NewSubscriber(c redis.UniversalClient, opts ...SubscriberOption) (*Subscriber, error) {
	if c == nil {
		return nil, fmt.Errorf("queue: %w: nil redis client", broker.ErrInvalidOption)
	}
	cfg := defaultSubscriberConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Subscriber{c: c, cfg: cfg, active: make(map[string]struct{})}, nil
}

// Subscribe starts consuming topic with h and returns once the consumer is
// live: in reliable mode it is registered (heartbeat written) and has
// returned what a crashed predecessor of the same name held. It fails with
// ErrConsumerNameInUse when a consumer of that name may still be alive.
// Cancelling ctx is the hard stop; Subscription.Shutdown is the graceful one.
func (s *Subscriber) Subscribe(ctx context.Context, topic string, h broker.Handler) (broker.Subscription, error) {
	if topic == "" {
		return nil, fmt.Errorf("queue: subscribe: %w: empty topic", broker.ErrInvalidOption)
	}
	if h == nil {
		return nil, fmt.Errorf("queue %s: subscribe: %w: nil handler", topic, broker.ErrInvalidOption)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b := &base{
		c:        s.c,
		cfg:      s.cfg,
		topic:    topic,
		keys:     newKeys(topic),
		h:        h,
		redisCtx: context.WithoutCancel(ctx),
	}
	if s.cfg.simple {
		b.log = s.cfg.logger.With("queue", topic, "mode", "simple")
		sub, err := subscribeSimple(ctx, b)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return sub, nil
	}
	name := s.cfg.consumer
	if name == "" {
		name = defaultConsumerName()
	}
	key := topic + "\x00" + name
	s.mu.Lock()
	if _, dup := s.active[key]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("queue %s: subscribe: %w: %w: consumer %q is already subscribed",
			topic, broker.ErrInvalidOption, ErrConsumerNameInUse, name)
	}
	s.active[key] = struct{}{}
	s.mu.Unlock()
	forget := func() {
		s.mu.Lock()
		delete(s.active, key)
		s.mu.Unlock()
	}
	b.log = s.cfg.logger.With("queue", topic, "consumer", name)
	sub, err := subscribeReliable(ctx, b, name)
	if err != nil {
		forget()
		return nil, err
	}
	go func() {
		<-sub.Done()
		forget()
	}()
	return sub, nil
}

// defaultConsumerName is host-pid-random: readable in redis-cli, unique per
// subscription.
func defaultConsumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	var r [4]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(r[:])
}

// base is what both modes share.
type base struct {
	c     redis.UniversalClient
	cfg   subscriberConfig
	topic string
	keys  keys
	h     broker.Handler
	log   *slog.Logger
	// redisCtx carries the Subscribe ctx's values but not its cancellation:
	// a Redis call is never abandoned halfway (a cancelled blocking pop can
	// lose the value the server already popped). Loops check Stopping
	// between calls instead.
	redisCtx context.Context
	r        *runner.Runner[*delivery]
}

// delivery is one fetched message and the exact value it came from, which
// the ack must name to remove it from the processing list.
type delivery struct {
	msg *broker.Message
	raw string
	seq uint64 // reliable mode: the value's entry in known
	// attempt is this delivery's number (msg.Attempt as fetched), kept
	// here because the handler owns msg and may change it.
	attempt int
	// idless marks a value without an ID (foreign or wrapped by a script):
	// a retry gives it one so that equal payloads stay distinct in the
	// delayed set.
	idless bool
}

// sleepErr logs a background error and waits before the retry. It reports
// false when stop closed first.
func (b *base) sleepErr(stop <-chan struct{}, what string, failures int, err error) bool {
	d := runner.Backoff{Min: errBackoffMin, Max: errBackoffMax}.Delay(failures)
	b.log.Warn("queue: redis call failed; retrying", "op", what, "error", err, "retry_in", d, "failures", failures)
	return runner.Sleep(stop, d)
}

// subscription adapts the runner to broker.Subscription.
type subscription struct {
	r *runner.Runner[*delivery]
}

func (s *subscription) Shutdown(ctx context.Context) error { return s.r.Shutdown(ctx) }
func (s *subscription) Done() <-chan struct{}              { return s.r.Done() }

// tickResult is the reply of tick.lua.
type tickResult struct {
	untilDue   int64 // ms until the earliest delayed message is due, <= a day; < 0: none
	promoted   int64
	created    bool
	processing int64 // length of this consumer's processing list
	stale      []string
}

func (b *base) runTick(ctx context.Context, name string) (tickResult, error) {
	k := b.keys
	v, err := tickScript.Run(ctx, b.c, []string{k.consumers, k.delayed, k.ready, k.processingOf(name), k.concurrency},
		name, b.cfg.lease.Milliseconds(), promoteLimit, b.cfg.concurrency).Slice()
	if err != nil {
		return tickResult{}, err
	}
	if len(v) < 5 {
		return tickResult{}, fmt.Errorf("tick: reply of %d elements", len(v))
	}
	var res tickResult
	ints := make([]int64, 5)
	for i := range ints {
		n, ok := v[i].(int64)
		if !ok {
			return tickResult{}, fmt.Errorf("tick: element %d is %T", i, v[i])
		}
		ints[i] = n
	}
	res.untilDue = ints[1]
	res.promoted = ints[2]
	res.created = ints[3] == 1
	res.processing = ints[4]
	for _, x := range v[5:] {
		if s, ok := x.(string); ok {
			res.stale = append(res.stale, s)
		}
	}
	return res, nil
}

// nextTick returns when the next tick should run, from a tick's result.
func (b *base) nextTick(res tickResult) time.Duration {
	d := b.cfg.tickInterval()
	if res.promoted >= promoteLimit {
		return 0 // more may be due already
	}
	if res.untilDue >= 0 && res.untilDue < d.Milliseconds() {
		// In milliseconds until here: a bogus reply cannot overflow a
		// Duration. A millisecond of slack: the due check uses the server
		// clock, and the timer runs on ours.
		d = time.Duration(res.untilDue+1) * time.Millisecond
	}
	return d
}

// wakeup lets whoever schedules a retry tell the tick loop when it is due,
// so that it is promoted on time rather than at the next poll.
type wakeup struct {
	mu sync.Mutex
	at time.Time
	ch chan struct{} // capacity 1
}

func newWakeup() *wakeup { return &wakeup{ch: make(chan struct{}, 1)} }

func (w *wakeup) set(t time.Time) {
	w.mu.Lock()
	if w.at.IsZero() || t.Before(w.at) {
		w.at = t
	}
	w.mu.Unlock()
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

func (w *wakeup) take() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.at
	w.at = time.Time{}
	return t
}

// tickLoop runs tick every period it returns, earlier when woken, until stop.
func tickLoop(stop <-chan struct{}, first time.Duration, w *wakeup, tick func() time.Duration) {
	timer := time.NewTimer(first)
	defer timer.Stop()
	next := time.Now().Add(first)
	for {
		select {
		case <-stop:
			return
		case <-w.ch:
			if t := w.take(); !t.IsZero() && t.Before(next) {
				next = t
				timer.Reset(max(time.Until(t), 0))
			}
			continue
		case <-timer.C:
		}
		d := tick()
		next = time.Now().Add(d)
		timer.Reset(d)
	}
}
