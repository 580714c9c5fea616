package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/pubsub"
)

func TestRoundTrip(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var got collector
		sub := listen(t, mustSubscriber(t, c), topic, &got)
		p := mustPublisher(t, c)

		m1 := broker.NewMessage([]byte("one"))
		m2 := &broker.Message{Payload: []byte("two"), Metadata: map[string]string{"k": "v"}, ID: "my-id"}
		require.NoError(t, p.Publish(context.Background(), topic, m1, m2))
		assert.NotEmpty(t, m1.ID, "Publish fills the ID")
		assert.False(t, m1.Time.IsZero(), "Publish fills the time")
		assert.Equal(t, "my-id", m2.ID, "a caller's ID is kept")
		assert.Equal(t, map[string]string{"k": "v"}, m2.Metadata, "the caller's map is not modified")

		got.waitFor(t, 2)
		msgs := got.all()
		assert.Equal(t, m1.ID, msgs[0].ID)
		assert.Equal(t, "one", string(msgs[0].Payload))
		assert.Nil(t, msgs[0].Metadata, "sequence metadata is removed")
		assert.Equal(t, topic, msgs[0].Topic)
		assert.Zero(t, msgs[0].Attempt)
		assert.True(t, m1.Time.Equal(msgs[0].Time))
		assert.Equal(t, "my-id", msgs[1].ID)
		assert.Equal(t, map[string]string{"k": "v"}, msgs[1].Metadata)

		st := sub.Stats()
		assert.Equal(t, uint64(2), st.Received)
		require.Eventually(t, func() bool { return sub.Stats().Delivered == 2 }, time.Second, time.Millisecond)
		assert.Zero(t, st.Lost())
	})
}

func TestFanOutAndCount(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		subs := mustSubscriber(t, c)
		var a, b collector
		listen(t, subs, topic, &a)
		listen(t, subs, topic, &b)
		p := mustPublisher(t, c)
		counts, err := p.PublishCount(context.Background(), topic,
			broker.NewMessage([]byte("x")), broker.NewMessage([]byte("y")))
		require.NoError(t, err)
		assert.Equal(t, []int64{2, 2}, counts)
		a.waitFor(t, 2)
		b.waitFor(t, 2)
		assert.Equal(t, []string{"x", "y"}, a.payloads())
		assert.Equal(t, []string{"x", "y"}, b.payloads())

		counts, err = p.PublishCount(context.Background(), topic+"-nobody", broker.NewMessage(nil))
		require.NoError(t, err)
		assert.Equal(t, []int64{0}, counts, "nobody listening")
	})
}

func TestOrderWithConcurrentPublishers(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var got collector
		sub := listen(t, mustSubscriber(t, c), topic, &got)
		p := mustPublisher(t, c)
		const writers, each = 8, 200
		errc := make(chan error, writers)
		for w := range writers {
			go func() {
				for i := range each {
					if err := p.Publish(context.Background(), topic, broker.NewMessage(fmt.Appendf(nil, "%d-%d", w, i))); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
		}
		for range writers {
			require.NoError(t, <-errc)
		}
		got.waitFor(t, writers*each)
		// Each writer's messages arrive in its order (concurrency 1).
		next := make(map[string]int)
		for _, pl := range got.payloads() {
			w, i, _ := strings.Cut(pl, "-")
			assert.Equal(t, fmt.Sprint(next[w]), i, "writer %s", w)
			next[w]++
		}
		st := sub.Stats()
		assert.Zero(t, st.Gaps, "coalesced pipelines keep sequence order on the wire")
		assert.Zero(t, st.Duplicates)
	})
}

