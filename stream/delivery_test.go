package stream_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/brokertest"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/stream"
)

// pendingEntry returns the pending-list record of one entry.
func pendingEntry(t testing.TB, c redis.UniversalClient, topic, group, id string) redis.XPendingExt {
	t.Helper()
	p, err := c.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: topic, Group: group, Start: id, End: id, Count: 1}).Result()
	require.NoError(t, err)
	require.Len(t, p, 1, "entry %s is not pending", id)
	return p[0]
}

// TestHardStopNotDeadLettered: a handler that returns ctx.Err() because of
// the hard stop (the Shutdown deadline, or the Subscribe ctx cancelled) is
// neither a failed attempt nor a dead letter: the entry is handed back, and
// another consumer delivers it at once. The cut delivery counts as a
// delivery (attempt 2 next), but never as the one that exhausts
// MaxAttempts: with MaxAttempts 1 the next delivery is attempt 1 again,
// not a dead letter.
func TestHardStopNotDeadLettered(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		for _, tc := range []struct {
			stop        string
			maxAttempts int
			count       int64 // delivery count after the hand back
		}{
			{"shutdown deadline", 1, 0},
			{"subscribe ctx", 1, 0},
			{"shutdown deadline", 5, 1},
			{"subscribe ctx", 5, 1},
		} {
			t.Run(fmt.Sprintf("%s/max %d", tc.stop, tc.maxAttempts), func(t *testing.T) {
				c := srv.Client(t)
				topic := redistest.Topic(t)
				opts := fastOpts(t, stream.WithMaxAttempts(tc.maxAttempts), stream.WithVisibilityTimeout(time.Minute))
				sub, err := stream.NewSubscriber(c, opts...)
				require.NoError(t, err)
				started := make(chan string, 1)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				s, err := sub.Subscribe(ctx, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					started <- stream.EntryID(ctx, m)
					<-ctx.Done()
					return ctx.Err()
				}))
				require.NoError(t, err)
				m := broker.NewMessage([]byte("good"))
				require.NoError(t, newPub(t, c).Publish(context.Background(), topic, m))
				id := <-started
				if tc.stop == "subscribe ctx" {
					cancel()
				} else {
					expired, cancelShutdown := context.WithCancel(context.Background())
					cancelShutdown()
					require.ErrorIs(t, s.Shutdown(expired), context.Canceled)
				}
				<-s.Done()

				st := s.(*stream.Subscription).Stats()
				assert.Zero(t, st.Failed, "failed")
				assert.Zero(t, st.DeadLettered, "dead-lettered")
				assert.EqualValues(t, 1, st.Interrupted)
				dead, err := stream.NewInspector(c).DeadLetters(context.Background(), topic, 0)
				require.NoError(t, err)
				assert.Empty(t, dead)
				p := pendingEntry(t, c, topic, stream.DefaultGroup, id)
				assert.Equal(t, tc.count, p.RetryCount, "delivery count after the hand back")
				assert.GreaterOrEqual(t, p.Idle, time.Minute, "handed back: claimable at once")

				rec := brokertest.NewRecorder(nil)
				subscribe(t, c, topic, rec, stream.WithMaxAttempts(tc.maxAttempts), stream.WithVisibilityTimeout(time.Minute))
				require.Eventually(t, func() bool { return rec.Len() == 1 }, waitTimeout, 5*time.Millisecond)
				got := rec.Received(m.ID)
				require.Len(t, got, 1)
				assert.EqualValues(t, tc.count+1, got[0].Attempt)
				require.Eventually(t, func() bool { return pendingCount(t, c, topic, stream.DefaultGroup) == 0 }, waitTimeout, 5*time.Millisecond)
			})
		}
	})
}

