package queue

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/redisbroker/broker"
)

// Publisher defaults.
const (
	// DefaultMaxPayload is the largest payload Publish accepts: 1 MiB.
	DefaultMaxPayload = 1 << 20
)

// Subscriber defaults.
const (
	// DefaultConcurrency is the number of handlers running at once.
	DefaultConcurrency = 10
	// DefaultPrefetch is the most messages a subscription holds at once
	// (fetched and not yet finished), and so the largest fetch batch.
	DefaultPrefetch = 100
	// DefaultLease is how long a reliable consumer may go without a
	// heartbeat before other consumers consider it dead and return its
	// messages to the queue.
	DefaultLease = 30 * time.Second
	// DefaultMaxAttempts is the number of deliveries before a message goes
	// to the dead letters.
	DefaultMaxAttempts = 5
	// DefaultBackoffMin is the retry delay after the first failed delivery.
	DefaultBackoffMin = time.Second
	// DefaultBackoffMax caps the retry delay.
	DefaultBackoffMax = 10 * time.Minute
	// DefaultBlock is how long one blocking pop waits on an empty queue.
	// Two seconds keep an idle consumer under one Redis command per second;
	// Shutdown may wait this long for the blocked pop to return.
	DefaultBlock = 2 * time.Second
	// DefaultPollInterval is how often a consumer looks for delayed
	// messages it was not told about (those published with PublishAt by
	// another process), and the most a reliable consumer waits between
	// heartbeats (it also beats every lease/3).
	DefaultPollInterval = 3 * time.Second
	// DefaultMaxValueSize is the largest Redis value a consumer accepts;
	// larger values go to the dead letters. 8 MiB leaves room for the
	// envelope and metadata around a DefaultMaxPayload payload.
	DefaultMaxValueSize = 8 << 20

	// maxPrefetch bounds WithPrefetch: one fetch moves at most this many
	// values in one script call.
	maxPrefetch = 10_000
	// maxConcurrency bounds WithConcurrency.
	maxConcurrency = 100_000
)

// PublisherOption configures a Publisher.
type PublisherOption func(*publisherConfig)

type publisherConfig struct {
	raw        bool
	maxPayload int
}

func defaultPublisherConfig() publisherConfig {
	return publisherConfig{maxPayload: DefaultMaxPayload}
}

// WithRaw makes Publish write each payload as is, without the envelope, for
// consumers that are not this package (redis-cli, another language). ID,
// Metadata and Time are then not stored, and a consumer of this package
// delivers such values as payload-only messages. PublishAt always writes the
// envelope, so that equal payloads stay distinct in the delayed set.
// Default: off.
func WithRaw() PublisherOption {
	return func(c *publisherConfig) { c.raw = true }
}

// WithMaxPayload sets the largest payload, in bytes, that Publish accepts;
// a larger one fails with an error matching broker.ErrTooLarge and nothing
// of that call is written. Default: DefaultMaxPayload (1 MiB).
func WithMaxPayload(n int) PublisherOption {
	return func(c *publisherConfig) { c.maxPayload = n }
}

func (c *publisherConfig) validate() error {
	if c.maxPayload < 1 {
		return fmt.Errorf("queue: %w: max payload %d must be at least 1 byte", broker.ErrInvalidOption, c.maxPayload)
	}
	return nil
}

// SubscriberOption configures a Subscriber.
type SubscriberOption func(*subscriberConfig)

type subscriberConfig struct {
	simple       bool
	concurrency  int
	prefetch     int
	consumer     string
	lease        time.Duration
	maxAttempts  int
	backoffMin   time.Duration
	backoffMax   time.Duration
	block        time.Duration
	pollInterval time.Duration
	maxValue     int
	logger       *slog.Logger
}

func defaultSubscriberConfig() subscriberConfig {
	return subscriberConfig{
		concurrency:  DefaultConcurrency,
		prefetch:     DefaultPrefetch,
		lease:        DefaultLease,
		maxAttempts:  DefaultMaxAttempts,
		backoffMin:   DefaultBackoffMin,
		backoffMax:   DefaultBackoffMax,
		block:        DefaultBlock,
		pollInterval: DefaultPollInterval,
		maxValue:     DefaultMaxValueSize,
	}
}

// WithSimple selects simple mode: LPOP/BLPOP, at most once. A message popped
// by a consumer that then crashes is lost, and handler errors are logged and
// dropped, never retried. Use it where losing a message is acceptable and
// speed matters. Default: reliable mode.
func WithSimple() SubscriberOption {
	return func(c *subscriberConfig) { c.simple = true }
}

// WithConcurrency sets how many handlers run at once.
// Default: DefaultConcurrency (10).
func WithConcurrency(n int) SubscriberOption {
	return func(c *subscriberConfig) { c.concurrency = n }
}

// WithPrefetch sets the most messages a subscription holds at once, fetched
// and not yet finished: the fetch batch size and the memory bound. In
// reliable mode it also bounds the consumer's processing list (messages
// whose outcome is not yet written count), and so what a crash of the
// consumer can redeliver. It is raised to the concurrency when smaller. At
// most 10,000.
// Default: DefaultPrefetch (100).
func WithPrefetch(n int) SubscriberOption {
	return func(c *subscriberConfig) { c.prefetch = n }
}