func TestPattern(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		base := redistest.Topic(t)
		var got collector
		listen(t, mustSubscriber(t, c, pubsub.WithPattern()), base+".*", &got)
		p := mustPublisher(t, c)
		require.NoError(t, p.Publish(context.Background(), base+".eu", broker.NewMessage([]byte("1"))))
		require.NoError(t, p.Publish(context.Background(), base+".us", broker.NewMessage([]byte("2"))))
		require.NoError(t, p.Publish(context.Background(), base+"-other", broker.NewMessage([]byte("3"))))
		got.waitFor(t, 2)
		msgs := got.all()
		assert.Equal(t, base+".eu", msgs[0].Topic)
		assert.Equal(t, base+".us", msgs[1].Topic)
	})
}

func TestRaw(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var ours, raw collector
		listen(t, mustSubscriber(t, c), topic, &ours)
		listen(t, mustSubscriber(t, c, pubsub.WithRaw()), topic, &raw)

		// A raw publisher's payload arrives as is, on both kinds of subscriber.
		p := mustPublisher(t, c, pubsub.WithRaw())
		require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("plain"))))
		// So does a foreign client's.
		require.NoError(t, c.Publish(context.Background(), topic, `{"json":true}`).Err())
		ours.waitFor(t, 2)
		raw.waitFor(t, 2)
		assert.Equal(t, []string{"plain", `{"json":true}`}, ours.payloads())
		assert.Equal(t, []string{"plain", `{"json":true}`}, raw.payloads())
		assert.Empty(t, ours.all()[0].ID)
	})
}

func TestMalformedIsCountedNotFatal(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var got collector
		sub := listen(t, mustSubscriber(t, c), topic, &got)
		require.NoError(t, c.Publish(context.Background(), topic, "\xffBK\x01\x00").Err()) // truncated header
		require.NoError(t, c.Publish(context.Background(), topic, "\xffBK\x09rest").Err()) // unknown version
		p := mustPublisher(t, c)
		require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("ok"))))
		got.waitFor(t, 1)
		assert.Equal(t, []string{"ok"}, got.payloads())
		st := sub.Stats()
		assert.Equal(t, uint64(2), st.DroppedMalformed)
		assert.Equal(t, uint64(3), st.Received)
	})
}

func TestHandlerErrorsAndPanicsAreCounted(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var calls atomic.Int64
		h := broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			calls.Add(1)
			switch string(m.Payload) {
			case "err":
				return errors.New("boom")
			case "discard":
				return broker.ErrDiscard
			case "panic":
				panic("oops")
			}
			return nil
		})
		sub := listen(t, mustSubscriber(t, c), topic, h)
		p := mustPublisher(t, c)
		for _, pl := range []string{"err", "discard", "panic", "ok"} {
			require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte(pl))))
		}
		require.Eventually(t, func() bool { return sub.Stats().Delivered == 1 }, 5*time.Second, time.Millisecond)
		st := sub.Stats()
		assert.Equal(t, uint64(3), st.HandlerErrors)
		assert.Equal(t, int64(4), calls.Load(), "no retry")
	})
}

