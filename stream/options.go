package stream

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/runner"
)

// Defaults of the options. Each option's documentation repeats its default.
const (
	// DefaultGroup is the consumer group of a Subscriber without WithGroup.
	// Subscribers that keep it compete for the messages of a topic, like the
	// consumers of a queue; give each independent application its own group
	// to have every group get every message.
	DefaultGroup = "broker"
	// DefaultStartID is where a new group starts: "$", only entries added
	// after the group was created.
	DefaultStartID = "$"
	// DefaultConcurrency is the number of handlers running at once.
	DefaultConcurrency = 1
	// DefaultPrefetch bounds entries read but not finished per subscription.
	DefaultPrefetch = 64
	// DefaultBlock is the server-side block of one XREADGROUP, and the
	// largest WithBlock accepts. It bounds how long Shutdown waits for the
	// fetcher, and it sets the idle cost: one command per DefaultBlock.
	DefaultBlock = time.Second
	// DefaultVisibilityTimeout is how long an entry may stay pending without
	// a lease renewal before another consumer claims it. It also caps the
	// retry backoff.
	DefaultVisibilityTimeout = 30 * time.Second
	// DefaultMaxAttempts is the number of deliveries before an entry goes to
	// the dead letters.
	DefaultMaxAttempts = 5
	// DefaultConsumerIdleTimeout is how long a consumer of the group may stay
	// idle, with no pending entries, before any subscriber deletes it.
	DefaultConsumerIdleTimeout = time.Hour
	// DefaultMaxPayload is the largest payload Publish accepts (1 MiB).
	DefaultMaxPayload = 1 << 20
	// DefaultDeadLetterMaxLen caps the dead-letter stream (approximately).
	DefaultDeadLetterMaxLen = 100_000
	// DefaultLagCheckInterval is how often a trimming Publisher checks the
	// lag of the topic's groups.
	DefaultLagCheckInterval = 10 * time.Second
	// DefaultBackoffMin and DefaultBackoffMax bound the retry delay of
	// background Redis errors (a fetch loop while Redis is down).
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second
	// DefaultRetryBackoffMin and DefaultRetryBackoffMax bound the delay
	// before an entry whose handler failed is delivered again: about 1s
	// after the first failure, doubling, never more than the visibility
	// timeout.
	DefaultRetryBackoffMin = time.Second
	DefaultRetryBackoffMax = DefaultVisibilityTimeout
)

// lagWarnFraction: a group whose lag reaches this fraction of MaxLen is
// about to lose unread entries to trimming (MAXLEN ~ may trim a little
// early, never late by more than one macro node).
const lagWarnFraction = 0.8

// Option configures a Publisher or a Subscriber. Options that apply to only
// one of them are rejected by the other's constructor with
// broker.ErrInvalidOption, so a misplaced option is never silently ignored.
type Option func(*config)

type scope int

const (
	forPublisher scope = 1 << iota
	forSubscriber
	forBoth = forPublisher | forSubscriber
)

type config struct {
	logger *slog.Logger

	// Publisher.
	maxLen           int64
	minID            string
	maxAge           time.Duration
	maxPayload       int
	lagCheckInterval time.Duration

	// Subscriber.
	group               string
	consumer            string
	startID             string
	concurrency         int
	prefetch            int
	block               time.Duration
	visibility          time.Duration
	maxAttempts         int
	consumerIdleTimeout time.Duration
	deadLetterMaxLen    int64
	backoff             runner.Backoff
	retryBackoff        runner.Backoff

	// set records each option applied, with where it applies; errs collects
	// argument errors. Both are checked once by the constructor.
	set  []setOption
	errs []error
}

type setOption struct {
	name  string
	scope scope
}

func (c *config) mark(name string, s scope) { c.set = append(c.set, setOption{name, s}) }

func (c *config) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

