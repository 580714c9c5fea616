package stream_test

import (
	"context"
	"errors"
	"fmt"
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

const waitTimeout = 10 * time.Second

// fastOpts are subscriber options for tests: short timeouts everywhere.
func fastOpts(t testing.TB, more ...stream.Option) []stream.Option {
	return append([]stream.Option{
		stream.WithVisibilityTimeout(200 * time.Millisecond),
		stream.WithBlock(100 * time.Millisecond),
		stream.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
		stream.WithLogger(testLogger(t)),
	}, more...)
}

func newPub(t testing.TB, c redis.UniversalClient, opts ...stream.Option) *stream.Publisher {
	t.Helper()
	p, err := stream.NewPublisher(c, opts...)
	require.NoError(t, err)
	return p
}

// subscribe starts a subscription shut down at cleanup.
func subscribe(t testing.TB, c redis.UniversalClient, topic string, h broker.Handler, opts ...stream.Option) *stream.Subscription {
	t.Helper()
	sub, err := stream.NewSubscriber(c, fastOpts(t, opts...)...)
	require.NoError(t, err)
	s, err := sub.Subscribe(context.Background(), topic, h)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		assert.NoError(t, s.Shutdown(ctx))
	})
	return s.(*stream.Subscription)
}

func publishN(t testing.TB, pub *stream.Publisher, topic string, n int) []*broker.Message {
	t.Helper()
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = broker.NewMessage([]byte(strconv.Itoa(i)))
	}
	for i := 0; i < n; i += 500 {
		require.NoError(t, pub.Publish(context.Background(), topic, msgs[i:min(i+500, n)]...))
	}
	return msgs
}

func pendingCount(t testing.TB, c redis.UniversalClient, topic, group string) int64 {
	t.Helper()
	p, err := c.XPending(context.Background(), topic, group).Result()
	require.NoError(t, err)
	return p.Count
}

func TestOptionsInvalid(t *testing.T) {
	c := redistest.NewMiniredis(t).Client(t)
	for _, tc := range []struct {
		name string
		opts []stream.Option
		sub  bool
	}{
		{"zero block", []stream.Option{stream.WithBlock(0)}, true},
		{"block over 1s", []stream.Option{stream.WithBlock(1001 * time.Millisecond)}, true},
		{"negative concurrency", []stream.Option{stream.WithConcurrency(-1)}, true},
		{"zero prefetch", []stream.Option{stream.WithPrefetch(0)}, true},
		{"empty group", []stream.Option{stream.WithGroup("")}, true},
		{"bad start", []stream.Option{stream.WithStartID("x")}, true},
		{"tiny visibility", []stream.Option{stream.WithVisibilityTimeout(time.Millisecond)}, true},
		{"zero attempts", []stream.Option{stream.WithMaxAttempts(0)}, true},
		{"idle below visibility", []stream.Option{stream.WithVisibilityTimeout(time.Minute), stream.WithConsumerIdleTimeout(time.Second)}, true},
		{"bad backoff", []stream.Option{stream.WithBackoff(time.Second, time.Millisecond)}, true},
		{"publisher option on subscriber", []stream.Option{stream.WithMaxLen(10)}, true},
		{"nil option", []stream.Option{nil}, true},
		{"nil logger", []stream.Option{stream.WithLogger(nil)}, false},
		{"zero maxlen", []stream.Option{stream.WithMaxLen(0)}, false},
		{"maxlen and maxage", []stream.Option{stream.WithMaxLen(10), stream.WithMaxAge(time.Hour)}, false},
		{"bad minid", []stream.Option{stream.WithMinID("abc")}, false},
		{"subscriber option on publisher", []stream.Option{stream.WithGroup("g")}, false},
		{"zero max payload", []stream.Option{stream.WithMaxPayload(0)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.sub {
				_, err = stream.NewSubscriber(c, tc.opts...)
			} else {
				_, err = stream.NewPublisher(c, tc.opts...)
			}
			assert.ErrorIs(t, err, broker.ErrInvalidOption)
		})
	}
	_, err := stream.NewPublisher(nil)
	assert.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = stream.NewSubscriber(c, stream.WithBlock(time.Second))
	assert.NoError(t, err, "1s is the largest block")
}

// TestInspectorNilClient: an Inspector without a client fails every call
// with ErrInvalidOption instead of panicking.
func TestInspectorNilClient(t *testing.T) {
	in := stream.NewInspector(nil)
	ctx := context.Background()
	_, err := in.Groups(ctx, "t")
	assert.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = in.Len(ctx, "t")
	assert.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = in.DeadLetters(ctx, "t", 0)
	assert.ErrorIs(t, err, broker.ErrInvalidOption)
}

