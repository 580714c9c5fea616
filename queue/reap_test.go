package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/internal/wire"
	"github.com/redisbroker/broker/queue"
)

// serverMillis reads the server clock, which every score uses.
func serverMillis(t *testing.T, c redis.UniversalClient) int64 {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	require.NoError(t, err)
	return now.UnixMilli()
}

func envelope(payload string, attempt int) string {
	return string(wire.Encode(&broker.Message{ID: wire.NewID(), Payload: []byte(payload), Attempt: attempt, Time: time.Now()}))
}

// A consumer whose heartbeat is older than the lease is reaped: its messages
// go back to the head of ready in order with the delivery counted, a message
// at its last attempt is dead-lettered, and a live consumer is left alone.
func TestReaper(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		now := serverMillis(t, c)
		ghostList := "{" + topic + "}:processing:ghost"
		aliveList := "{" + topic + "}:processing:alive"
		cons := "{" + topic + "}:consumers"
		require.NoError(t, c.ZAdd(ctx, cons, redis.Z{Score: float64(now - 60_000), Member: "ghost"}).Err())
		require.NoError(t, c.ZAdd(ctx, cons, redis.Z{Score: float64(now + 3_600_000), Member: "alive"}).Err())
		require.NoError(t, c.RPush(ctx, ghostList, envelope("a", 0), "foreign", envelope("poison", 2), envelope("b", 1)).Err())
		// The ghost ran 4 handlers: each of its 4 values may have been running.
		require.NoError(t, c.HSet(ctx, "{"+topic+"}:concurrency", "ghost", 4).Err())
		require.NoError(t, c.RPush(ctx, aliveList, envelope("held", 0)).Err())
		// Something already waiting in ready: reaped messages go before it.
		require.NoError(t, c.RPush(ctx, topic, envelope("later", 0)).Err())

		rec := subscribeRecorder(t, c, topic, fast(queue.WithConcurrency(1), queue.WithPrefetch(1), queue.WithMaxAttempts(3))...)
		require.Eventually(t, func() bool { return rec.len() == 4 }, waitFor, tick)
		assert.Equal(t, []string{"a", "foreign", "b", "later"}, rec.payloads())
		var attempts []int
		for _, m := range rec.all() {
			attempts = append(attempts, m.Attempt)
		}
		assert.Equal(t, []int{2, 2, 3, 1}, attempts)

		dls, err := queue.NewInspector(c).DeadLetters(ctx, topic, 0, 10)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		assert.Equal(t, "poison", string(dls[0].Message.Payload))
		assert.Equal(t, 3, dls[0].Attempts)
		assert.Contains(t, dls[0].Reason, "consumer ghost stopped")

		n, err := c.Exists(ctx, ghostList).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "reaped list deleted")
		names, err := c.ZRange(ctx, cons, 0, -1).Result()
		require.NoError(t, err)
		assert.NotContains(t, names, "ghost")
		assert.Contains(t, names, "alive")
		held, err := c.LLen(ctx, aliveList).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(1), held, "a live consumer is never reaped")
	})
}

// A poison pill that kills its consumer is counted, but the messages that
// consumer had only prefetched are not: they could not have been running.
// With the defaults (prefetch 100, concurrency 10, 5 attempts) a pill that
// killed 5 consumers used to take ~99 bystanders with it to the dead letters.
func TestReaperSparesPrefetched(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		cons := "{" + topic + "}:concurrency"
		stale := float64(serverMillis(t, c) - 60_000)
		// ghost ran 2 handlers at once and died holding 2 running messages
		// (one of them a pill at its last attempt) and 3 prefetched ones,
		// all near their last attempt. old recorded no concurrency: the
		// reaper's own (1) applies.
		require.NoError(t, c.ZAdd(ctx, "{"+topic+"}:consumers", redis.Z{Score: stale, Member: "ghost"}, redis.Z{Score: stale, Member: "old"}).Err())
		require.NoError(t, c.HSet(ctx, cons, "ghost", 2).Err())
		require.NoError(t, c.RPush(ctx, "{"+topic+"}:processing:ghost",
			envelope("run", 1), envelope("pill", 4), envelope("p1", 4), envelope("p2", 4), "p3").Err())
		require.NoError(t, c.RPush(ctx, "{"+topic+"}:processing:old", envelope("o-run", 4), envelope("o1", 4)).Err())

		rec := newRecorder()
		sb, err := queue.NewSubscriber(c, fast(queue.WithConcurrency(1), queue.WithMaxAttempts(5), queue.WithConsumerName("w"))...)
		require.NoError(t, err)
		sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			rec.add(m)
			return nil
		}))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return rec.len() == 5 && stats(t, c, topic).Dead == 2 }, waitFor, tick)
		attempts := map[string]int{}
		for _, m := range rec.all() {
			attempts[string(m.Payload)] = m.Attempt
		}
		assert.Equal(t, map[string]int{"run": 3, "p1": 5, "p2": 5, "p3": 1, "o1": 5}, attempts)
		dls, err := queue.NewInspector(c).DeadLetters(ctx, topic, 0, 10)
		require.NoError(t, err)
		var dead []string
		for _, d := range dls {
			dead = append(dead, string(d.Message.Payload))
			assert.Equal(t, 5, d.Attempts)
		}
		assert.ElementsMatch(t, []string{"pill", "o-run"}, dead)

		// A live consumer records its concurrency, and removes it on Shutdown.
		n, err := c.HGet(ctx, cons, "w").Int()
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		shutdown(t, sub)
		left, err := c.HGetAll(ctx, cons).Result()
		require.NoError(t, err)
		assert.Empty(t, left, "reaped and released consumers leave no entry")
	})
}

