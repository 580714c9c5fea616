package queue_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

// skews are the server clock minus the clients' clock: the clients an hour
// ahead of Redis, and an hour behind. miniredis's SetTime sets (and
// freezes) the clock its TIME reports, which every script reads.
var skews = []time.Duration{-time.Hour, time.Hour}

// PublishIn and PublishAt fire on the server's clock: with the publisher's
// clock an hour off, a message is neither due at once nor an hour late.
func TestDelayedUsesServerClock(t *testing.T) {
	t.Parallel()
	for _, skew := range skews {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			s := redistest.NewMiniredis(t)
			c := s.Client(t)
			ctx := context.Background()
			const topic = "skew"
			t0 := time.Now().Add(skew).Truncate(time.Millisecond)
			s.Mini.SetTime(t0)
			p := publisher(t, c)
			before := time.Now()
			require.NoError(t, p.PublishAt(ctx, topic, before.Add(10*time.Minute), broker.NewMessage([]byte("at"))))
			require.NoError(t, p.PublishIn(ctx, topic, 5*time.Minute, broker.NewMessage([]byte("in"))))
			elapsed := time.Since(before)

			zs, err := c.ZRangeWithScores(ctx, "{skew}:delayed", 0, -1).Result()
			require.NoError(t, err)
			require.Len(t, zs, 2)
			base := float64(t0.UnixMilli())
			assert.Equal(t, base+float64((5*time.Minute).Milliseconds()), zs[0].Score, "PublishIn: server time + d")
			at := zs[1].Score - base
			assert.LessOrEqual(t, at, float64((10 * time.Minute).Milliseconds()))
			assert.GreaterOrEqual(t, at, float64((10*time.Minute - elapsed - time.Millisecond).Milliseconds()))

			rec := newRecorder()
			subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
				rec.add(m)
				return nil
			}, fast()...)
			s.Mini.SetTime(t0.Add(6 * time.Minute))
			require.Eventually(t, func() bool { return rec.len() == 1 }, waitFor, tick)
			assert.Equal(t, []string{"in"}, rec.payloads())
			// The tick that promoted "in" found "at" not yet due.
			assert.Equal(t, int64(1), stats(t, c, topic).Delayed)
			s.Mini.SetTime(t0.Add(11 * time.Minute))
			require.Eventually(t, func() bool { return rec.len() == 2 }, waitFor, tick)
			assert.Equal(t, []string{"in", "at"}, rec.payloads())
		})
	}
}

// Consumers whose clock is an hour off the server's: heartbeats follow the
// server's clock, so a live consumer is never reaped however far the clocks
// disagree, and a retry waits its backoff on the server's clock.
func TestConsumersUseServerClock(t *testing.T) {
	t.Parallel()
	for _, skew := range skews {
		t.Run(skew.String(), func(t *testing.T) {
			t.Parallel()
			s := redistest.NewMiniredis(t)
			c := s.Client(t)
			ctx := context.Background()
			const topic = "skew"
			t0 := time.Now().Add(skew).Truncate(time.Millisecond)
			s.Mini.SetTime(t0)

			// Consumer a holds a message in its handler; b retries one.
			holding := make(chan struct{})
			release := make(chan struct{})
			subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
				close(holding)
				<-release
				return nil
			}, fast(queue.WithConsumerName("a"))...)
			require.NoError(t, publisher(t, c).Publish(ctx, topic, broker.NewMessage([]byte("held"))))
			<-holding
			defer close(release)
			var calls atomic.Int64
			subscribe(t, c, topic+"-retry", func(ctx context.Context, m *broker.Message) error {
				if calls.Add(1) == 1 {
					return errors.New("once")
				}
				return nil
			}, fast(queue.WithConsumerName("b"))...)
			require.NoError(t, publisher(t, c).Publish(ctx, topic+"-retry", broker.NewMessage([]byte("retry"))))

			// The retry is due 5-10ms after the failure by the server's
			// clock, which stands still: it waits.
			var score float64
			require.Eventually(t, func() bool {
				zs, err := c.ZRangeWithScores(ctx, "{skew-retry}:delayed", 0, -1).Result()
				require.NoError(t, err)
				if len(zs) != 1 {
					return false
				}
				score = zs[0].Score
				return true
			}, waitFor, tick)
			wait := score - float64(t0.UnixMilli())
			assert.GreaterOrEqual(t, wait, 5.0)
			assert.LessOrEqual(t, wait, 10.0)
			assert.Equal(t, int64(1), calls.Load())

			// Move the server's clock past several leases, in steps shorter
			// than one: both consumers keep up, and nobody is reaped.
			cons := "{skew}:consumers"
			for step := 1; step <= 10; step++ {
				now := t0.Add(time.Duration(step) * 500 * time.Millisecond)
				s.Mini.SetTime(now)
				require.Eventually(t, func() bool {
					sc, err := c.ZScore(ctx, cons, "a").Result()
					require.NoError(t, err, "consumer a reaped")
					sc2, err := c.ZScore(ctx, "{skew-retry}:consumers", "b").Result()
					require.NoError(t, err, "consumer b reaped")
					return sc == float64(now.UnixMilli()) && sc2 == sc
				}, waitFor, tick)
			}
			held, err := c.LLen(ctx, "{skew}:processing:a").Result()
			require.NoError(t, err)
			assert.Equal(t, int64(1), held, "a live consumer keeps what it holds")
			require.Eventually(t, func() bool { return calls.Load() == 2 }, waitFor, tick)
		})
	}
}
