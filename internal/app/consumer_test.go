package app

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

const waitFor = 10 * time.Second

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func publishN(t *testing.T, c redis.UniversalClient, m Mode, topic string, n int) {
	t.Helper()
	pub, err := NewPublisher(c, m, false)
	require.NoError(t, err)
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = broker.NewMessage(fmt.Appendf(nil, "m%d", i))
	}
	require.NoError(t, pub.Publish(context.Background(), topic, msgs...))
}

// TestLimitHandsBack: with -n, deliveries past the limit are neither failed
// nor retried: the consumer stops fetching, handles what it had started,
// and Shutdown hands the rest back untouched.
func TestLimitHandsBack(t *testing.T) {
	for _, m := range []Mode{Queue, Stream} {
		t.Run(string(m), func(t *testing.T) {
			srv := redistest.NewMiniredis(t)
			c := srv.Client(t)
			ctx := context.Background()
			const total, limit, conc = 300, 10, 8
			topic := Topics{}.For(m)
			publishN(t, c, m, topic, total)

			k, err := StartConsumer(ctx, c, ConsumerConfig{
				Mode: m, N: limit, Quiet: true,
				SubscriberConfig: SubscriberConfig{Concurrency: conc},
			})
			require.NoError(t, err)
			select {
			case <-k.LimitReached():
			case <-time.After(waitFor):
				t.Fatal("limit never reached")
			}
			k.BeginStop()
			require.NoError(t, k.Subscription().Shutdown(ctx))
			s := k.Summary()
			t.Logf("%s", s)
			assert.GreaterOrEqual(t, s.Received, int64(limit))
			assert.LessOrEqual(t, s.Received, int64(limit+2*conc), "about one delivery per worker past the limit at most")
			assert.Equal(t, s.Received, s.Acked, "every started delivery acked")
			assert.Zero(t, s.Failed)

			switch m {
			case Queue:
				st, err := queue.NewInspector(c).Stats(ctx, topic)
				require.NoError(t, err)
				assert.Zero(t, st.Delayed, "nothing retried")
				assert.Zero(t, st.Dead, "nothing dead-lettered")
				assert.Zero(t, st.Processing)
				assert.Equal(t, total-s.Received, st.Ready, "the rest is back in the queue")
			case Stream:
				// Handed back entries stay pending, claimable at once, with
				// the delivery that never ran taken off their count.
				pending, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: topic, Group: DefaultGroup, Start: "-", End: "+", Count: total}).Result()
				require.NoError(t, err)
				for _, p := range pending {
					assert.Zero(t, p.RetryCount, "entry %s: no failed attempt counted", p.ID)
				}
			}

			// A second consumer gets every remaining message on its first attempt.
			out := &syncBuffer{}
			k2, err := StartConsumer(ctx, c, ConsumerConfig{Mode: m, N: total - s.Received, Out: out})
			require.NoError(t, err)
			select {
			case <-k2.LimitReached():
			case <-time.After(waitFor):
				t.Fatalf("second consumer got %d of %d", k2.Summary().Received, total-s.Received)
			}
			k2.BeginStop()
			require.NoError(t, k2.Subscription().Shutdown(ctx))
			assert.NotContains(t, out.String(), "attempt=2")
		})
	}
}

