package pubsub_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/pubsub"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// collector is a handler that keeps every message it gets.
type collector struct {
	mu   sync.Mutex
	msgs []*broker.Message
}

func (c *collector) Handle(_ context.Context, m *broker.Message) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	return nil
}

func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) all() []*broker.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*broker.Message(nil), c.msgs...)
}

func (c *collector) payloads() []string {
	var out []string
	for _, m := range c.all() {
		out = append(out, string(m.Payload))
	}
	return out
}

func (c *collector) waitFor(t testing.TB, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return c.len() >= n }, 10*time.Second, time.Millisecond,
		"want %d messages", n)
}

// listen subscribes h and shuts the subscription down at cleanup.
func listen(t testing.TB, s *pubsub.Subscriber, topic string, h broker.Handler) *pubsub.Subscription {
	t.Helper()
	// The Subscribe ctx is the subscription's lifetime (cancelling it is the
	// hard stop), so no timeout here.
	sub, err := s.Listen(context.Background(), topic, h)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, sub.Shutdown(ctx))
	})
	return sub
}

func mustPublisher(t testing.TB, c pubsubClient, opts ...pubsub.Option) *pubsub.Publisher {
	t.Helper()
	p, err := pubsub.NewPublisher(c, opts...)
	require.NoError(t, err)
	return p
}

func mustSubscriber(t testing.TB, c pubsubClient, opts ...pubsub.Option) *pubsub.Subscriber {
	t.Helper()
	s, err := pubsub.NewSubscriber(c, opts...)
	require.NoError(t, err)
	return s
}