// A restarted consumer with the same name returns what its crashed
// predecessor held as soon as the predecessor's lease has run out, without
// waiting for another consumer to reap it.
func TestReclaimOwnPredecessor(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		stale := serverMillis(t, c) - 3_000 // lease (fast) is 2s
		require.NoError(t, c.ZAdd(ctx, "{"+topic+"}:consumers", redis.Z{Score: float64(stale), Member: "pod-1"}).Err())
		require.NoError(t, c.RPush(ctx, "{"+topic+"}:processing:pod-1", envelope("x", 0)).Err())
		rec := subscribeRecorder(t, c, topic, fast(queue.WithConsumerName("pod-1"), queue.WithPollInterval(time.Hour))...)
		require.Eventually(t, func() bool { return rec.len() == 1 }, waitFor, tick)
		assert.Equal(t, 2, rec.all()[0].Attempt, "the interrupted delivery counts")
	})
}

// Two processes with one consumer name would share a processing list and
// take each other's messages: while the name's heartbeat is younger than
// the lease, Subscribe fails and leaves the list alone.
func TestConsumerNameInUse(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		release := make(chan struct{})
		defer close(release)
		started := make(chan struct{}, 1)
		// First process: live, holding a message in its handler.
		subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
			started <- struct{}{}
			<-release
			return nil
		}, fast(queue.WithConsumerName("pod-1"))...)
		require.NoError(t, publisher(t, c).Publish(ctx, topic, broker.NewMessage([]byte("held"))))
		<-started
		// Second process (its own Subscriber), same name.
		sb, err := queue.NewSubscriber(c, fast(queue.WithConsumerName("pod-1"))...)
		require.NoError(t, err)
		sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
		require.ErrorIs(t, err, queue.ErrConsumerNameInUse)
		assert.Nil(t, sub)
		assert.Contains(t, err.Error(), `consumer "pod-1" sent a heartbeat`)
		held, err := c.LLen(ctx, "{"+topic+"}:processing:pod-1").Result()
		require.NoError(t, err)
		assert.Equal(t, int64(1), held, "the live consumer keeps its message")
		assert.Equal(t, int64(0), stats(t, c, topic).Ready)
	})
}

// Values the consumer cannot deliver never stop it: a malformed envelope and
// an oversize value go to the dead letters with the reason; a foreign value
// is delivered as payload. Every message is accounted for.
func TestBadValues(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		for _, mode := range []string{"reliable", "simple"} {
			t.Run(mode, func(t *testing.T) {
				c := s.Client(t)
				ctx := context.Background()
				topic := redistest.Topic(t)
				good := envelope("good", 0)
				malformed := good[:wire.HeaderLen+3] // claims an ID longer than what is left
				malformed = malformed[:wire.HeaderLen] + "\x7f" + "ab"
				big := strings.Repeat("z", 300)
				// Both fetch paths: a backlog (batch script) and one value at a time (blocking pop).
				require.NoError(t, c.RPush(ctx, topic, malformed, "hello", big, good).Err())
				opts := modeOpts(mode, queue.WithMaxValueSize(200), queue.WithConcurrency(1))
				rec := subscribeRecorder(t, c, topic, opts...)
				require.Eventually(t, func() bool { return rec.len() == 2 && stats(t, c, topic).Dead == 2 }, waitFor, tick)
				// Then one at a time, each once the previous one was handled
				// or dead-lettered: the consumer has seen the queue empty and
				// takes each with a blocking pop.
				for i, v := range []string{big, malformed} {
					require.NoError(t, c.RPush(ctx, topic, v).Err())
					require.Eventually(t, func() bool { return stats(t, c, topic).Dead == int64(3+i) }, waitFor, tick)
				}
				require.NoError(t, c.RPush(ctx, topic, "plain").Err())
				require.Eventually(t, func() bool { return rec.len() == 3 }, waitFor, tick)
				assert.Equal(t, []string{"hello", "good", "plain"}, rec.payloads())
				require.Eventually(t, func() bool { return stats(t, c, topic).Dead == 4 }, waitFor, tick)
				dls, err := queue.NewInspector(c).DeadLetters(ctx, topic, 0, 10)
				require.NoError(t, err)
				var reasons []string
				for _, d := range dls {
					reasons = append(reasons, d.Reason)
				}
				for _, r := range reasons {
					assert.True(t, strings.Contains(r, "exceeds limit of 200") || strings.Contains(r, "malformed"), r)
				}
				// Once the last handled value's ack is written, nothing is left.
				require.Eventually(t, func() bool {
					st := stats(t, c, topic)
					return st.Ready+st.Processing+st.Orphaned+st.Delayed == 0
				}, waitFor, tick)
			})
		}
	})
}