// TestOverflowPolicies blocks the handler, fills the buffer, and checks which
// messages survive and that every drop is counted.
func TestOverflowPolicies(t *testing.T) {
	tests := []struct {
		policy  pubsub.Overflow
		want    []string // payloads handled, in order
		dropped uint64
	}{
		// Message 0 is in the handler; the buffer (3) holds the rest.
		{pubsub.DropNewest, []string{"0", "1", "2", "3"}, 6},
		{pubsub.DropOldest, []string{"0", "7", "8", "9"}, 6},
		{pubsub.Block, []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}, 0},
	}
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		for _, tt := range tests {
			t.Run(tt.policy.String(), func(t *testing.T) {
				c := s.Client(t)
				topic := redistest.Topic(t)
				release := make(chan struct{})
				started := make(chan struct{}, 1)
				var got collector
				h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					select {
					case started <- struct{}{}:
					default:
					}
					<-release
					return got.Handle(ctx, m)
				})
				sub := listen(t, mustSubscriber(t, c, pubsub.WithBuffer(3), pubsub.WithOverflow(tt.policy)), topic, h)
				p := mustPublisher(t, c)
				require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("0"))))
				<-started
				for i := 1; i < 10; i++ {
					require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage(fmt.Appendf(nil, "%d", i))))
				}
				if tt.policy == pubsub.Block {
					require.Eventually(t, func() bool { return sub.Stats().Buffered == 3 }, 5*time.Second, time.Millisecond)
				} else {
					// Received is counted before the message is buffered or
					// dropped: wait until each of the 10 is accounted for (one
					// in the handler, the rest buffered or dropped).
					require.Eventually(t, func() bool {
						st := sub.Stats()
						return st.Received == 10 && 1+uint64(st.Buffered)+st.DroppedOverflow == 10
					}, 5*time.Second, time.Millisecond)
				}
				st := sub.Stats()
				assert.Equal(t, tt.dropped, st.DroppedOverflow)
				assert.Equal(t, 3, st.BufferHighWater)
				assert.Equal(t, 3, st.BufferCapacity)
				close(release)
				got.waitFor(t, len(tt.want))
				require.Eventually(t, func() bool { return sub.Stats().Delivered == uint64(len(tt.want)) }, 5*time.Second, time.Millisecond)
				assert.Equal(t, tt.want, got.payloads())
			})
		}
	})
}

func TestConcurrency(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var running, peak atomic.Int64
		release := make(chan struct{})
		h := broker.HandlerFunc(func(context.Context, *broker.Message) error {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			running.Add(-1)
			return nil
		})
		sub := listen(t, mustSubscriber(t, c, pubsub.WithConcurrency(4)), topic, h)
		p := mustPublisher(t, c)
		for range 10 {
			require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage(nil)))
		}
		require.Eventually(t, func() bool { return running.Load() == 4 }, 5*time.Second, time.Millisecond)
		close(release)
		require.Eventually(t, func() bool { return sub.Stats().Delivered == 10 }, 5*time.Second, time.Millisecond)
		assert.Equal(t, int64(4), peak.Load())
	})
}

func TestShutdownCountsBuffered(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	topic := redistest.Topic(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	sb := mustSubscriber(t, c, pubsub.WithOverflow(pubsub.Block))
	sub, err := sb.Listen(context.Background(), topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	}))
	require.NoError(t, err)
	p := mustPublisher(t, c)
	for range 5 {
		require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage(nil)))
	}
	<-started
	require.Eventually(t, func() bool { return sub.Stats().Received == 5 }, 5*time.Second, time.Millisecond)
	errc := make(chan error)
	go func() { errc <- sub.Shutdown(context.Background()) }()
	select {
	case <-errc:
		t.Fatal("Shutdown returned while a handler was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-errc)
	<-sub.Done()
	st := sub.Stats()
	assert.Equal(t, uint64(1), st.Delivered)
	assert.Equal(t, uint64(4), st.DroppedShutdown)
	assert.Zero(t, st.Buffered)
}

func TestCancelIsHardStop(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := mustSubscriber(t, c).Listen(ctx, redistest.Topic(t), broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	require.NoError(t, err)
	cancel()
	select {
	case <-sub.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not stopped after cancel")
	}
}

// TestReconnectAfterRestart restarts miniredis: the subscription comes back
// by itself and says so.
func TestReconnectAfterRestart(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	topic := redistest.Topic(t)
	var got collector
	sub := listen(t, mustSubscriber(t, c), topic, &got)
	p := mustPublisher(t, c)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("before"))))
	got.waitFor(t, 1)
	s.Restart(t)
	require.Eventually(t, func() bool { return sub.Stats().Reconnects == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("after"))))
	got.waitFor(t, 2)
	st := sub.Stats()
	assert.Equal(t, uint64(1), st.Disconnects)
	assert.Zero(t, st.Gaps, "nothing was published in between")
}