// TestTopicBraces: a topic with a hash tag of its own keeps its dead letters
// in "<topic>:dead" (same Cluster slot as the topic); a topic with a '}' but
// no hash tag, for which no such key exists, is rejected.
func TestTopicBraces(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		sub, err := stream.NewSubscriber(c)
		require.NoError(t, err)
		_, err = sub.Subscribe(ctx, "a}b", broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
		require.ErrorIs(t, err, broker.ErrInvalidOption)
		_, err = stream.NewInspector(c).DeadLetters(ctx, "a}b", 0)
		require.ErrorIs(t, err, broker.ErrInvalidOption)

		topic := "tagged{" + redistest.Topic(t) + "}orders"
		subscribe(t, c, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			return broker.ErrDiscard
		}))
		m := broker.NewMessage([]byte("x"))
		require.NoError(t, newPub(t, c).Publish(ctx, topic, m))
		var dead []*broker.Message
		require.Eventually(t, func() bool {
			dead, err = stream.NewInspector(c).DeadLetters(ctx, topic, 0)
			require.NoError(t, err)
			return len(dead) == 1
		}, waitTimeout, 5*time.Millisecond)
		assert.Equal(t, m.ID, dead[0].ID)
		assert.EqualValues(t, 1, c.XLen(ctx, topic+":dead").Val())
	})
}

func TestPublishTooLarge(t *testing.T) {
	c := redistest.NewMiniredis(t).Client(t)
	pub := newPub(t, c, stream.WithMaxPayload(4))
	topic := redistest.Topic(t)
	err := pub.Publish(context.Background(), topic, broker.NewMessage([]byte("ok")), broker.NewMessage([]byte("too long")))
	require.ErrorIs(t, err, broker.ErrTooLarge)
	n, err := c.XLen(context.Background(), topic).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "nothing is sent when one message is too large")
}

// TestForeignEntries: entries added by another client (redis-cli XADD s * k v)
// are delivered with their fields as metadata and the only field as payload.
func TestForeignEntries(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		ctx := context.Background()
		type got struct {
			msg     broker.Message
			entryID string
		}
		ch := make(chan got, 3)
		subscribe(t, c, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			ch <- got{*m, stream.EntryID(ctx, m)}
			return nil
		}))
		id1 := c.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"k", "v"}}).Val()
		id2 := c.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"a", "1", "b", "2"}}).Val()
		id3 := c.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"payload", "body", "x", "y"}}).Val()

		g := <-ch
		assert.Equal(t, id1, g.msg.ID)
		assert.Equal(t, id1, g.entryID)
		assert.Equal(t, "v", string(g.msg.Payload))
		assert.Equal(t, map[string]string{"k": "v"}, g.msg.Metadata)
		assert.Equal(t, 1, g.msg.Attempt)
		assert.WithinDuration(t, time.Now(), g.msg.Time, time.Minute, "time from the entry ID")
		g = <-ch
		assert.Equal(t, id2, g.msg.ID)
		assert.Empty(t, g.msg.Payload)
		assert.Equal(t, map[string]string{"a": "1", "b": "2"}, g.msg.Metadata)
		g = <-ch
		assert.Equal(t, id3, g.msg.ID)
		assert.Equal(t, "body", string(g.msg.Payload))
		assert.Equal(t, map[string]string{"x": "y"}, g.msg.Metadata)
	})
}

// TestEntryIDAndReplay: a handler learns the entry ID of an envelope message
// from its ctx, and Replay from that ID returns it first.
func TestEntryIDAndReplay(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		msgs := publishN(t, pub, topic, 5)
		entryIDs := make(chan string, 5)
		subscribe(t, c, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if m.ID == msgs[2].ID {
				entryIDs <- stream.EntryID(ctx, m)
			}
			return nil
		}), stream.WithStartID("0"))
		var entryID string
		select {
		case entryID = <-entryIDs:
		case <-time.After(waitTimeout):
			t.Fatal("no delivery")
		}
		assert.NotEqual(t, msgs[2].ID, entryID)
		got, err := stream.Replay(context.Background(), c, topic, entryID, "", 0)
		require.NoError(t, err)
		require.Len(t, got, 3)
		assert.Equal(t, entryID, got[0].ID)
		for i, e := range got {
			assert.Equal(t, msgs[2+i].ID, e.Message.ID)
			assert.Equal(t, msgs[2+i].Payload, e.Message.Payload)
			assert.Equal(t, topic, e.Message.Topic)
			assert.Zero(t, e.Message.Attempt)
		}
		excl, err := stream.Replay(context.Background(), c, topic, "("+entryID, "+", 1)
		require.NoError(t, err)
		require.Len(t, excl, 1)
		assert.Equal(t, msgs[3].ID, excl[0].Message.ID)
		none, err := stream.Replay(context.Background(), c, topic+"-missing", "", "", 0)
		require.NoError(t, err)
		assert.Empty(t, none)
	})
}