// TestDiscardDeadLetterRetried: when the dead-letter write fails for an
// entry the handler discarded, it is retried with backoff while the entry
// stays held; the entry is never acked without its dead letter, and never
// redelivered.
func TestDiscardDeadLetterRetried(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		deadKey := "{" + topic + "}:dead"
		require.NoError(t, c.Set(ctx, deadKey, "not a stream", 0).Err()) // XADD fails: WRONGTYPE
		logs := newLogRecorder()
		var calls atomic.Int64
		s := subscribe(t, c, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			calls.Add(1)
			return fmt.Errorf("bad input: %w", broker.ErrDiscard)
		}), stream.WithLogger(logs.logger()), stream.WithVisibilityTimeout(time.Minute))
		m := broker.NewMessage([]byte("discard me"))
		require.NoError(t, newPub(t, c).Publish(ctx, topic, m))
		require.Eventually(t, func() bool { return len(logs.matching("dead letter failed")) > 0 }, waitTimeout, 5*time.Millisecond)
		assert.EqualValues(t, 1, pendingCount(t, c, topic, stream.DefaultGroup), "not acked without its dead letter")
		require.NoError(t, c.Del(ctx, deadKey).Err())

		in := stream.NewInspector(c)
		require.Eventually(t, func() bool {
			dead, err := in.DeadLetters(ctx, topic, 0)
			require.NoError(t, err)
			return len(dead) == 1 && dead[0].ID == m.ID
		}, waitTimeout, 5*time.Millisecond)
		// miniredis runs a script's commands one by one: the XACK may lag.
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, stream.DefaultGroup) == 0 }, waitTimeout, 5*time.Millisecond)
		assert.EqualValues(t, 1, calls.Load(), "handled once, never redelivered")
		require.Eventually(t, func() bool { return s.Stats().DeadLettered == 1 }, waitTimeout, time.Millisecond)
	})
}

// TestRetryBackoffGrows: after a handler error the entry is delivered again
// after the retry backoff, which doubles per attempt, instead of after the
// visibility timeout (5s here).
func TestRetryBackoffGrows(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		const base = 100 * time.Millisecond
		var mu sync.Mutex
		var at []time.Time
		subscribe(t, c, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
			return errors.New("fails")
		}), stream.WithVisibilityTimeout(5*time.Second), stream.WithRetryBackoff(base, 2*time.Second), stream.WithMaxAttempts(5))
		require.NoError(t, newPub(t, c).Publish(context.Background(), topic, broker.NewMessage([]byte("x"))))
		require.Eventually(t, func() bool {
			dead, err := stream.NewInspector(c).DeadLetters(context.Background(), topic, 0)
			require.NoError(t, err)
			return len(dead) == 1
		}, waitTimeout, 10*time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, at, 5)
		var delays []time.Duration
		for i := 1; i < len(at); i++ {
			delays = append(delays, at[i].Sub(at[i-1]))
		}
		t.Logf("retry delays: %v", delays)
		for i, d := range delays {
			upper := base << i // Delay(n) is in [upper/2, upper]
			assert.GreaterOrEqual(t, d, upper/2-2*time.Millisecond, "delay after attempt %d", i+1)
			// The fetcher wakes for the retry; the rest is scheduling slack.
			assert.LessOrEqual(t, d, upper+500*time.Millisecond, "delay after attempt %d", i+1)
		}
		assert.Greater(t, delays[3], delays[0], "the backoff grows")
	})
}