// WithConsumerName names the reliable consumer; its processing list is
// {topic}:processing:<name>. Names must be unique among the live consumers
// of a topic: Subscribe fails with ErrConsumerNameInUse while a consumer of
// that name has a heartbeat younger than the lease, since two live
// consumers sharing a list would take each other's messages. A stable name
// (a pod name) lets a restarted consumer return what its crashed predecessor
// held itself, once the predecessor's lease has run out, even when no other
// consumer is running. Default: host-pid-random, new for each Subscribe.
func WithConsumerName(name string) SubscriberOption {
	return func(c *subscriberConfig) { c.consumer = name }
}

// WithLease sets how long a reliable consumer may miss heartbeats before
// other consumers return its messages to the queue. It heartbeats every
// lease/3 (or DefaultPollInterval, whichever is shorter). A short lease
// recovers a crashed consumer's messages sooner; a lease shorter than the
// longest pause of a live consumer (GC, network) causes duplicates. At
// least 1s. Default: DefaultLease (30s).
func WithLease(d time.Duration) SubscriberOption {
	return func(c *subscriberConfig) { c.lease = d }
}

// WithMaxAttempts sets how many deliveries a message gets before it goes to
// the dead letters (reliable mode). A delivery counts when the handler
// returns an error or panics, and when the consumer dies while it may have
// been running the message (see the package doc: messages it had only
// prefetched do not count). Default: DefaultMaxAttempts (5).
func WithMaxAttempts(n int) SubscriberOption {
	return func(c *subscriberConfig) { c.maxAttempts = n }
}

// WithBackoff sets the retry delays of reliable mode: after failed delivery
// n the message waits a random time in [d/2, d], d = min * 2^(n-1) capped at
// max. Default: DefaultBackoffMin (1s) to DefaultBackoffMax (10min).
func WithBackoff(min, max time.Duration) SubscriberOption {
	return func(c *subscriberConfig) { c.backoffMin, c.backoffMax = min, max }
}

// WithBlock sets how long one blocking pop waits on an empty queue. Redis
// takes list block timeouts in whole seconds, so d must be a whole number of
// seconds. Shorter blocks make Shutdown faster; longer ones make an idle
// consumer cheaper. Default: DefaultBlock (2s).
func WithBlock(d time.Duration) SubscriberOption {
	return func(c *subscriberConfig) { c.block = d }
}

// WithPollInterval sets how often a consumer looks for due delayed messages
// it was not told about (published with PublishAt by another process); its
// own retries are promoted on time. At least 10ms.
// Default: DefaultPollInterval (3s).
func WithPollInterval(d time.Duration) SubscriberOption {
	return func(c *subscriberConfig) { c.pollInterval = d }
}

// WithMaxValueSize sets the largest Redis value, in bytes, a consumer
// accepts. Larger values go to the dead letters with the reason (in reliable
// mode's batch fetch they never leave Redis). Default: DefaultMaxValueSize (8 MiB).
func WithMaxValueSize(n int) SubscriberOption {
	return func(c *subscriberConfig) { c.maxValue = n }
}

// WithLogger sets the logger for background events: Redis errors being
// retried, reaped consumers, dead-lettered values, handler errors in simple
// mode. Default: silent (slog.DiscardHandler).
func WithLogger(l *slog.Logger) SubscriberOption {
	return func(c *subscriberConfig) { c.logger = l }
}

func (c *subscriberConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("queue: %w: "+format, append([]any{broker.ErrInvalidOption}, args...)...)
	}
	switch {
	case c.concurrency < 1 || c.concurrency > maxConcurrency:
		return bad("concurrency %d must be in [1, %d]", c.concurrency, maxConcurrency)
	case c.prefetch < 1 || c.prefetch > maxPrefetch:
		return bad("prefetch %d must be in [1, %d]", c.prefetch, maxPrefetch)
	case c.lease < time.Second:
		return bad("lease %v must be at least 1s", c.lease)
	case c.maxAttempts < 1:
		return bad("max attempts %d must be at least 1", c.maxAttempts)
	case c.backoffMin <= 0 || c.backoffMax < c.backoffMin:
		return bad("backoff %v..%v: need 0 < min <= max", c.backoffMin, c.backoffMax)
	case c.block < time.Second || c.block%time.Second != 0:
		return bad("block %v must be a whole number of seconds (Redis list blocks are in seconds)", c.block)
	case c.pollInterval < 10*time.Millisecond:
		return bad("poll interval %v must be at least 10ms", c.pollInterval)
	case c.maxValue < 1:
		return bad("max value size %d must be at least 1 byte", c.maxValue)
	}
	if len(c.consumer) > 200 {
		return bad("consumer name of %d bytes is longer than 200", len(c.consumer))
	}
	c.prefetch = max(c.prefetch, c.concurrency)
	if c.prefetch > maxPrefetch {
		return bad("prefetch raised to concurrency %d exceeds %d", c.concurrency, maxPrefetch)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// tickInterval is the period of a consumer's background tick: heartbeat,
// promotion of due delayed messages and the scan for dead consumers.
func (c *subscriberConfig) tickInterval() time.Duration {
	if c.simple {
		return c.pollInterval
	}
	return min(c.pollInterval, c.lease/3)
}
