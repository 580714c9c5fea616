package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

func TestPublishConsume(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"reliable", "simple"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
				t.Parallel()
				c := s.Client(t)
				topic := redistest.Topic(t)
				opts := modeOpts(mode, queue.WithConcurrency(1), queue.WithPrefetch(7))
				rec := subscribeRecorder(t, c, topic, opts...)
				p := publisher(t, c)
				batch := msgs("m", 300)
				require.NoError(t, p.Publish(context.Background(), topic, batch...))
				require.Eventually(t, func() bool { return rec.len() == 300 }, waitFor, tick)
				var want []string
				for _, m := range batch {
					want = append(want, string(m.Payload))
					assert.Len(t, m.ID, 26)
					assert.False(t, m.Time.IsZero())
				}
				assert.Equal(t, want, rec.payloads(), "FIFO with one worker")
				for _, m := range rec.all() {
					assert.Equal(t, 1, m.Attempt)
					assert.Equal(t, topic, m.Topic)
				}
				require.Eventually(t, func() bool {
					st := stats(t, c, topic)
					return st.Ready == 0 && st.Processing == 0 && st.Delayed == 0
				}, waitFor, tick)
			})
		})
	}
}

func TestRetryThenAck(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		var calls atomic.Int64
		attempts := make(chan int, 10)
		subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
			attempts <- m.Attempt
			if calls.Add(1) == 1 {
				return errors.New("transient")
			}
			return nil
		}, fast()...)
		require.NoError(t, publisher(t, c).Publish(context.Background(), topic, broker.NewMessage([]byte("x"))))
		assert.Equal(t, 1, <-attempts)
		select {
		case a := <-attempts:
			assert.Equal(t, 2, a)
		case <-time.After(waitFor):
			t.Fatal("no retry")
		}
		require.Eventually(t, func() bool {
			st := stats(t, c, topic)
			return st == queue.Stats{Consumers: 1}
		}, waitFor, tick)
	})
}

func TestDeadLettersAndRequeue(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		var fail atomic.Bool
		fail.Store(true)
		rec := newRecorder()
		subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
			rec.add(m)
			if !fail.Load() {
				return nil
			}
			if string(m.Payload) == "discard" {
				return fmt.Errorf("nope: %w", broker.ErrDiscard)
			}
			return errors.New("always fails")
		}, fast(queue.WithMaxAttempts(3))...)
		p := publisher(t, c)
		m1 := &broker.Message{Payload: []byte("retry"), Metadata: map[string]string{"k": "v"}}
		require.NoError(t, p.Publish(context.Background(), topic, m1, broker.NewMessage([]byte("discard"))))
		in := queue.NewInspector(c)
		require.Eventually(t, func() bool { return stats(t, c, topic).Dead == 2 }, waitFor, tick)
		assert.Equal(t, 4, rec.len(), "3 deliveries of retry, 1 of discard")
		dls, err := in.DeadLetters(context.Background(), topic, 0, 10)
		require.NoError(t, err)
		require.Len(t, dls, 2)
		byPayload := map[string]queue.DeadLetter{}
		for _, d := range dls {
			byPayload[string(d.Message.Payload)] = d
			assert.WithinDuration(t, time.Now(), d.Time, 5*time.Second)
		}
		assert.Equal(t, 3, byPayload["retry"].Attempts)
		assert.Equal(t, "always fails", byPayload["retry"].Reason)
		assert.Equal(t, m1.ID, byPayload["retry"].Message.ID)
		assert.Equal(t, map[string]string{"k": "v"}, byPayload["retry"].Message.Metadata)
		assert.Equal(t, 1, byPayload["discard"].Attempts)
		assert.Contains(t, byPayload["discard"].Reason, "discard")

		fail.Store(false)
		n, err := in.Requeue(context.Background(), topic, 1)
		require.NoError(t, err)
		assert.Equal(t, 1, n)
		require.Eventually(t, func() bool { return rec.len() == 5 }, waitFor, tick)
		last := rec.all()[4]
		assert.Equal(t, 1, last.Attempt, "requeue resets attempts")
		purged, err := in.Purge(context.Background(), topic)
		require.NoError(t, err)
		assert.Equal(t, int64(1), purged)
		assert.Equal(t, int64(0), stats(t, c, topic).Dead)
	})
}

func TestDelayed(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		for _, mode := range []string{"reliable", "simple"} {
			t.Run(mode, func(t *testing.T) {
				c := s.Client(t)
				topic := redistest.Topic(t)
				opts := modeOpts(mode)
				got := make(chan time.Time, 10)
				subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
					got <- time.Now()
					return nil
				}, opts...)
				p := publisher(t, c)
				at := time.Now().Add(300 * time.Millisecond)
				require.NoError(t, p.PublishAt(context.Background(), topic, at, broker.NewMessage([]byte("later"))))
				require.NoError(t, p.PublishAt(context.Background(), topic, time.Now().Add(-time.Hour), broker.NewMessage([]byte("past"))))
				first := <-got
				assert.True(t, first.Before(at), "past due time delivered at once")
				second := <-got
				assert.False(t, second.Before(at.Add(-5*time.Millisecond)), "never early")
			})
		}
	})
}

