package pubsub

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/redisbroker/broker"
)

// Defaults for the options.
const (
	// DefaultMaxPayload is the largest payload Publish accepts: 1 MiB.
	DefaultMaxPayload = 1 << 20
	// DefaultConcurrency is the number of handlers running at once.
	DefaultConcurrency = 1
	// DefaultBuffer is the capacity of the buffer between the connection and
	// the handlers, in messages.
	DefaultBuffer = 1024
	// DefaultOverflow is what a subscription does when its buffer is full.
	DefaultOverflow = DropOldest
	// DefaultHealthCheck is how long a subscription's connection may stay
	// silent before it is pinged; a second silent interval replaces it.
	DefaultHealthCheck = 5 * time.Second
	// DefaultConfirmTimeout bounds how long Subscribe waits for Redis to
	// confirm the subscription when ctx has no earlier deadline.
	DefaultConfirmTimeout = 10 * time.Second
	// DefaultMaxValueSize is the largest value, in bytes, a subscription
	// accepts from Redis; larger ones are dropped and counted in
	// Stats.DroppedOversize. 8 MiB, like package queue: room for the
	// envelope and metadata around a DefaultMaxPayload payload.
	DefaultMaxValueSize = 8 << 20
)

// Overflow is the policy for a message that arrives while the subscription's
// buffer is full.
type Overflow int

const (
	// DropOldest discards the oldest buffered message to make room, so the
	// handlers always work on the freshest data. Each discard is counted in
	// Stats.DroppedOverflow. This is the default: pub/sub carries live data,
	// and slow handlers never stop the connection from being read, so
	// Redis's output buffer for the subscriber stays small and every loss is
	// counted where it happens. Redis can still disconnect the subscriber
	// (client-output-buffer-limit pubsub) if this process cannot even read
	// and decode as fast as messages arrive, for example when starved of
	// CPU: that shows up as Stats.Gaps and Stats.Disconnects.
	DropOldest Overflow = iota
	// DropNewest discards the arriving message and keeps the buffered ones,
	// so the handlers see an unbroken prefix. Counted in
	// Stats.DroppedOverflow. Like DropOldest, it keeps reading the
	// connection.
	DropNewest
	// Block stops reading the connection until there is room. Nothing is
	// dropped locally, but Redis buffers the backlog in its output buffer
	// and disconnects the subscriber when it passes
	// client-output-buffer-limit pubsub (default 32mb, or 8mb for 60s):
	// everything Redis held is then lost, and shows up as Stats.Gaps and
	// Stats.Disconnects (and, inferred, Stats.SlowDisconnects). Use it for
	// short bursts only.
	Block
)

func (o Overflow) String() string {
	switch o {
	case DropOldest:
		return "drop-oldest"
	case DropNewest:
		return "drop-newest"
	case Block:
		return "block"
	}
	return fmt.Sprintf("Overflow(%d)", int(o))
}

// config holds the options of a Publisher or a Subscriber.
type config struct {
	raw         bool
	sharded     bool
	pattern     bool
	maxPayload  int
	maxValue    int
	concurrency int
	buffer      int
	overflow    Overflow
	healthCheck time.Duration
	logger      *slog.Logger
}

// Option configures a Publisher or a Subscriber. Each option says which of
// the two it applies to; a constructor rejects the others with
// broker.ErrInvalidOption, so a misplaced option never goes unnoticed.
type Option struct {
	name  string
	pub   bool // applies to NewPublisher
	sub   bool // applies to NewSubscriber
	apply func(*config) error
}

// WithRaw makes a Publisher send each payload as is: no envelope, hence no
// ID, time, metadata or sequence number, for subscribers that are not this
// package (redis-cli, other languages). On a Subscriber it delivers every
// value as the payload without looking for an envelope. Loss from raw
// publishers cannot be detected as gaps.
func WithRaw() Option {
	return Option{name: "WithRaw", pub: true, sub: true, apply: func(c *config) error {
		c.raw = true
		return nil
	}}
}

// WithSharded uses sharded pub/sub: SPUBLISH and SSUBSCRIBE, which Redis
// Cluster routes to the shard owning the channel's slot instead of
// broadcasting to every node. Needs Redis 7.0 or later (miniredis lacks it).
// Publisher and subscribers must agree: a sharded message never reaches a
// plain SUBSCRIBE.
func WithSharded() Option {
	return Option{name: "WithSharded", pub: true, sub: true, apply: func(c *config) error {
		c.sharded = true
		return nil
	}}
}

// WithMaxPayload sets the largest payload Publish accepts; larger ones fail
// with broker.ErrTooLarge before anything is sent. Default: 1 MiB
// (DefaultMaxPayload).
func WithMaxPayload(n int) Option {
	return Option{name: "WithMaxPayload", pub: true, apply: func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("WithMaxPayload(%d): must be positive", n)
		}
		c.maxPayload = n
		return nil
	}}
}