func newConfig(s scope, opts []Option) (*config, error) {
	c := &config{
		logger:           slog.New(slog.DiscardHandler),
		maxPayload:       DefaultMaxPayload,
		lagCheckInterval: DefaultLagCheckInterval,
		group:            DefaultGroup,
		startID:          DefaultStartID,
		concurrency:      DefaultConcurrency,
		prefetch:         DefaultPrefetch,
		block:            DefaultBlock,
		visibility:       DefaultVisibilityTimeout,
		maxAttempts:      DefaultMaxAttempts,
		deadLetterMaxLen: DefaultDeadLetterMaxLen,
		backoff:          runner.Backoff{Min: DefaultBackoffMin, Max: DefaultBackoffMax},
		retryBackoff:     runner.Backoff{Min: DefaultRetryBackoffMin, Max: DefaultRetryBackoffMax},
	}
	for _, o := range opts {
		if o == nil {
			c.fail("nil option")
			continue
		}
		o(c)
	}
	for _, o := range c.set {
		if o.scope&s == 0 {
			where := "Subscriber"
			if s == forSubscriber {
				where = "Publisher"
			}
			c.fail("%s applies to a %s only", o.name, where)
		}
	}
	if c.minID != "" && c.maxLen > 0 || c.maxAge > 0 && (c.maxLen > 0 || c.minID != "") {
		c.fail("WithMaxLen, WithMinID and WithMaxAge exclude each other")
	}
	if s == forSubscriber {
		if c.consumer == "" {
			c.consumer = defaultConsumerName()
		}
		c.prefetch = max(c.prefetch, c.concurrency)
		if c.consumerIdleTimeout == 0 {
			c.consumerIdleTimeout = max(DefaultConsumerIdleTimeout, 2*c.visibility)
		}
		if c.consumerIdleTimeout <= c.visibility {
			c.fail("consumer idle timeout %v must exceed the visibility timeout %v", c.consumerIdleTimeout, c.visibility)
		}
	}
	if len(c.errs) > 0 {
		return nil, fmt.Errorf("stream: %w: %w", broker.ErrInvalidOption, errors.Join(c.errs...))
	}
	return c, nil
}

// defaultConsumerName is host-pid-random: unique per process, and readable in
// XINFO CONSUMERS. The random part keeps two Subscribers of one process apart.
func defaultConsumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

// WithLogger sets the logger for background errors, dead letters, recovered
// entries and lag warnings. Default: silent (slog.DiscardHandler).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		c.mark("WithLogger", forBoth)
		if l == nil {
			c.fail("WithLogger: nil logger")
			return
		}
		c.logger = l
	}
}

// WithMaxLen trims the stream on every XADD to about n entries (MAXLEN ~ n):
// Redis trims whole macro nodes, so the stream may hold somewhat more than n,
// never fewer. Trimming deletes entries whether or not every group has read
// them; the Publisher logs a warning and counts LagWarnings when a group's lag
// nears n. Publisher only. Default: no trimming.
func WithMaxLen(n int64) Option {
	return func(c *config) {
		c.mark("WithMaxLen", forPublisher)
		if n <= 0 {
			c.fail("WithMaxLen: %d, want > 0", n)
			return
		}
		c.maxLen = n
	}
}

// WithMinID trims, on every XADD, the entries with IDs lower than id (MINID ~
// id). Publisher only. Default: no trimming.
func WithMinID(id string) Option {
	return func(c *config) {
		c.mark("WithMinID", forPublisher)
		if _, _, ok := parseEntryID(id); !ok {
			c.fail("WithMinID: %q is not a stream ID", id)
			return
		}
		c.minID = id
	}
}

// WithMaxAge trims, on every XADD, the entries older than d: MINID ~ the
// Redis server's time minus d. Entry IDs carry the server's clock, so the cut
// is computed from it too, never from the publisher's clock: the Publisher
// reads the server's TIME on its first Publish (one extra round trip, once)
// and then every minute inside a Publish pipeline, and advances it by its
// own monotonic clock in between. Publisher only. Default: no trimming.
func WithMaxAge(d time.Duration) Option {
	return func(c *config) {
		c.mark("WithMaxAge", forPublisher)
		if d < time.Millisecond {
			c.fail("WithMaxAge: %v, want >= 1ms", d)
			return
		}
		c.maxAge = d
	}
}

