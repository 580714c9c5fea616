package stream

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
)

// Inspector reads the state of streams, their groups and dead letters, for
// dashboards and tests. It never writes.
type Inspector struct {
	c redis.UniversalClient
}

// NewInspector returns an Inspector on c, which it never closes. With a nil
// client every method fails with broker.ErrInvalidOption.
func NewInspector(c redis.UniversalClient) *Inspector { return &Inspector{c: c} }

// check reports an Inspector without a client.
func (in *Inspector) check(op string) error {
	if in == nil || in.c == nil {
		return fmt.Errorf("stream: %s: %w: nil client", op, broker.ErrInvalidOption)
	}
	return nil
}

// GroupInfo describes one consumer group of a stream.
type GroupInfo struct {
	Name string
	// Consumers is the number of consumers the group knows, idle ones
	// included.
	Consumers int64
	// Pending is the number of entries delivered and not yet acked.
	Pending int64
	// Lag is the number of entries not yet delivered to the group, or -1
	// when Redis cannot tell (after XDEL or trimming of entries the group
	// had not read, or a group created at an arbitrary ID). Redis 7.0+.
	Lag int64
	// LastDeliveredID is the ID of the last entry delivered to the group.
	LastDeliveredID string
}

// Groups returns the consumer groups of topic; none when the stream does not
// exist.
func (in *Inspector) Groups(ctx context.Context, topic string) ([]GroupInfo, error) {
	if err := in.check("groups"); err != nil {
		return nil, err
	}
	groups, err := in.c.XInfoGroups(ctx, topic).Result()
	if err != nil {
		if isNoSuchKey(err) {
			return nil, nil
		}
		return nil, wrapErr(topic, "groups", err)
	}
	out := make([]GroupInfo, len(groups))
	for i, g := range groups {
		out[i] = GroupInfo{
			Name:            g.Name,
			Consumers:       g.Consumers,
			Pending:         g.Pending,
			Lag:             g.Lag,
			LastDeliveredID: g.LastDeliveredID,
		}
	}
	return out, nil
}

// Len returns the number of entries in the stream topic (0 when it does not
// exist).
func (in *Inspector) Len(ctx context.Context, topic string) (int64, error) {
	if err := in.check("len"); err != nil {
		return 0, err
	}
	n, err := in.c.XLen(ctx, topic).Result()
	if err != nil {
		return 0, wrapErr(topic, "len", err)
	}
	return n, nil
}

// DeadLetters returns up to count dead letters of topic, oldest first (count
// <= 0: all), from its dead-letter stream ("{orders}:dead" for "orders"; see
// the package doc for topics with a hash tag of their own). Each carries the original message (ID, time, metadata,
// payload) plus the metadata keys DeadReason, DeadAttempts, DeadEntryID,
// DeadGroup and DeadConsumer.
func (in *Inspector) DeadLetters(ctx context.Context, topic string, count int) ([]*broker.Message, error) {
	if err := in.check("dead letters"); err != nil {
		return nil, err
	}
	if err := checkTopic(topic); err != nil {
		return nil, fmt.Errorf("stream: dead letters: %w", err)
	}
	entries, err := Replay(ctx, in.c, deadKey(topic), "-", "+", count)
	if err != nil {
		return nil, err
	}
	msgs := make([]*broker.Message, len(entries))
	for i, e := range entries {
		e.Message.Topic = topic
		msgs[i] = e.Message
	}
	return msgs, nil
}

func isNoSuchKey(err error) bool {
	return redis.HasErrorPrefix(err, "no such key")
}