// TestAcksBatched: acks of handlers that finish while an XACK is in flight
// go out together in the next XACK.
func TestAcksBatched(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		h := newHook(c)
		release := make(chan struct{})
		var once sync.Once
		h.set(func(h *cmdHook) {
			h.keep = func(cmd redis.Cmder) bool { return cmdName(cmd) == "xack" }
			h.hold = func(cmd redis.Cmder) <-chan struct{} {
				var held <-chan struct{}
				if cmdName(cmd) == "xack" {
					once.Do(func() { held = release })
				}
				return held
			}
		})
		rec := brokertest.NewRecorder(nil)
		subscribe(t, c, topic, rec, stream.WithConcurrency(8))
		const n = 50
		publishN(t, newPub(t, c), topic, n)
		require.Eventually(t, func() bool { return rec.Len() == n }, waitTimeout, time.Millisecond)
		close(release)
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, stream.DefaultGroup) == 0 }, waitTimeout, time.Millisecond)
		var sizes []int
		for _, cmd := range h.kept() {
			sizes = append(sizes, len(cmd.Args())-3) // XACK key group id...
		}
		t.Logf("XACK sizes: %v", sizes)
		total := 0
		for _, k := range sizes {
			total += k
		}
		assert.Equal(t, n, total, "acked IDs")
		assert.LessOrEqual(t, len(sizes), 10, "one XACK per flush, not per message")
		if len(sizes) > 1 {
			// The first XACK was held until every handler had returned: the
			// next one carries all acks but the few (at most the concurrency)
			// not yet queued when it was sent.
			assert.GreaterOrEqual(t, sizes[1], n-sizes[0]-8, "the acks that waited went out together")
		}
	})
}

// TestStartIDDollarSkipsEarlier: a new group at "$" (the default) gets only
// entries added after Subscribe; one at "0" gets the whole stream.
func TestStartIDDollarSkipsEarlier(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		before := broker.NewMessage([]byte("before"))
		require.NoError(t, pub.Publish(context.Background(), topic, before))
		latest := brokertest.NewRecorder(nil)
		subscribe(t, c, topic, latest) // "$"
		all := brokertest.NewRecorder(nil)
		subscribe(t, c, topic, all, stream.WithGroup("all"), stream.WithStartID("0"))
		after := broker.NewMessage([]byte("after"))
		require.NoError(t, pub.Publish(context.Background(), topic, after))
		require.Eventually(t, func() bool { return latest.Count(after.ID) == 1 && all.Len() == 2 }, waitTimeout, time.Millisecond)
		// One consumer, concurrency 1: entries arrive in ID order, so an
		// earlier entry would have come first.
		assert.Zero(t, latest.Count(before.ID), "the $ group got an entry added before it existed")
		assert.Equal(t, 1, all.Count(before.ID))
	})
}

// TestRecoveryMaxAttempts: an entry delivered more than MaxAttempts times
// because its consumers crashed goes to the dead letters from the claim,
// without running the handler again.
func TestRecoveryMaxAttempts(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
		msgs := publishN(t, newPub(t, c), topic, 1)
		res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "crashed-1", Streams: []string{topic, ">"}, Count: 1, Block: -1}).Result()
		require.NoError(t, err)
		id := res[0].Messages[0].ID
		// A second consumer took it over and crashed too: delivered twice.
		require.NoError(t, c.XClaim(ctx, &redis.XClaimArgs{Stream: topic, Group: "g", Consumer: "crashed-2", Messages: []string{id}}).Err())
		require.EqualValues(t, 2, pendingEntry(t, c, topic, "g", id).RetryCount)

		var calls atomic.Int64
		s := subscribe(t, c, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			calls.Add(1)
			return nil
		}), stream.WithGroup("g"), stream.WithMaxAttempts(2))
		var dead []*broker.Message
		require.Eventually(t, func() bool {
			dead, err = stream.NewInspector(c).DeadLetters(ctx, topic, 0)
			require.NoError(t, err)
			return len(dead) == 1
		}, waitTimeout, 5*time.Millisecond)
		assert.Equal(t, msgs[0].ID, dead[0].ID)
		assert.Equal(t, "3", dead[0].Metadata[stream.DeadAttempts])
		assert.Contains(t, dead[0].Metadata[stream.DeadReason], "delivered 3 times")
		assert.Zero(t, calls.Load(), "the handler never ran")
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, "g") == 0 && s.Stats().DeadLettered == 1 },
			waitTimeout, time.Millisecond)
	})
}

