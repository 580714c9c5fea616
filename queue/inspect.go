package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// Inspector reads and repairs the state of queues: lengths, dead letters.
// Create it with NewInspector. It is safe for concurrent use.
type Inspector struct {
	c redis.UniversalClient
}

// NewInspector returns an Inspector using c, which it never closes. With a
// nil c, every method fails with an error matching broker.ErrInvalidOption.
func NewInspector(c redis.UniversalClient) *Inspector { return &Inspector{c: c} }

// requeueChunk bounds the dead letters one requeue.lua call moves.
const requeueChunk = 1000

// check reports an Inspector without a client.
func (i *Inspector) check() error {
	if i == nil || i.c == nil {
		return fmt.Errorf("%w: nil redis client", broker.ErrInvalidOption)
	}
	return nil
}

// Stats are the lengths of a queue's lists and sets.
type Stats struct {
	Ready      int64 // waiting in the topic list
	Processing int64 // held by registered reliable consumers (fetched, not settled)
	// Orphaned are held in processing lists of consumers that are not
	// registered (see "Orphaned lists" in the package doc). The next sweep
	// of a live consumer registers them; they are reaped after the lease.
	Orphaned  int64
	Delayed   int64 // waiting for their due time: retries, PublishIn and PublishAt
	Dead      int64 // dead letters
	Consumers int64 // registered reliable consumers, live or not yet reaped
}

// DeadLetter is one record of {topic}:dead.
type DeadLetter struct {
	// Message is the dead message. A value that was not an envelope is a
	// payload-only message; for a malformed envelope Payload holds the
	// whole value.
	Message *broker.Message
	// Reason is why it died: the handler's last error, "consumer X stopped
	// during delivery N", a decoding error, a size limit.
	Reason string
	// Attempts is the number of deliveries it had.
	Attempts int
	// Time is when it was dead-lettered, by the Redis server's clock.
	Time time.Time
}

// Stats returns the lengths of topic's lists. It finds the processing
// lists with SCAN MATCH, which walks the whole keyspace (about one call per
// 1,000 keys of the database), then reads the consumer names, then every
// length in one pipeline. The numbers are not a single snapshot: messages
// may move between them meanwhile.
func (i *Inspector) Stats(ctx context.Context, topic string) (Stats, error) {
	if topic == "" {
		return Stats{}, fmt.Errorf("queue: stats: %w: empty topic", broker.ErrInvalidOption)
	}
	if err := i.check(); err != nil {
		return Stats{}, fmt.Errorf("queue %s: stats: %w", topic, err)
	}
	k := newKeys(topic)
	// Lists first, names second: a consumer that registers in between is
	// then found by name, never mistaken for an orphan.
	lists, err := processingNames(ctx, i.c, k, nil)
	if err != nil {
		return Stats{}, fmt.Errorf("queue %s: stats: %w", topic, err)
	}
	names, err := i.c.ZRange(ctx, k.consumers, 0, -1).Result()
	if err != nil {
		return Stats{}, fmt.Errorf("queue %s: stats: %w", topic, err)
	}
	registered := make(map[string]bool, len(names))
	pipe := i.c.Pipeline()
	ready := pipe.LLen(ctx, k.ready)
	delayed := pipe.ZCard(ctx, k.delayed)
	dead := pipe.LLen(ctx, k.dead)
	procs := make([]*redis.IntCmd, len(names))
	for j, n := range names {
		registered[n] = true
		procs[j] = pipe.LLen(ctx, k.processingOf(n))
	}
	var orphans []*redis.IntCmd
	for _, n := range lists {
		if !registered[n] {
			orphans = append(orphans, pipe.LLen(ctx, k.processingOf(n)))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return Stats{}, fmt.Errorf("queue %s: stats: %w", topic, err)
	}
	s := Stats{Ready: ready.Val(), Delayed: delayed.Val(), Dead: dead.Val(), Consumers: int64(len(names))}
	for _, p := range procs {
		s.Processing += p.Val()
	}
	for _, p := range orphans {
		s.Orphaned += p.Val()
	}
	return s, nil
}

// DeadLetters returns up to limit dead letters of topic, oldest first,
// skipping offset.
func (i *Inspector) DeadLetters(ctx context.Context, topic string, offset, limit int) ([]DeadLetter, error) {
	if topic == "" || offset < 0 || limit < 0 {
		return nil, fmt.Errorf("queue %s: dead letters: %w: offset %d, limit %d", topic, broker.ErrInvalidOption, offset, limit)
	}
	if err := i.check(); err != nil {
		return nil, fmt.Errorf("queue %s: dead letters: %w", topic, err)
	}
	if limit == 0 {
		return nil, nil
	}
	vals, err := i.c.LRange(ctx, newKeys(topic).dead, int64(offset), int64(offset+limit-1)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("queue %s: dead letters: %w", topic, err)
	}
	out := make([]DeadLetter, len(vals))
	for j, v := range vals {
		rec := parseDeadRecord([]byte(v))
		m, err := wire.Decode(rec.value)
		if err != nil {
			m = &broker.Message{Payload: rec.value}
		}
		m.Topic = topic
		m.Attempt = rec.attempts
		out[j] = DeadLetter{Message: m, Reason: rec.reason, Attempts: rec.attempts, Time: rec.time}
	}
	return out, nil
}

// Requeue moves up to n of the oldest dead letters of topic to the tail of
// its ready list, in order, with their attempt counts reset, and returns how
// many it moved. It moves them in chunks of up to 1,000, one script call
// each, so that a large requeue never stalls Redis: each chunk moves
// atomically, and consumers may take the first chunks before the last have
// moved. On error, the count says how many had moved.
func (i *Inspector) Requeue(ctx context.Context, topic string, n int) (int, error) {
	if topic == "" || n < 0 {
		return 0, fmt.Errorf("queue %s: requeue: %w: n %d", topic, broker.ErrInvalidOption, n)
	}
	if err := i.check(); err != nil {
		return 0, fmt.Errorf("queue %s: requeue: %w", topic, err)
	}
	k := newKeys(topic)
	total := 0
	for total < n {
		chunk := min(n-total, requeueChunk)
		moved, err := requeueScript.Run(ctx, i.c, []string{k.dead, k.ready}, chunk).Int()
		if err != nil {
			return total, fmt.Errorf("queue %s: requeue: %w", topic, err)
		}
		total += moved
		if moved < chunk {
			break // no more dead letters
		}
	}
	return total, nil
}

// Purge deletes every dead letter of topic and returns how many there were.
func (i *Inspector) Purge(ctx context.Context, topic string) (int64, error) {
	if topic == "" {
		return 0, fmt.Errorf("queue: purge: %w: empty topic", broker.ErrInvalidOption)
	}
	if err := i.check(); err != nil {
		return 0, fmt.Errorf("queue %s: purge: %w", topic, err)
	}
	n, err := purgeScript.Run(ctx, i.c, []string{newKeys(topic).dead}).Int64()
	if err != nil {
		return 0, fmt.Errorf("queue %s: purge: %w", topic, err)
	}
	return n, nil
}
