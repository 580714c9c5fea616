package stream

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
)

// TestIdleConsumersDeleted: another consumer idle past the consumer idle
// timeout is deleted only if it has no pending entries. The visibility
// timeout is long, so the entry pending for "idle-pending" is never claimed
// and it stays pending through the cleanups (miniredis does not report
// consumer idle times, hence a real server). The idle timeout is shortened
// after validation, which requires it to exceed the visibility timeout, to
// run the cleanup every 150ms.
func TestIdleConsumersDeleted(t *testing.T) {
	srv := realServerInternal(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
	require.NoError(t, c.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"payload", "x"}}).Err())
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "idle-pending", Streams: []string{topic, ">"}, Count: 1, Block: -1}).Result()
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Len(t, res[0].Messages, 1, "idle-pending received the entry")
	id := res[0].Messages[0].ID
	// Created after idle-pending read, so idle-pending is always the idler
	// of the two: the cleanup that deletes idle-empty saw idle-pending past
	// the timeout too.
	require.NoError(t, c.XGroupCreateConsumer(ctx, topic, "g", "idle-empty").Err())

	sb, err := NewSubscriber(c, WithGroup("g"), WithVisibilityTimeout(time.Minute),
		WithBlock(50*time.Millisecond), WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	require.NoError(t, err)
	sb.cfg.consumerIdleTimeout = 300 * time.Millisecond
	var delivered int
	sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
		delivered++
		return nil
	}))
	require.NoError(t, err)
	defer func() { assert.NoError(t, sub.Shutdown(ctx)) }()
	consumers := func() map[string]int64 {
		cs, err := c.XInfoConsumers(ctx, topic, "g").Result()
		require.NoError(t, err)
		out := make(map[string]int64)
		for _, x := range cs {
			out[x.Name] = x.Pending
		}
		return out
	}
	require.Eventually(t, func() bool {
		_, ok := consumers()["idle-empty"]
		return !ok
	}, 10*time.Second, 20*time.Millisecond, "idle-empty deleted")
	cs := consumers()
	assert.Contains(t, cs, "idle-pending", "a consumer with a pending entry was deleted")
	assert.EqualValues(t, 1, cs["idle-pending"])
	p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: topic, Group: "g", Start: id, End: id, Count: 1}).Result()
	require.NoError(t, err)
	require.Len(t, p, 1)
	assert.Equal(t, "idle-pending", p[0].Consumer)
	require.NoError(t, sub.Shutdown(ctx))
	assert.Zero(t, delivered, "the entry was claimed: the check was not about a consumer with pending entries")
}

// realServerInternal returns the shared real server, or skips.
func realServerInternal(t *testing.T) *redistest.Server {
	t.Helper()
	for _, s := range redistest.Servers(t) {
		if s.Real() {
			return s
		}
	}
	t.Skip("no redis-server on PATH")
	return nil
}