func TestShutdownHandsBackUnstarted(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		for _, mode := range []string{"reliable", "simple"} {
			t.Run(mode, func(t *testing.T) {
				c := s.Client(t)
				topic := redistest.Topic(t)
				p := publisher(t, c)
				batch := msgs("m", 50)
				require.NoError(t, p.Publish(context.Background(), topic, batch...))
				started := make(chan struct{}, 1)
				release := make(chan struct{})
				opts := modeOpts(mode, queue.WithConcurrency(1), queue.WithPrefetch(20))
				sb, err := queue.NewSubscriber(c, opts...)
				require.NoError(t, err)
				sub, err := sb.Subscribe(context.Background(), topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
					select {
					case started <- struct{}{}:
					default:
					}
					<-release
					return nil
				}))
				require.NoError(t, err)
				<-started
				errc := make(chan error)
				go func() { errc <- sub.Shutdown(context.Background()) }()
				<-queue.Stopping(sub) // Shutdown began while the handler runs
				select {
				case err := <-errc:
					t.Fatalf("Shutdown returned (%v) while a handler runs", err)
				default:
				}
				close(release)
				require.NoError(t, <-errc)
				// The first message was handled; the other 49 are back in order.
				vals, err := c.LRange(context.Background(), topic, 0, -1).Result()
				require.NoError(t, err)
				require.Len(t, vals, 49)
				for i, v := range vals {
					m := decode(t, v)
					assert.Equal(t, batch[i+1].ID, m.ID)
				}
				assert.Equal(t, queue.Stats{Ready: 49}, stats(t, c, topic))
			})
		}
	})
}

func TestPublishErrors(t *testing.T) {
	t.Parallel()
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	p := publisher(t, c, queue.WithMaxPayload(10))
	ctx := context.Background()
	err := p.Publish(ctx, "t", broker.NewMessage(make([]byte, 11)))
	require.ErrorIs(t, err, broker.ErrTooLarge)
	assert.Contains(t, err.Error(), "11 bytes, limit 10")
	require.ErrorIs(t, p.Publish(ctx, "", broker.NewMessage(nil)), broker.ErrInvalidOption)
	require.ErrorIs(t, p.PublishAt(ctx, "", time.Now(), broker.NewMessage(nil)), broker.ErrInvalidOption)
	require.NoError(t, p.Publish(ctx, "t"))
	require.ErrorIs(t, p.Publish(ctx, "t", nil), broker.ErrInvalidOption)

	// Context errors keep the topic and operation, and still match.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for _, err := range []error{
		p.Publish(cctx, "t", broker.NewMessage(nil)),
		p.Publish(cctx, "t", broker.NewMessage(nil), broker.NewMessage(nil)),
	} {
		require.ErrorIs(t, err, context.Canceled)
		assert.Contains(t, err.Error(), "queue t: publish: ")
	}
	err = p.PublishAt(cctx, "t", time.Now(), broker.NewMessage(nil))
	require.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "queue t: publish delayed: ")

	_, err = queue.NewPublisher(nil)
	require.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = queue.NewSubscriber(nil)
	require.ErrorIs(t, err, broker.ErrInvalidOption)

	require.NoError(t, c.Close())
	err = p.Publish(ctx, "t", broker.NewMessage(nil))
	require.ErrorIs(t, err, broker.ErrClosed)
	err = p.Publish(ctx, "t", broker.NewMessage(nil), broker.NewMessage(nil))
	require.ErrorIs(t, err, broker.ErrClosed)
}

func TestRawPublish(t *testing.T) {
	t.Parallel()
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	p := publisher(t, c, queue.WithRaw())
	require.NoError(t, p.Publish(context.Background(), "t", broker.NewMessage([]byte("a")), broker.NewMessage([]byte("b"))))
	vals, err := c.LRange(context.Background(), "t", 0, -1).Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, vals)
}

func TestConcurrentSinglePublish(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		other := topic + "-other"
		p := publisher(t, c)
		var wg sync.WaitGroup
		for g := range 32 {
			wg.Go(func() {
				for i := range 50 {
					tp := topic
					if (g+i)%3 == 0 {
						tp = other
					}
					assert.NoError(t, p.Publish(context.Background(), tp, broker.NewMessage([]byte("x"))))
				}
			})
		}
		wg.Wait()
		n1, _ := c.LLen(context.Background(), topic).Result()
		n2, _ := c.LLen(context.Background(), other).Result()
		assert.Equal(t, int64(32*50), n1+n2)
		c.Del(context.Background(), topic, other)
	})
}