// A value in the consumer's own processing list that it does not know about
// (the reply of its BLMOVE was lost) is returned to ready and delivered.
func TestOrphanInOwnProcessingList(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		rec := subscribeRecorder(t, c, topic, fast(queue.WithConsumerName("w"), queue.WithPollInterval(20*time.Millisecond))...)
		require.NoError(t, c.RPush(context.Background(), "{"+topic+"}:processing:w", envelope("orphan", 0)).Err())
		require.Eventually(t, func() bool { return rec.len() == 1 }, waitFor, tick)
		assert.Equal(t, 1, rec.all()[0].Attempt)
		require.Eventually(t, func() bool { return stats(t, c, topic).Processing == 0 }, waitFor, tick)
	})
}

// A processing list whose consumer is not registered (it was reaped during
// a long pause, moved a value with BLMOVE before its next heartbeat, and
// died) is shown by Stats, found by a live consumer's sweep, and reaped
// after the lease like any dead consumer's.
func TestOrphanedListRecovered(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		require.NoError(t, c.RPush(ctx, "{"+topic+"}:processing:ghost", envelope("a", 0), envelope("b", 0)).Err())
		assert.Equal(t, queue.Stats{Orphaned: 2}, stats(t, c, topic))
		rec := subscribeRecorder(t, c, topic, fast()...)
		require.Eventually(t, func() bool { return rec.len() == 2 }, waitFor, tick)
		assert.Equal(t, []string{"a", "b"}, rec.payloads())
		assert.Equal(t, 2, rec.all()[0].Attempt, "the ghost may have been running them")
		require.Eventually(t, func() bool { return stats(t, c, topic) == queue.Stats{Consumers: 1} }, waitFor, tick)
	})
}

// Stats and the sweep match the topic's processing lists literally: glob
// characters in a topic name do not pull in another topic's lists.
func TestStatsTopicWithGlobChars(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		base := redistest.Topic(t)
		topic := base + `[1]*?\`
		// What the unescaped pattern {<topic>}:processing:* would match.
		require.NoError(t, c.RPush(ctx, "{"+base+"1x?\\}:processing:w", "decoy").Err())
		require.NoError(t, c.RPush(ctx, "{"+topic+"}:processing:w", "mine").Err())
		assert.Equal(t, queue.Stats{Orphaned: 1}, stats(t, c, topic))
	})
}

// A consumer reaped during a pause registers again with the batch fetch
// that fills its processing list, not only at its next heartbeat: if it
// died right after that fetch, a live consumer would still reap it.
func TestFetchRegisters(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		cons := "{" + topic + "}:consumers"
		// No sweep: it could register the consumer too.
		defer holdScans(c)()
		require.NoError(t, publisher(t, c).Publish(ctx, topic, msgs("m", 6)...))
		got := make(chan string)
		proceed := make(chan struct{})
		// No heartbeat for an hour: only a fetch can register it.
		subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
			got <- string(m.Payload)
			<-proceed
			return nil
		}, fast(queue.WithConsumerName("w"), queue.WithConcurrency(1), queue.WithPrefetch(1),
			queue.WithLease(3*time.Hour), queue.WithPollInterval(time.Hour))...)
		assert.Equal(t, "m0", <-got) // its handler runs; 5 are still waiting
		// Reaped meanwhile (as reap.lua does).
		require.NoError(t, c.ZRem(ctx, cons, "w").Err())
		require.NoError(t, c.HDel(ctx, "{"+topic+"}:concurrency", "w").Err())
		proceed <- struct{}{}
		assert.Equal(t, "m1", <-got) // fetched after the reap
		_, err := c.ZScore(ctx, cons, "w").Result()
		require.NoError(t, err, "registered by the fetch")
		n, err := c.HGet(ctx, "{"+topic+"}:concurrency", "w").Int()
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		close(proceed)
		for range 4 {
			<-got
		}
	})
}
