package pubsub

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/internal/wire"
)

// fakeClock is a Publisher clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// stamps collects the MetaSeq values a raw subscriber sees.
type stamps struct {
	mu  sync.Mutex
	all []string
}

func (s *stamps) Handle(_ context.Context, m *broker.Message) error {
	dm, err := wire.Decode(m.Payload)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.all = append(s.all, dm.Metadata[MetaSeq])
	s.mu.Unlock()
	return nil
}

func (s *stamps) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.all...)
}

func listenInternal(t *testing.T, s *Subscriber, topic string, h broker.Handler) *Subscription {
	t.Helper()
	sub, err := s.Listen(context.Background(), topic, h)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, sub.Shutdown(ctx))
	})
	return sub
}

// TestPublisherForgetsIdleTopics: a publisher keeps sequence state for a
// bounded number of channels, forgets idle ones, and a forgotten channel
// restarts in a new epoch, which subscribers see neither as duplicates nor
// as gaps.
func TestPublisherForgetsIdleTopics(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	topic := redistest.Topic(t)
	p, err := NewPublisher(c)
	require.NoError(t, err)
	clock := &fakeClock{t: time.Now()}
	p.now = clock.now

	sb, err := NewSubscriber(c)
	require.NoError(t, err)
	sub := listenInternal(t, sb, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	rawSub, err := NewSubscriber(c, WithRaw())
	require.NoError(t, err)
	var st stamps
	listenInternal(t, rawSub, topic, &st)

	ctx := context.Background()
	for range 3 {
		require.NoError(t, p.Publish(ctx, topic, broker.NewMessage(nil)))
	}
	clock.add(topicIdle + time.Second)
	require.NoError(t, p.Publish(ctx, topic+"-other", broker.NewMessage(nil))) // a flush evicts
	require.NotContains(t, p.topics, topic, "idle channel forgotten")
	require.NoError(t, p.Publish(ctx, topic, broker.NewMessage(nil)))
	require.Eventually(t, func() bool { return sub.Stats().Delivered == 4 && len(st.get()) == 4 }, 5*time.Second, time.Millisecond)
	s := st.get()
	ident0, seq0, _ := parseStamp(s[0])
	ident3, seq3, _ := parseStamp(s[3])
	start3 := stampStart(ident3)
	assert.Equal(t, uint64(1), seq0)
	assert.Equal(t, uint64(1), seq3, "a new epoch starts at 1")
	assert.NotEqual(t, ident0, ident3, "in a new epoch")
	assert.Positive(t, start3, "stamped with the server time")
	stats := sub.Stats()
	assert.Zero(t, stats.Duplicates)
	assert.Zero(t, stats.Gaps)

	// Bounded: however many channels are used.
	pipe := make([]*broker.Message, 1)
	for i := range maxTopics + 50 {
		pipe[0] = broker.NewMessage(nil)
		require.NoError(t, p.Publish(ctx, fmt.Sprintf("%s-%d", topic, i), pipe...))
	}
	assert.Len(t, p.topics, maxTopics)
	assert.Equal(t, maxTopics, p.lru.Len(), "LRU list matches the map")
}

// TestResyncRangesExpire: failed numbers are carried until messages
// carrying them have reached Redis over resyncWindow, then dropped.
func TestResyncRangesExpire(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	topic := redistest.Topic(t)
	p, err := NewPublisher(c)
	require.NoError(t, err)
	clock := &fakeClock{t: time.Now()}
	p.now = clock.now
	ctx := context.Background()
	require.NoError(t, p.Publish(ctx, topic, broker.NewMessage(nil)))

	srv.Stop(t)
	require.Error(t, p.Publish(ctx, topic, broker.NewMessage(nil), broker.NewMessage(nil)))
	require.Error(t, p.Publish(ctx, topic, broker.NewMessage(nil)))
	srv.Start(t)
	ts := p.topics[topic]
	assert.Equal(t, "2-4", string(ts.rs), "consecutive failures make one range")

	require.NoError(t, p.Publish(ctx, topic, broker.NewMessage(nil)))
	clock.add(resyncWindow - time.Second)
	require.NoError(t, p.Publish(ctx, topic, broker.NewMessage(nil)))
	assert.Equal(t, "2-4", string(ts.rs), "still carried")
	clock.add(time.Second)
	require.NoError(t, p.Publish(ctx, topic, broker.NewMessage(nil)))
	assert.Empty(t, ts.rs, "carried for resyncWindow")
}