func TestReplayAllPages(t *testing.T) {
	c := redistest.NewMiniredis(t).Client(t)
	topic := redistest.Topic(t)
	msgs := publishN(t, newPub(t, c), topic, 1200)
	i := 0
	for e, err := range stream.ReplayAll(context.Background(), c, topic, "") {
		require.NoError(t, err)
		require.Equal(t, msgs[i].ID, e.Message.ID)
		i++
	}
	assert.Equal(t, len(msgs), i)
}

// TestPoisonMessages: a message whose handler always fails goes to the dead
// letters after MaxAttempts deliveries, with its fields and the reason; the
// other messages flow meanwhile.
func TestPoisonMessages(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		poison := &broker.Message{Payload: []byte("poison"), Metadata: map[string]string{"k": "v"}}
		discard := broker.NewMessage([]byte("discard"))
		var attempts sync.Map
		var good atomic.Int64
		s := subscribe(t, c, topic, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			attempts.Store(m.ID+"/"+strconv.Itoa(m.Attempt), true)
			switch m.ID {
			case poison.ID:
				return errors.New("always fails")
			case discard.ID:
				return fmt.Errorf("invalid: %w", broker.ErrDiscard)
			}
			good.Add(1)
			return nil
		}), stream.WithMaxAttempts(3), stream.WithConcurrency(4))
		require.NoError(t, pub.Publish(context.Background(), topic, poison, discard))
		publishN(t, pub, topic, 100)

		in := stream.NewInspector(c)
		var dead []*broker.Message
		require.Eventually(t, func() bool {
			var err error
			dead, err = in.DeadLetters(context.Background(), topic, 0)
			require.NoError(t, err)
			return len(dead) == 2 && good.Load() == 100
		}, waitTimeout, 10*time.Millisecond)
		byID := map[string]*broker.Message{dead[0].ID: dead[0], dead[1].ID: dead[1]}
		d := byID[poison.ID]
		require.NotNil(t, d, "the poison message is a dead letter")
		assert.Equal(t, "poison", string(d.Payload))
		assert.Equal(t, "v", d.Metadata["k"])
		assert.Equal(t, "3", d.Metadata[stream.DeadAttempts])
		assert.Contains(t, d.Metadata[stream.DeadReason], "always fails")
		assert.Equal(t, "broker", d.Metadata[stream.DeadGroup])
		assert.NotEmpty(t, d.Metadata[stream.DeadEntryID])
		assert.WithinDuration(t, poison.Time, d.Time, time.Millisecond)
		for a := 1; a <= 3; a++ {
			_, ok := attempts.Load(poison.ID + "/" + strconv.Itoa(a))
			assert.True(t, ok, "attempt %d of the poison message", a)
		}
		d = byID[discard.ID]
		require.NotNil(t, d, "the discarded message is a dead letter")
		assert.Equal(t, "1", d.Metadata[stream.DeadAttempts])
		assert.Contains(t, d.Metadata[stream.DeadReason], "discard")

		// Never again handed to the handler, nothing left pending.
		time.Sleep(500 * time.Millisecond)
		_, ok := attempts.Load(poison.ID + "/4")
		assert.False(t, ok, "the poison message was delivered after MaxAttempts")
		assert.Zero(t, pendingCount(t, c, topic, "broker"))
		st := s.Stats()
		assert.EqualValues(t, 2, st.DeadLettered)
		assert.EqualValues(t, 2, st.Failed)
	})
}

