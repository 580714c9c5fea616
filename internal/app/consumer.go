package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
)

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	Mode  Mode
	Topic string // default: the pattern's default topic
	SubscriberConfig
	Quiet bool // one rate line per second instead of one line per message
	// N stops the consumer after N messages: once the N-th delivery starts,
	// LimitReached is closed and the caller calls BeginStop and shuts the
	// subscription down, which stops fetching and hands back what was
	// fetched but not started. A delivery that a worker started after the
	// N-th (at most about one per Concurrency worker) waits for BeginStop
	// and is then handled like any other: failing it would count an attempt
	// against the message, and retry or dead-letter it because of the limit.
	// 0 = run until stopped.
	N    int64
	Fail float64 // fraction of deliveries to fail on purpose, to show retries and dead letters
	Out  io.Writer
	// StatsKey, when set, is a Redis hash where the consumer adds its acked
	// and failed counts (HINCRBY, fields per pattern, topic and group; see
	// statsField) a few times a second from Report, so the producer's /stats
	// can show consumption across processes. A few commands per second, not
	// one per message.
	StatsKey string
}

// DefaultStatsKey is the hash the demo consumers report their counts to.
const DefaultStatsKey = "broker:demo:stats"

// DefaultMaxAttempts is the consumer's MaxAttempts when none is given; it
// must match what it passes to the packages so the dead-letter count is right.
const DefaultMaxAttempts = 5

// statsInterval is how often Report adds the counts to StatsKey: often
// enough that a page polling /stats once a second sees smooth rates.
const statsInterval = 250 * time.Millisecond

// Summary is what a consumer did.
type Summary struct {
	Received, Acked, Failed, DeadLettered int64
	Elapsed                               time.Duration
}

func (s Summary) String() string {
	rate := 0.0
	if s.Elapsed > 0 {
		rate = float64(s.Received) / s.Elapsed.Seconds()
	}
	return fmt.Sprintf("summary: received=%d acked=%d failed=%d dead-lettered=%d elapsed=%s rate=%.1f msgs/s",
		s.Received, s.Acked, s.Failed, s.DeadLettered, s.Elapsed.Round(time.Millisecond), rate)
}

// Consumer subscribes to one pattern and prints what it handles.
type Consumer struct {
	cfg    ConsumerConfig
	client redis.UniversalClient
	sub    broker.Subscription
	start  time.Time
	mu     sync.Mutex // serialises output lines
	limit  chan struct{}
	once   sync.Once
	stop   chan struct{} // closed by BeginStop
	stopMu sync.Once

	ackedField, failedField string

	received, acked, failed, dead atomic.Int64
	flushMu                       sync.Mutex   // one flush at a time
	reportedAcked, reportedFailed int64        // counts already added to StatsKey, under flushMu
	flushErrs                     atomic.Int64 // flushes that failed, for tests
}

// errInjected is the -fail error.
var errInjected = errors.New("consumer: injected failure (-fail)")