// TestFailedPublishIsNoGap: messages whose publish failed are the
// publisher's caller's loss, not counted as gaps by subscribers.
func TestFailedPublishIsNoGap(t *testing.T) {
	s := redistest.NewMiniredis(t)
	subClient := s.Client(t)
	pubClient := s.Client(t)
	topic := redistest.Topic(t)
	var got collector
	sub := listen(t, mustSubscriber(t, subClient), topic, &got)
	p := mustPublisher(t, pubClient)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("1"))))
	got.waitFor(t, 1)

	s.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := p.Publish(ctx, topic, broker.NewMessage([]byte("lost-a")), broker.NewMessage([]byte("lost-b")))
	cancel()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "pubsub "+topic+": publish: ")
	s.Start(t)
	require.Eventually(t, func() bool { return sub.Stats().Reconnects == 1 }, 10*time.Second, 5*time.Millisecond)

	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("2"))))
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("3"))))
	got.waitFor(t, 3)
	assert.Equal(t, []string{"1", "2", "3"}, got.payloads())
	assert.Zero(t, sub.Stats().Gaps)
}

func TestOptionsValidated(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	for _, tt := range []struct {
		name string
		pub  bool
		opt  pubsub.Option
	}{
		{"buffer on publisher", true, pubsub.WithBuffer(10)},
		{"max payload on subscriber", false, pubsub.WithMaxPayload(10)},
		{"zero buffer", false, pubsub.WithBuffer(0)},
		{"zero concurrency", false, pubsub.WithConcurrency(0)},
		{"bad overflow", false, pubsub.WithOverflow(pubsub.Overflow(42))},
		{"negative health", false, pubsub.WithHealthCheck(-1)},
		{"nil logger", true, pubsub.WithLogger(nil)},
		{"zero option", true, pubsub.Option{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.pub {
				_, err = pubsub.NewPublisher(c, tt.opt)
			} else {
				_, err = pubsub.NewSubscriber(c, tt.opt)
			}
			assert.ErrorIs(t, err, broker.ErrInvalidOption)
		})
	}
	_, err := pubsub.NewSubscriber(c, pubsub.WithPattern(), pubsub.WithSharded())
	assert.ErrorIs(t, err, broker.ErrInvalidOption)
}

func TestPublishRejects(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	p := mustPublisher(t, c, pubsub.WithMaxPayload(4))
	ctx := context.Background()
	assert.ErrorIs(t, p.Publish(ctx, "t", broker.NewMessage([]byte("12345"))), broker.ErrTooLarge)
	assert.ErrorIs(t, p.Publish(ctx, "", broker.NewMessage(nil)), broker.ErrInvalidOption)
	assert.ErrorIs(t, p.Publish(ctx, "t", nil), broker.ErrInvalidOption)
	assert.ErrorIs(t, p.Publish(ctx, "t", &broker.Message{Metadata: map[string]string{pubsub.MetaSeq: "1"}}), broker.ErrInvalidOption)
	assert.NoError(t, p.Publish(ctx, "t"))

	require.NoError(t, c.Close())
	err := p.Publish(ctx, "t", broker.NewMessage(nil))
	assert.ErrorIs(t, err, broker.ErrClosed)
	_, err = mustSubscriber(t, c).Subscribe(ctx, "t", broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
	assert.ErrorIs(t, err, broker.ErrClosed)
}

func TestSharded(t *testing.T) {
	s := redistest.NewReal(t)
	c := s.Client(t)
	topic := redistest.Topic(t)
	var got collector
	listen(t, mustSubscriber(t, c, pubsub.WithSharded()), topic, &got)
	p := mustPublisher(t, c, pubsub.WithSharded())
	counts, err := p.PublishCount(context.Background(), topic, broker.NewMessage([]byte("s")))
	require.NoError(t, err)
	assert.Equal(t, []int64{1}, counts)
	got.waitFor(t, 1)
	assert.Equal(t, topic, got.all()[0].Topic)
}