// TestRestartDrainsOwnPending: a consumer restarted under the same name gets
// the entries it had read but not acked, with their delivery count, before
// new ones.
func TestRestartDrainsOwnPending(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
		msgs := publishN(t, pub, topic, 5)
		// A previous run of "w1" read 3 and crashed.
		require.NoError(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "w1", Streams: []string{topic, ">"}, Count: 3, Block: -1}).Err())

		rec := brokertest.NewRecorder(nil)
		var order []string
		var mu sync.Mutex
		subscribe(t, c, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			mu.Lock()
			order = append(order, m.ID)
			mu.Unlock()
			return rec.Handle(ctx, m)
		}), stream.WithGroup("g"), stream.WithConsumerName("w1"),
			// Long enough that nothing is claimed: this is the drain.
			stream.WithVisibilityTimeout(time.Minute))
		require.Eventually(t, func() bool { return rec.Len() == 5 }, waitTimeout, 5*time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		for i, m := range msgs {
			assert.Equal(t, m.ID, order[i], "order")
			want := 1
			if i < 3 {
				want = 2
			}
			got := rec.Received(m.ID)
			require.Len(t, got, 1)
			assert.Equal(t, want, got[0].Attempt, "attempt of message %d", i)
		}
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, "g") == 0 }, waitTimeout, 5*time.Millisecond)
	})
}

// TestCrashedConsumerClaimed: entries pending for a consumer that went away
// are claimed by another after the visibility timeout, with Attempt 2.
func TestCrashedConsumerClaimed(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
		msgs := publishN(t, newPub(t, c), topic, 4)
		require.NoError(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "gone", Streams: []string{topic, ">"}, Count: 4, Block: -1}).Err())
		rec := brokertest.NewRecorder(nil)
		s := subscribe(t, c, topic, rec, stream.WithGroup("g"))
		require.Eventually(t, func() bool { return rec.Len() == 4 }, waitTimeout, 5*time.Millisecond)
		for _, m := range msgs {
			got := rec.Received(m.ID)
			require.Len(t, got, 1)
			assert.Equal(t, 2, got[0].Attempt)
		}
		assert.EqualValues(t, 4, s.Stats().Claimed)
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, "g") == 0 }, waitTimeout, 5*time.Millisecond)
	})
}

// TestShutdownHandsBack: unstarted entries are handed back with their
// delivery count restored, and another consumer takes them at once.
func TestShutdownHandsBack(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		subA, err := stream.NewSubscriber(c, fastOpts(t, stream.WithVisibilityTimeout(5*time.Second))...)
		require.NoError(t, err)
		sA, err := subA.Subscribe(context.Background(), topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			select {
			case started <- struct{}{}:
			default:
			}
			<-release
			return nil
		}))
		require.NoError(t, err)
		msgs := publishN(t, pub, topic, 10)
		<-started
		// The fetcher may read the ten entries in more than one XREADGROUP
		// (the blocked read is served after the first XADD of the
		// pipeline): wait until all ten are fetched, so nine are unstarted.
		require.Eventually(t, func() bool { return pendingCount(t, c, topic, stream.DefaultGroup) == 10 }, 2*time.Second, 5*time.Millisecond)
		res := make(chan error, 1)
		go func() { res <- sA.Shutdown(context.Background()) }()
		// Released once Shutdown stopped the fetch: the worker then starts
		// no other entry, so nine are unstarted.
		<-stream.Stopping(sA.(*stream.Subscription))
		close(release)
		require.NoError(t, <-res)
		assert.EqualValues(t, 9, sA.(*stream.Subscription).Stats().HandedBack)

		rec := brokertest.NewRecorder(nil)
		subscribe(t, c, topic, rec, stream.WithVisibilityTimeout(5*time.Second))
		// Well before the 5s visibility timeout.
		require.Eventually(t, func() bool { return rec.Len() == 9 }, 2*time.Second, 5*time.Millisecond)
		for _, m := range msgs[1:] {
			got := rec.Received(m.ID)
			require.Len(t, got, 1)
			assert.Equal(t, 1, got[0].Attempt, "a handed-back entry keeps its attempt")
		}
	})
}

func TestInspectorGroups(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		in := stream.NewInspector(c)
		groups, err := in.Groups(ctx, topic)
		require.NoError(t, err)
		assert.Empty(t, groups, "no stream")
		require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
		publishN(t, newPub(t, c), topic, 3)
		require.NoError(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{topic, ">"}, Count: 1, Block: -1}).Err())
		groups, err = in.Groups(ctx, topic)
		require.NoError(t, err)
		require.Len(t, groups, 1)
		assert.Equal(t, "g", groups[0].Name)
		assert.EqualValues(t, 1, groups[0].Pending)
		assert.EqualValues(t, 1, groups[0].Consumers)
		if srv.Real() { // miniredis reports the stream length as lag
			assert.EqualValues(t, 2, groups[0].Lag)
		}
		n, err := in.Len(ctx, topic)
		require.NoError(t, err)
		assert.EqualValues(t, 3, n)
	})
}