// WithMaxPayload sets the largest payload Publish accepts; a larger one fails
// the call with broker.ErrTooLarge before anything is sent. Publisher only.
// Default: 1 MiB (DefaultMaxPayload).
func WithMaxPayload(n int) Option {
	return func(c *config) {
		c.mark("WithMaxPayload", forPublisher)
		if n <= 0 {
			c.fail("WithMaxPayload: %d, want > 0", n)
			return
		}
		c.maxPayload = n
	}
}

// WithLagCheckInterval sets how often a Publisher with WithMaxLen or
// WithMinID/WithMaxAge checks whether trimming is about to drop entries a
// group has not read. The check rides in a Publish pipeline (XINFO GROUPS),
// so it costs no extra round trip. Publisher only. Default: 10s.
func WithLagCheckInterval(d time.Duration) Option {
	return func(c *config) {
		c.mark("WithLagCheckInterval", forPublisher)
		if d <= 0 {
			c.fail("WithLagCheckInterval: %v, want > 0", d)
			return
		}
		c.lagCheckInterval = d
	}
}

// WithGroup sets the consumer group. Subscribers of one group compete for the
// entries; every group gets every entry. Subscriber only. Default: "broker"
// (DefaultGroup).
func WithGroup(name string) Option {
	return func(c *config) {
		c.mark("WithGroup", forSubscriber)
		if name == "" {
			c.fail("WithGroup: empty name")
			return
		}
		c.group = name
	}
}

// WithConsumerName sets the consumer name within the group. A consumer that
// restarts under the same name first re-reads the entries it had not acked.
// Two running subscribers must not share a name. Subscriber only. Default:
// host-pid-random, unique per Subscriber.
func WithConsumerName(name string) Option {
	return func(c *config) {
		c.mark("WithConsumerName", forSubscriber)
		if name == "" {
			c.fail("WithConsumerName: empty name")
			return
		}
		c.consumer = name
	}
}

// WithStartID sets where a group that does not exist yet starts: "$" for
// entries added after its creation, "0" for the whole stream, or any entry
// ID. An existing group keeps its position. Subscriber only. Default: "$".
func WithStartID(id string) Option {
	return func(c *config) {
		c.mark("WithStartID", forSubscriber)
		if _, _, ok := parseEntryID(id); !ok && id != "$" {
			c.fail("WithStartID: %q, want \"$\", \"0\" or an entry ID", id)
			return
		}
		c.startID = id
	}
}

// WithConcurrency sets how many handlers run at once. Subscriber only.
// Default: 1.
func WithConcurrency(n int) Option {
	return func(c *config) {
		c.mark("WithConcurrency", forSubscriber)
		if n <= 0 {
			c.fail("WithConcurrency: %d, want > 0", n)
			return
		}
		c.concurrency = n
	}
}

// WithPrefetch bounds the entries read but not finished (buffered plus
// running): it is the upper bound of XREADGROUP COUNT and what bounds memory,
// whatever the backlog. It is raised to the concurrency when smaller.
// Subscriber only. Default: 64.
func WithPrefetch(n int) Option {
	return func(c *config) {
		c.mark("WithPrefetch", forSubscriber)
		if n <= 0 {
			c.fail("WithPrefetch: %d, want > 0", n)
			return
		}
		c.prefetch = n
	}
}

// WithBlock sets the server-side block of XREADGROUP (millisecond
// resolution), from 1ms to 1s. An idle subscriber sends at most one command
// per block on average, and Shutdown waits up to one block for the fetcher:
// go-redis cannot interrupt a blocked read, so blocks longer than 1s are
// rejected to keep Shutdown and the hard stop prompt. Zero is rejected too:
// to Redis, BLOCK 0 means forever. Subscriber only. Default: 1s.
func WithBlock(d time.Duration) Option {
	return func(c *config) {
		c.mark("WithBlock", forSubscriber)
		if d < time.Millisecond || d > DefaultBlock {
			c.fail("WithBlock: %v, want 1ms to 1s (BLOCK 0 would wait forever; a longer block delays Shutdown)", d)
			return
		}
		c.block = d
	}
}