// TestStatsCounts: consumers report acked and failed deliveries separately,
// per pattern, topic and group; a consumer of another topic does not count;
// /stats counts from the producer's start, not from whenever the hash was
// created.
func TestStatsCounts(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	ctx := context.Background()
	// What earlier runs left behind.
	require.NoError(t, c.HSet(ctx, DefaultStatsKey,
		statsField(statAcked, Queue, DefaultQueueTopic, ""), 1000,
		statsField(statAcked, Stream, DefaultStreamTopic, DefaultGroup), 2000,
		"queue", 3000, // the old layout: ignored
	).Err())
	p, err := NewProducer(c, ProducerConfig{})
	require.NoError(t, err)
	h := p.Handler()
	for range 4 {
		require.Equal(t, http.StatusAccepted, do(t, h, http.MethodGet, "/queue", "").Code)
		require.Equal(t, http.StatusAccepted, do(t, h, http.MethodGet, "/stream", "").Code)
	}
	publishN(t, c, Queue, "other-topic", 5)

	start := func(cfg ConsumerConfig) *Consumer {
		cfg.StatsKey = DefaultStatsKey
		cfg.Quiet = true
		k, err := StartConsumer(ctx, c, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = k.Subscription().Shutdown(ctx) })
		return k
	}
	// Fails every delivery, dead-lettered at once (MaxAttempts 1).
	failing := start(ConsumerConfig{Mode: Queue, Fail: 1, SubscriberConfig: SubscriberConfig{MaxAttempts: 1}})
	other := start(ConsumerConfig{Mode: Queue, Topic: "other-topic"})
	billing := start(ConsumerConfig{Mode: Stream, SubscriberConfig: SubscriberConfig{Group: "billing"}})
	demo := start(ConsumerConfig{Mode: Stream})

	require.Eventually(t, func() bool {
		return failing.Summary().Failed == 4 && other.Summary().Acked == 5 &&
			billing.Summary().Acked == 4 && demo.Summary().Acked == 4
	}, waitFor, 5*time.Millisecond)
	for _, k := range []*Consumer{failing, other, billing, demo} {
		k.Flush(ctx)
	}
	// Dead letters and acks are written by the subscriptions' own loops,
	// a moment after the handlers returned.
	var snap Snapshot
	require.Eventually(t, func() bool {
		snap = snapshot(t, p)
		if snap.Queue.Dead != 4 {
			return false
		}
		for _, g := range snap.Stream.Groups {
			if g.Pending != 0 {
				return false
			}
		}
		return true
	}, waitFor, 5*time.Millisecond, "dead letters and acks written")
	assert.Zero(t, snap.Queue.Consumed, "failed deliveries are not consumed")
	assert.EqualValues(t, 4, snap.Queue.ConsumeFailed)
	assert.EqualValues(t, 4, snap.Queue.Dead)
	assert.EqualValues(t, 8, snap.Stream.Consumed, "4 per group")
	require.Len(t, snap.Stream.Groups, 2)
	for _, g := range snap.Stream.Groups {
		assert.EqualValues(t, 4, g.Consumed, g.Name)
		assert.Zero(t, g.Lag, g.Name)
		assert.Zero(t, g.Pending, g.Name)
	}

	// Flushing again adds nothing.
	for _, k := range []*Consumer{failing, other, billing, demo} {
		k.Flush(ctx)
	}
	assert.Equal(t, snap.Stream, snapshot(t, p).Stream)
}

func snapshot(t *testing.T, p *Producer) Snapshot {
	t.Helper()
	var pub, failed [numModes]int64
	s, err := p.stats.Snapshot(context.Background(), pub, failed)
	require.NoError(t, err)
	return s
}

// TestStreamLagEmbedded: the embedded Redis (miniredis) reports a group's
// lag as the stream's length; /stats counts the undelivered entries itself.
func TestStreamLagEmbedded(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	ctx := context.Background()
	p, err := NewProducer(c, ProducerConfig{})
	require.NoError(t, err)
	publishN(t, c, Stream, DefaultStreamTopic, 5)
	k, err := StartConsumer(ctx, c, ConsumerConfig{Mode: Stream, N: 5})
	require.NoError(t, err)
	select {
	case <-k.LimitReached():
	case <-time.After(waitFor):
		t.Fatal("never consumed")
	}
	k.BeginStop()
	require.NoError(t, k.Subscription().Shutdown(ctx))
	publishN(t, c, Stream, DefaultStreamTopic, 2)

	snap := snapshot(t, p)
	require.Len(t, snap.Stream.Groups, 1)
	assert.EqualValues(t, 7, snap.Stream.Length)
	assert.EqualValues(t, 2, snap.Stream.Groups[0].Lag, "entries after the last delivered one")

	// A group that has read nothing lags by the whole stream.
	require.NoError(t, c.XGroupCreate(ctx, DefaultStreamTopic, "fresh", "0").Err())
	snap = snapshot(t, p)
	for _, g := range snap.Stream.Groups {
		if g.Name == "fresh" {
			assert.EqualValues(t, 7, g.Lag)
		}
	}
}

func TestStatsField(t *testing.T) {
	assert.Equal(t, `acked queue "broker:demo:queue"`, statsField(statAcked, Queue, DefaultQueueTopic, "ignored"))
	assert.Equal(t, `failed stream "s" "g"`, statsField(statFailed, Stream, "s", "g"))
	assert.NotEqual(t, statsField(statAcked, Stream, `a" "b`, "c"), statsField(statAcked, Stream, "a", `b" "c`))
}

// TestFlushRetried: counts a flush could not write are written by the next.
func TestFlushRetried(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	ctx := context.Background()
	k, err := StartConsumer(ctx, c, ConsumerConfig{Mode: Queue, StatsKey: DefaultStatsKey})
	require.NoError(t, err)
	k.BeginStop()
	require.NoError(t, k.Subscription().Shutdown(ctx))
	field := statsField(statAcked, Queue, DefaultQueueTopic, "")

	k.acked.Add(3)
	srv.Stop(t)
	k.Flush(ctx)
	assert.EqualValues(t, 1, k.flushErrs.Load())
	srv.Start(t)
	k.acked.Add(2)
	k.Flush(ctx)
	n, err := c.HGet(ctx, DefaultStatsKey, field).Int64()
	require.NoError(t, err)
	assert.EqualValues(t, 5, n)
	k.Flush(ctx)
	n, err = c.HGet(ctx, DefaultStatsKey, field).Int64()
	require.NoError(t, err)
	assert.EqualValues(t, 5, n, "nothing counted twice")
}