// TestDeliveryCountsOneLookup: the delivery counts of a batch of claimed
// entries are looked up with one XPENDING, not one per entry.
func TestDeliveryCountsOneLookup(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
		const n = 50
		publishN(t, newPub(t, c), topic, n)
		require.NoError(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "gone", Streams: []string{topic, ">"}, Count: n, Block: -1}).Err())
		sc := srv.Client(t)
		h := newHook(sc)
		rec := brokertest.NewRecorder(nil)
		subscribe(t, sc, topic, rec, stream.WithGroup("g"))
		require.Eventually(t, func() bool { return rec.Len() == n }, waitTimeout, 5*time.Millisecond)
		assert.LessOrEqual(t, h.count("xpending"), 2, "XPENDING calls for %d claimed entries", n)
		for _, m := range rec.Messages() {
			assert.Equal(t, 2, m.Attempt)
		}
	})
}

// TestDeliveryCountKeptWhenLookupFails: when the delivery count cannot be
// looked up, the attempt is guessed (2 for a claimed entry), but the guess
// is never written back: lease renewals keep the count Redis has.
func TestDeliveryCountKeptWhenLookupFails(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
		publishN(t, newPub(t, c), topic, 1)
		res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "gone-1", Streams: []string{topic, ">"}, Count: 1, Block: -1}).Result()
		require.NoError(t, err)
		id := res[0].Messages[0].ID
		for _, name := range []string{"gone-2", "gone-3"} {
			require.NoError(t, c.XClaim(ctx, &redis.XClaimArgs{Stream: topic, Group: "g", Consumer: name, Messages: []string{id}}).Err())
		}
		require.EqualValues(t, 3, pendingEntry(t, c, topic, "g", id).RetryCount)

		sc := srv.Client(t)
		h := newHook(sc)
		h.set(func(h *cmdHook) {
			h.keep = func(cmd redis.Cmder) bool { return argsContain(cmd, id) && cmdName(cmd) != "xautoclaim" }
			h.fail = func(cmd redis.Cmder) error {
				if cmdName(cmd) == "xpending" {
					return errors.New("injected: XPENDING fails")
				}
				return nil
			}
		})
		release := make(chan struct{})
		attempts := make(chan int, 1)
		subscribe(t, sc, topic, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			attempts <- m.Attempt
			<-release
			return nil
		}), stream.WithGroup("g"))
		assert.Equal(t, 2, <-attempts, "the guessed attempt")
		renewals := func() int { return len(h.kept()) } // lease scripts naming the entry
		start := renewals()
		require.Eventually(t, func() bool { return renewals() >= start+2 }, waitTimeout, 5*time.Millisecond)
		assert.EqualValues(t, 4, pendingEntry(t, c, topic, "g", id).RetryCount, "the renewals kept the real count")
		close(release)
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, "g") == 0 }, waitTimeout, 5*time.Millisecond)
	})
}

// TestDefaultConsumerName: host-pid-random, unique per Subscriber; further
// subscriptions of one Subscriber to a topic get "-2", "-3"...
func TestDefaultConsumerName(t *testing.T) {
	c := redistest.NewMiniredis(t).Client(t)
	host, err := os.Hostname()
	require.NoError(t, err)
	want := regexp.MustCompile("^" + regexp.QuoteMeta(host) + "-" + strconv.Itoa(os.Getpid()) + "-[0-9a-f]{8}$")
	topic := redistest.Topic(t)
	a := subscribe(t, c, topic, brokertest.NewRecorder(nil))
	b := subscribe(t, c, topic, brokertest.NewRecorder(nil))
	assert.Regexp(t, want, a.Consumer())
	assert.Regexp(t, want, b.Consumer())
	assert.NotEqual(t, a.Consumer(), b.Consumer(), "two Subscribers of one process")

	sub, err := stream.NewSubscriber(c, fastOpts(t)...)
	require.NoError(t, err)
	var names []string
	for range 2 {
		s, err := sub.Subscribe(context.Background(), topic, brokertest.NewRecorder(nil))
		require.NoError(t, err)
		names = append(names, s.(*stream.Subscription).Consumer())
		t.Cleanup(func() { assert.NoError(t, s.Shutdown(context.Background())) })
	}
	assert.Regexp(t, want, names[0])
	assert.Equal(t, names[0]+"-2", names[1])
}