// WithMaxValueSize sets the largest value, in bytes, a subscription accepts
// from Redis (the whole envelope, or a foreign value). A larger value is
// dropped before it is decoded or buffered, logged, and counted in
// Stats.DroppedOversize; its sequence number still counts as seen, so it is
// not also a gap. It bounds the subscription's memory at about
// (WithBuffer + WithConcurrency) x this size. Default: 8 MiB
// (DefaultMaxValueSize).
func WithMaxValueSize(n int) Option {
	return Option{name: "WithMaxValueSize", sub: true, apply: func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("WithMaxValueSize(%d): must be positive", n)
		}
		c.maxValue = n
		return nil
	}}
}

// WithPattern makes the topic a glob pattern (PSUBSCRIBE): "orders.*"
// receives orders.eu and orders.us. Each delivered message's Topic is the
// channel it was published to, not the pattern. Not available with
// WithSharded.
func WithPattern() Option {
	return Option{name: "WithPattern", sub: true, apply: func(c *config) error {
		c.pattern = true
		return nil
	}}
}

// WithConcurrency sets how many handlers run at once. With 1, messages of a
// channel are handled in the order Redis delivered them; with more, in no
// particular order. Default: 1 (DefaultConcurrency).
func WithConcurrency(n int) Option {
	return Option{name: "WithConcurrency", sub: true, apply: func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("WithConcurrency(%d): must be positive", n)
		}
		c.concurrency = n
		return nil
	}}
}

// WithBuffer sets the capacity, in messages, of the buffer between the
// connection and the handlers. Memory is bounded by it plus the concurrency
// (messages of at most WithMaxValueSize each), whatever the publishers do.
// Default: 1024 (DefaultBuffer).
func WithBuffer(n int) Option {
	return Option{name: "WithBuffer", sub: true, apply: func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("WithBuffer(%d): must be positive", n)
		}
		c.buffer = n
		return nil
	}}
}

// WithOverflow sets what happens to a message that arrives while the buffer
// is full. Default: DropOldest (DefaultOverflow).
func WithOverflow(o Overflow) Option {
	return Option{name: "WithOverflow", sub: true, apply: func(c *config) error {
		switch o {
		case DropOldest, DropNewest, Block:
			c.overflow = o
			return nil
		}
		return fmt.Errorf("WithOverflow(%d): unknown policy", int(o))
	}}
}

// WithHealthCheck sets how long a subscription's connection may be silent
// before it is pinged; when a further interval brings nothing, not even the
// pong, the connection is replaced (a half-open TCP connection never reports
// an error by itself). Zero disables the check. Default: 5s
// (DefaultHealthCheck).
func WithHealthCheck(d time.Duration) Option {
	return Option{name: "WithHealthCheck", sub: true, apply: func(c *config) error {
		if d < 0 {
			return fmt.Errorf("WithHealthCheck(%v): must not be negative", d)
		}
		c.healthCheck = d
		return nil
	}}
}

// WithLogger logs drops, gaps, disconnects and reconnects. Drop and gap
// lines are rate limited to about one per second per subscription; the
// counters in Stats are exact. Default: silent.
func WithLogger(l *slog.Logger) Option {
	return Option{name: "WithLogger", pub: true, sub: true, apply: func(c *config) error {
		if l == nil {
			return fmt.Errorf("WithLogger(nil)")
		}
		c.logger = l
		return nil
	}}
}

func newConfig(publisher bool, opts []Option) (config, error) {
	c := config{
		maxPayload:  DefaultMaxPayload,
		maxValue:    DefaultMaxValueSize,
		concurrency: DefaultConcurrency,
		buffer:      DefaultBuffer,
		overflow:    DefaultOverflow,
		healthCheck: DefaultHealthCheck,
		logger:      slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if o.apply == nil {
			return c, fmt.Errorf("pubsub: %w: zero Option", broker.ErrInvalidOption)
		}
		if publisher && !o.pub {
			return c, fmt.Errorf("pubsub: %w: %s applies to subscribers only", broker.ErrInvalidOption, o.name)
		}
		if !publisher && !o.sub {
			return c, fmt.Errorf("pubsub: %w: %s applies to publishers only", broker.ErrInvalidOption, o.name)
		}
		if err := o.apply(&c); err != nil {
			return c, fmt.Errorf("pubsub: %w: %w", broker.ErrInvalidOption, err)
		}
	}
	if c.pattern && c.sharded {
		return c, fmt.Errorf("pubsub: %w: WithPattern and WithSharded exclude each other (Redis has no sharded PSUBSCRIBE)", broker.ErrInvalidOption)
	}
	return c, nil
}