// WithVisibilityTimeout sets the min-idle time after which a pending entry is
// claimed (XAUTOCLAIM) by any consumer of the group: an entry whose consumer
// crashed, or whose handler failed (its retry backoff shortens the wait, and
// is capped by the timeout). A running handler renews its entry every third
// of it, so a handler may run longer than the timeout without losing the
// entry. Subscriber only. Default: 30s.
func WithVisibilityTimeout(d time.Duration) Option {
	return func(c *config) {
		c.mark("WithVisibilityTimeout", forSubscriber)
		if d < 10*time.Millisecond {
			c.fail("WithVisibilityTimeout: %v, want >= 10ms", d)
			return
		}
		c.visibility = d
	}
}

// WithMaxAttempts sets the deliveries an entry gets: when the handler fails
// the last one, or recovery finds an entry delivered more often (its
// consumers crashed), it goes to the dead letters. Subscriber only.
// Default: 5.
func WithMaxAttempts(n int) Option {
	return func(c *config) {
		c.mark("WithMaxAttempts", forSubscriber)
		if n <= 0 {
			c.fail("WithMaxAttempts: %d, want > 0", n)
			return
		}
		c.maxAttempts = n
	}
}

// WithConsumerIdleTimeout sets how long another consumer of the group may be
// idle before a subscriber deletes it (XGROUP DELCONSUMER), which keeps
// XINFO CONSUMERS short when names are random per process. A consumer with
// pending entries is never deleted: that would drop the entries. It must
// exceed the visibility timeout. Subscriber only. Default: 1h, or twice the
// visibility timeout when that is longer.
func WithConsumerIdleTimeout(d time.Duration) Option {
	return func(c *config) {
		c.mark("WithConsumerIdleTimeout", forSubscriber)
		if d <= 0 {
			c.fail("WithConsumerIdleTimeout: %v, want > 0", d)
			return
		}
		c.consumerIdleTimeout = d
	}
}

// WithDeadLetterMaxLen caps the dead-letter stream {topic}:dead at about n
// entries (MAXLEN ~). Subscriber only. Default: 100,000.
func WithDeadLetterMaxLen(n int64) Option {
	return func(c *config) {
		c.mark("WithDeadLetterMaxLen", forSubscriber)
		if n <= 0 {
			c.fail("WithDeadLetterMaxLen: %d, want > 0", n)
			return
		}
		c.deadLetterMaxLen = n
	}
}

// WithRetryBackoff bounds the delay before an entry whose handler failed is
// delivered again: after attempt n, a random delay in [d/2, d] with d = min
// * 2^(n-1), capped at max and at the visibility timeout. The entry stays
// pending meanwhile (its idle time is set so that XAUTOCLAIM takes it when
// the delay is over), so a crash loses nothing. Subscriber only. Default: 1s
// to 30s.
func WithRetryBackoff(minDelay, maxDelay time.Duration) Option {
	return func(c *config) {
		c.mark("WithRetryBackoff", forSubscriber)
		if minDelay <= 0 || maxDelay < minDelay {
			c.fail("WithRetryBackoff: %v, %v: want 0 < min <= max", minDelay, maxDelay)
			return
		}
		c.retryBackoff = runner.Backoff{Min: minDelay, Max: maxDelay}
	}
}

// WithBackoff bounds the delay between retries of a background Redis error
// (exponential with jitter). Subscriber only. Default: 100ms to 5s.
func WithBackoff(minDelay, maxDelay time.Duration) Option {
	return func(c *config) {
		c.mark("WithBackoff", forSubscriber)
		if minDelay <= 0 || maxDelay < minDelay {
			c.fail("WithBackoff: %v, %v: want 0 < min <= max", minDelay, maxDelay)
			return
		}
		c.backoff = runner.Backoff{Min: minDelay, Max: maxDelay}
	}
}

// parseEntryID parses "ms" or "ms-seq".
func parseEntryID(id string) (ms, seq uint64, ok bool) {
	msPart, seqPart, hasSeq := strings.Cut(id, "-")
	ms, err := strconv.ParseUint(msPart, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if hasSeq {
		if seq, err = strconv.ParseUint(seqPart, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return ms, seq, true
}