// StartConsumer subscribes and returns once the subscription is live.
func StartConsumer(ctx context.Context, c redis.UniversalClient, cfg ConsumerConfig) (*Consumer, error) {
	if cfg.Topic == "" {
		cfg.Topic = Topics{}.For(cfg.Mode)
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	sub, err := NewSubscriber(c, cfg.Mode, cfg.SubscriberConfig)
	if err != nil {
		return nil, err
	}
	group := ""
	if cfg.Mode == Stream {
		if cfg.Group == "" {
			cfg.Group = DefaultGroup
		}
		group = cfg.Group
	}
	k := &Consumer{
		cfg: cfg, client: c, start: time.Now(), limit: make(chan struct{}), stop: make(chan struct{}),
		ackedField:  statsField(statAcked, cfg.Mode, cfg.Topic, group),
		failedField: statsField(statFailed, cfg.Mode, cfg.Topic, group),
	}
	k.sub, err = sub.Subscribe(ctx, cfg.Topic, broker.HandlerFunc(k.handle))
	if err != nil {
		return nil, err
	}
	return k, nil
}

// Subscription returns the running subscription.
func (k *Consumer) Subscription() broker.Subscription { return k.sub }

// LimitReached is closed once the N-th delivery started (never when N is 0).
func (k *Consumer) LimitReached() <-chan struct{} { return k.limit }

// BeginStop tells the consumer that its subscription is being shut down:
// deliveries held back by the limit N are handled now. Call it just before
// Shutdown. Safe to call more than once.
func (k *Consumer) BeginStop() { k.stopMu.Do(func() { close(k.stop) }) }

// Summary returns the counts so far.
func (k *Consumer) Summary() Summary {
	return Summary{
		Received:     k.received.Load(),
		Acked:        k.acked.Load(),
		Failed:       k.failed.Load(),
		DeadLettered: k.dead.Load(),
		Elapsed:      time.Since(k.start),
	}
}

func (k *Consumer) handle(ctx context.Context, m *broker.Message) error {
	if n := k.received.Add(1); k.cfg.N > 0 && n >= k.cfg.N {
		// Closed as the N-th delivery starts, not as it ends, so the
		// caller's Shutdown stops fetching as early as possible.
		k.once.Do(func() { close(k.limit) })
		if n > k.cfg.N {
			// Started past the limit: hold this worker, so it starts no
			// more, until the caller is stopping the subscription.
			select {
			case <-k.stop:
			case <-ctx.Done(): // the hard stop
				k.received.Add(-1)
				return ctx.Err()
			}
		}
	}
	if k.cfg.Fail > 0 && rand.Float64() < k.cfg.Fail {
		k.failed.Add(1)
		status := "failed, will retry"
		if k.cfg.Mode == PubSub {
			status = "failed, dropped (pubsub has no retries)"
		} else if m.Attempt >= k.cfg.MaxAttempts {
			k.dead.Add(1)
			status = "failed, dead-lettered"
		}
		k.printf(m, status)
		return errInjected
	}
	k.acked.Add(1)
	k.printf(m, "")
	return nil
}

func (k *Consumer) printf(m *broker.Message, status string) {
	if k.cfg.Quiet {
		return
	}
	line := make([]byte, 0, 128)
	line = append(line, k.cfg.Mode...)
	line = append(line, " id="...)
	line = append(line, m.ID...)
	line = append(line, " attempt="...)
	line = strconv.AppendInt(line, int64(m.Attempt), 10)
	line = append(line, " payload="...)
	line = appendPayload(line, m.Payload)
	if status != "" {
		line = append(line, " ("...)
		line = append(line, status...)
		line = append(line, ')')
	}
	line = append(line, '\n')
	k.mu.Lock()
	k.cfg.Out.Write(line)
	k.mu.Unlock()
}

// maxShown bounds how much of a payload one line shows.
const maxShown = 120

// appendPayload shows text as text and anything else quoted, truncated.
func appendPayload(dst, p []byte) []byte {
	shown := p
	if len(shown) > maxShown {
		shown = shown[:maxShown]
	}
	if utf8.Valid(shown) && printable(shown) {
		dst = append(dst, shown...)
	} else {
		dst = strconv.AppendQuote(dst, string(shown))
	}
	if len(p) > maxShown {
		dst = fmt.Appendf(dst, "... (%d bytes)", len(p))
	}
	return dst
}

func printable(b []byte) bool {
	for _, r := range string(b) {
		if r < ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// Report runs until ctx ends: once a second it prints a rate line (in quiet
// mode), and every statsInterval it adds the new counts to StatsKey; a last
// flush when ctx ends. Its caller must wait for it to return before closing
// the client.
func (k *Consumer) Report(ctx context.Context) {
	flush := time.NewTicker(statsInterval)
	defer flush.Stop()
	rate := time.NewTicker(time.Second)
	defer rate.Stop()
	last := int64(0)
	for {
		select {
		case <-ctx.Done():
			k.Flush(context.WithoutCancel(ctx))
			return
		case <-flush.C:
			k.Flush(ctx)
		case <-rate.C:
			total := k.received.Load()
			if k.cfg.Quiet {
				k.mu.Lock()
				fmt.Fprintf(k.cfg.Out, "%s: %d msgs/s (total %d)\n", k.cfg.Mode, total-last, total)
				k.mu.Unlock()
			}
			last = total
		}
	}
}

// Flush adds the acked and failed counts not yet reported to StatsKey, in
// one round trip.
func (k *Consumer) Flush(ctx context.Context) {
	if k.cfg.StatsKey == "" {
		return
	}
	k.flushMu.Lock()
	defer k.flushMu.Unlock()
	acked, failed := k.acked.Load(), k.failed.Load()
	da, df := acked-k.reportedAcked, failed-k.reportedFailed
	if da == 0 && df == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := k.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		if da != 0 {
			p.HIncrBy(ctx, k.cfg.StatsKey, k.ackedField, da)
		}
		if df != 0 {
			p.HIncrBy(ctx, k.cfg.StatsKey, k.failedField, df)
		}
		return nil
	})
	if err != nil {
		// Not added (or not known to be): tried again at the next flush.
		k.flushErrs.Add(1)
		return
	}
	k.reportedAcked, k.reportedFailed = acked, failed
}