func TestDuplicateConsumerName(t *testing.T) {
	t.Parallel()
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	sb, err := queue.NewSubscriber(c, fast(queue.WithConsumerName("w"))...)
	require.NoError(t, err)
	h := broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil })
	sub, err := sb.Subscribe(context.Background(), "t", h)
	require.NoError(t, err)
	_, err = sb.Subscribe(context.Background(), "t", h)
	require.ErrorIs(t, err, broker.ErrInvalidOption)
	shutdown(t, sub)
	<-sub.Done()
	require.Eventually(t, func() bool {
		sub2, err := sb.Subscribe(context.Background(), "t", h)
		if err != nil {
			return false
		}
		shutdown(t, sub2)
		return true
	}, waitFor, tick)
}

func TestSubscribeRedisDown(t *testing.T) {
	t.Parallel()
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	s.Stop(t)
	for _, simple := range []bool{false, true} {
		opts := fast()
		if simple {
			opts = append(opts, queue.WithSimple())
		}
		sb, err := queue.NewSubscriber(c, opts...)
		require.NoError(t, err)
		sub, err := sb.Subscribe(context.Background(), "t", broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
		require.Error(t, err)
		assert.Nil(t, sub, "no typed nil")
		assert.Contains(t, err.Error(), "queue t: subscribe")
	}
}

// Cancelling the Subscribe context is the hard stop: the running handler
// sees its context cancelled, and the consumer still cleans up: nothing is
// left in its processing list, it is deregistered, and every message is
// either handled, waiting for a retry, or back in ready.
func TestHardStopCleansUp(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		require.NoError(t, publisher(t, c).Publish(context.Background(), topic, msgs("h", 20)...))
		sb, err := queue.NewSubscriber(c, fast(queue.WithConcurrency(2), queue.WithPrefetch(10))...)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		inHandler := make(chan struct{}, 20)
		sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			inHandler <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}))
		require.NoError(t, err)
		<-inHandler
		<-inHandler
		st := stats(t, c, topic)
		assert.Equal(t, int64(1), st.Consumers)
		assert.Equal(t, int64(10), st.Processing, "prefetch bounds the processing list")
		assert.Equal(t, int64(10), st.Ready)
		cancel()
		select {
		case <-sub.Done():
		case <-time.After(waitFor):
			t.Fatal("no stop after cancel")
		}
		// The interrupted deliveries are due again at once (in delayed
		// until a tick promotes them, which may already have happened);
		// the rest is back in ready. Nothing is held, dead or registered.
		st = stats(t, c, topic)
		assert.Equal(t, queue.Stats{Ready: 20 - st.Delayed, Delayed: st.Delayed}, st)
	})
}

// A handler cut short by the hard stop is not a failure: with MaxAttempts 1
// the message is not dead-lettered but delivered again, as attempt 1, to the
// next consumer.
func TestHardStopNeverDeadLetters(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		m := broker.NewMessage([]byte("cut"))
		require.NoError(t, publisher(t, c).Publish(context.Background(), topic, m))
		sb, err := queue.NewSubscriber(c, fast(queue.WithMaxAttempts(1))...)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		inHandler := make(chan struct{}, 1)
		sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
			inHandler <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}))
		require.NoError(t, err)
		<-inHandler
		cancel()
		select {
		case <-sub.Done():
		case <-time.After(waitFor):
			t.Fatal("no stop after cancel")
		}
		assert.Zero(t, stats(t, c, topic).Dead, "an interrupted delivery is not dead-lettered")

		got := make(chan *broker.Message, 1)
		sub2, err := sb.Subscribe(context.Background(), topic, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			got <- m
			return nil
		}))
		require.NoError(t, err)
		defer func() { require.NoError(t, sub2.Shutdown(context.Background())) }()
		select {
		case d := <-got:
			assert.Equal(t, m.ID, d.ID)
			assert.Equal(t, 1, d.Attempt, "the cut delivery never exhausts MaxAttempts")
		case <-time.After(waitFor):
			t.Fatal("the interrupted message was not delivered again")
		}
	})
}

// The handler owns the message, but changing its Attempt does not change
// the delivery count: a message that always fails is still dead-lettered
// after MaxAttempts.
func TestHandlerCannotResetAttempt(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		var calls atomic.Int64
		subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
			calls.Add(1)
			m.Attempt = 0
			return errors.New("fails")
		}, fast(queue.WithMaxAttempts(3))...)
		require.NoError(t, publisher(t, c).Publish(context.Background(), topic, broker.NewMessage([]byte("x"))))
		require.Eventually(t, func() bool { return stats(t, c, topic).Dead == 1 }, waitFor, tick)
		assert.Equal(t, int64(3), calls.Load())
		dls, err := queue.NewInspector(c).DeadLetters(context.Background(), topic, 0, 1)
		require.NoError(t, err)
		require.Len(t, dls, 1)
		assert.Equal(t, 3, dls[0].Attempts)
	})
}
