package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/batch"
	"github.com/redisbroker/broker/internal/wire"
)

var _ broker.Publisher = (*Publisher)(nil)

// Publisher writes messages to the tail of a topic's ready list (RPUSH).
// It is safe for concurrent use. Create it with NewPublisher.
type Publisher struct {
	c   redis.UniversalClient
	cfg publisherConfig
	// single coalesces concurrent one-message Publish calls into shared
	// pipelines: while one is in flight, later calls queue and go out
	// together, so 64 goroutines cost about one round trip per batch. (Four
	// coalescers taken in turn, keeping four pipelines in flight, measured
	// slower on two cores: smaller batches, more CPU per message.)
	single *batch.Coalescer[pubItem]
}

type pubItem struct {
	topic string
	value []byte
}

// NewPublisher returns a Publisher writing through c, which it never closes.
func NewPublisher(c redis.UniversalClient, opts ...PublisherOption) (*Publisher, error) {
	if c == nil {
		return nil, fmt.Errorf("queue: %w: nil redis client", broker.ErrInvalidOption)
	}
	cfg := defaultPublisherConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Publisher{c: c, cfg: cfg}
	p.single = batch.New(p.flush, batch.Options{})
	return p, nil
}

// Publish appends msgs to the tail of topic in one round trip (one RPUSH),
// filling each message's ID (when empty) and Time (when zero). Concurrent
// single-message calls share round trips. Publish returns after Redis
// accepted every message; on error none or all of one call's messages were
// written (a client retry after a lost reply may write them twice, which is
// why every message has an ID). No messages is a no-op.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	if len(msgs) == 0 {
		if topic == "" {
			return fmt.Errorf("queue: publish: %w: empty topic", broker.ErrInvalidOption)
		}
		return nil
	}
	values, err := p.encode(topic, msgs, p.cfg.raw)
	if err != nil {
		return err
	}
	if len(values) == 1 {
		err = p.single.Do(ctx, pubItem{topic: topic, value: values[0]})
	} else {
		args := make([]any, len(values))
		for i, v := range values {
			args[i] = v
		}
		err = p.c.RPush(ctx, topic, args...).Err()
	}
	return publishError(topic, "publish", err)
}

// PublishAt schedules msgs for delivery at (or soon after) at. It is
// PublishIn with the delay time.Until(at): the caller's clock only measures
// how far away at is, and the due time is set by the Redis server's clock,
// like every other score of the package. A time in the past makes them due at
// once.
func (p *Publisher) PublishAt(ctx context.Context, topic string, at time.Time, msgs ...*broker.Message) error {
	return p.PublishIn(ctx, topic, time.Until(at), msgs...)
}

// PublishIn schedules msgs for delivery after d (or soon after), in one round
// trip: they wait in {topic}:delayed, scored by the Redis server's clock plus
// d, until a consumer promotes them to the tail of ready. A d of zero or less
// makes them due at once. Consumers promote on their own schedule (see
// WithPollInterval), so a delayed message is delivered up to that interval
// late, never early. Delayed messages are always enveloped, even with
// WithRaw: the delayed set would merge equal raw payloads into one.
func (p *Publisher) PublishIn(ctx context.Context, topic string, d time.Duration, msgs ...*broker.Message) error {
	if len(msgs) == 0 {
		if topic == "" {
			return fmt.Errorf("queue: publish: %w: empty topic", broker.ErrInvalidOption)
		}
		return nil
	}
	values, err := p.encode(topic, msgs, false)
	if err != nil {
		return err
	}
	// Whole milliseconds, rounded up: never early.
	ms := int64(0)
	if d > 0 {
		ms = int64((d + time.Millisecond - 1) / time.Millisecond)
	}
	args := make([]any, 1+len(values))
	args[0] = ms
	for i, v := range values {
		args[1+i] = v
	}
	err = scheduleScript.Run(ctx, p.c, []string{newKeys(topic).delayed}, args...).Err()
	return publishError(topic, "publish delayed", err)
}

// encode fills IDs and times and returns one value per message, all slices
// of a single buffer.
func (p *Publisher) encode(topic string, msgs []*broker.Message, raw bool) ([][]byte, error) {
	if topic == "" {
		return nil, fmt.Errorf("queue: publish: %w: empty topic", broker.ErrInvalidOption)
	}
	var now time.Time
	size := 0
	for i, m := range msgs {
		if m == nil {
			return nil, fmt.Errorf("queue %s: publish: %w: message %d is nil", topic, broker.ErrInvalidOption, i)
		}
		if len(m.Payload) > p.cfg.maxPayload {
			return nil, fmt.Errorf("queue %s: publish: %w: message %d has a payload of %d bytes, limit %d",
				topic, broker.ErrTooLarge, i, len(m.Payload), p.cfg.maxPayload)
		}
		if len(m.Metadata) > wire.MaxMetadata {
			return nil, fmt.Errorf("queue %s: publish: %w: message %d has %d metadata entries, limit %d",
				topic, broker.ErrTooLarge, i, len(m.Metadata), wire.MaxMetadata)
		}
		if raw {
			size += len(m.Payload)
			continue
		}
		if m.ID == "" {
			m.ID = wire.NewID()
		}
		if m.Time.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			m.Time = now
		}
		size += wire.EncodedLen(m)
	}
	buf := make([]byte, 0, size)
	values := make([][]byte, len(msgs))
	for i, m := range msgs {
		start := len(buf)
		if raw {
			buf = append(buf, m.Payload...)
		} else {
			// The stored attempt is the queue's delivery count: a new message
			// has had none, whatever the caller's copy says.
			if m.Attempt != 0 {
				cp := *m
				cp.Attempt = 0
				m = &cp
			}
			buf = wire.Append(buf, m)
		}
		values[i] = buf[start:len(buf):len(buf)]
	}
	return values, nil
}

// flush writes a batch of single-message calls: consecutive items of one
// topic share one RPUSH, and all commands go in one pipeline.
func (p *Publisher) flush(ctx context.Context, items []pubItem) []error {
	if len(items) == 1 {
		if err := p.c.RPush(ctx, items[0].topic, items[0].value).Err(); err != nil {
			return []error{err}
		}
		return nil
	}
	pipe := p.c.Pipeline()
	type span struct {
		cmd        *redis.IntCmd
		start, end int
	}
	var spans []span
	for i := 0; i < len(items); {
		j := i + 1
		for j < len(items) && items[j].topic == items[i].topic {
			j++
		}
		args := make([]any, j-i)
		for k := i; k < j; k++ {
			args[k-i] = items[k].value
		}
		spans = append(spans, span{cmd: pipe.RPush(ctx, items[i].topic, args...), start: i, end: j})
		i = j
	}
	if _, err := pipe.Exec(ctx); err == nil {
		return nil
	}
	errs := make([]error, len(items))
	for _, s := range spans {
		err := s.cmd.Err()
		for k := s.start; k < s.end; k++ {
			errs[k] = err
		}
	}
	return errs
}

// publishError wraps err with the topic and operation, a context error
// included (errors.Is still matches it); a closed client also matches
// broker.ErrClosed.
func publishError(topic, op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.ErrClosed):
		return fmt.Errorf("queue %s: %s: %w: %w", topic, op, broker.ErrClosed, err)
	}
	return fmt.Errorf("queue %s: %s: %w", topic, op, err)
}
