package stream_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/stream"
)

// TestPublishManyOneRoundTrip: Publish with many messages is one pipeline,
// the lag check of a trimming Publisher included, and nothing else.
func TestPublishManyOneRoundTrip(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		for _, tc := range []struct {
			name string
			opts []stream.Option
			cmds int // in the pipeline
		}{
			{"plain", nil, 100},
			{"maxlen", []stream.Option{stream.WithMaxLen(1000)}, 101}, // + XINFO GROUPS
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := srv.Client(t)
				pub := newPub(t, c, tc.opts...)
				h := newHook(c)
				topic := redistest.Topic(t)
				msgs := make([]*broker.Message, 100)
				for i := range msgs {
					msgs[i] = broker.NewMessage([]byte(strconv.Itoa(i)))
				}
				require.NoError(t, pub.Publish(context.Background(), topic, msgs...))
				pipelines, single := h.roundTrips()
				assert.Equal(t, 1, pipelines, "pipelines")
				assert.Zero(t, single, "commands outside the pipeline")
				assert.Equal(t, []int{tc.cmds}, h.pipelineSizes())
				assert.Equal(t, 100, h.count("xadd"))
			})
		}
	})
}

// TestConcurrentPublishCoalesced: single-message Publish calls made while a
// pipeline is in flight go out together in the next one.
func TestConcurrentPublishCoalesced(t *testing.T) {
	c := redistest.NewMiniredis(t).Client(t)
	pub := newPub(t, c)
	topic := redistest.Topic(t)
	h := newHook(c)
	first := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	h.set(func(h *cmdHook) {
		h.hold = func(cmd redis.Cmder) <-chan struct{} {
			var held <-chan struct{}
			once.Do(func() { close(first); held = release })
			return held
		}
	})
	const n = 64
	var wg sync.WaitGroup
	wg.Go(func() {
		assert.NoError(t, pub.Publish(context.Background(), topic, broker.NewMessage([]byte("first"))))
	})
	<-first // the first pipeline is in flight, held
	var started sync.WaitGroup
	started.Add(n)
	for i := range n {
		wg.Go(func() {
			started.Done()
			assert.NoError(t, pub.Publish(context.Background(), topic, broker.NewMessage([]byte(strconv.Itoa(i)))))
		})
	}
	started.Wait()
	close(release)
	wg.Wait()
	sizes := h.pipelineSizes()
	t.Logf("pipeline sizes: %v", sizes)
	total := 0
	for _, s := range sizes {
		total += s
	}
	assert.Equal(t, n+1, total)
	assert.LessOrEqual(t, len(sizes), n/8, "single publishes were not coalesced")
	assert.EqualValues(t, n+1, c.XLen(context.Background(), topic).Val())
}

// TestPublishFillsIDBeforeSending: Publish fills Message.ID and Time in the
// caller's goroutine before the message is queued, so a caller whose ctx
// ends while its message waits behind another caller's flush still has the
// ID (to retry with), and no other goroutine writes the message.
func TestPublishFillsIDBeforeSending(t *testing.T) {
	c := redistest.NewMiniredis(t).Client(t)
	pub := newPub(t, c)
	topic := redistest.Topic(t)
	h := newHook(c)
	first := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	h.set(func(h *cmdHook) {
		h.hold = func(cmd redis.Cmder) <-chan struct{} {
			var held <-chan struct{}
			once.Do(func() { close(first); held = release })
			return held
		}
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		assert.NoError(t, pub.Publish(context.Background(), topic, broker.NewMessage([]byte("first"))))
	})
	<-first
	ctx, cancel := context.WithCancel(context.Background())
	m := &broker.Message{Payload: []byte("queued")}
	res := make(chan error, 1)
	go func() { res <- pub.Publish(ctx, topic, m) }()
	cancel()
	require.ErrorIs(t, <-res, context.Canceled)
	assert.NotEmpty(t, m.ID, "the ID is filled before the message waits")
	assert.False(t, m.Time.IsZero(), "the time is filled before the message waits")
	id := m.ID
	close(release)
	wg.Wait()
	// A retry keeps the ID.
	require.NoError(t, pub.Publish(context.Background(), topic, m))
	assert.Equal(t, id, m.ID)
	got, err := stream.Replay(context.Background(), c, topic, "", "", 0)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, id, got[1].Message.ID)
}

// TestMaxAgeUsesServerClock: WithMaxAge cuts by the Redis server's clock,
// which stamps the entry IDs, not by the publisher's: here the server runs
// ten days behind.
func TestMaxAgeUsesServerClock(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	server := time.Now().Add(-240 * time.Hour).Truncate(time.Millisecond)
	srv.Mini.SetTime(server)
	old := strconv.FormatInt(server.Add(-2*time.Hour).UnixMilli(), 10) + "-1"
	young := strconv.FormatInt(server.Add(-10*time.Minute).UnixMilli(), 10) + "-1"
	for _, id := range []string{old, young} {
		require.NoError(t, c.XAdd(ctx, &redis.XAddArgs{Stream: topic, ID: id, Values: []any{"payload", id}}).Err())
	}
	pub := newPub(t, c, stream.WithMaxAge(time.Hour))
	for range 2 { // the first samples the clock, the second uses the sample
		require.NoError(t, pub.Publish(ctx, topic, broker.NewMessage([]byte("new"))))
	}
	got, err := c.XRange(ctx, topic, "-", "+").Result()
	require.NoError(t, err)
	var ids []string
	for _, e := range got {
		ids = append(ids, e.ID)
	}
	require.Len(t, ids, 3, "entries left: %v", ids)
	assert.Equal(t, young, ids[0], "the entry 10 minutes old by the server's clock is kept, the 2 hours old one trimmed")
}

// TestMinIDTrimWarning: a Publisher trimming by MINID warns about a group
// whose last delivered ID is below the MINID (it has unread entries that
// trimming drops), and not about a group that has read past it.
func TestMinIDTrimWarning(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		for _, id := range []string{"1-1", "2-1", "3-1"} {
			require.NoError(t, c.XAdd(ctx, &redis.XAddArgs{Stream: topic, ID: id, Values: []any{"payload", id}}).Err())
		}
		require.NoError(t, c.XGroupCreate(ctx, topic, "slow", "0").Err())
		require.NoError(t, c.XGroupCreate(ctx, topic, "fast", "$").Err())
		logs := newLogRecorder()
		pub := newPub(t, c, stream.WithMinID("2-0"), stream.WithLagCheckInterval(time.Nanosecond), stream.WithLogger(logs.logger()))
		require.NoError(t, pub.Publish(ctx, topic, broker.NewMessage([]byte("new"))))
		assert.EqualValues(t, 1, pub.Stats().LagWarnings)
		warned := logs.matching("trimming is about to drop")
		require.Len(t, warned, 1)
		assert.Equal(t, "slow", warned[0].attrs["group"])
		assert.Equal(t, "2-0", warned[0].attrs["minid"])
	})
}

// TestLagUnknownWarns: with MAXLEN trimming, a group whose lag Redis cannot
// tell (-1 after an XDEL of an entry it had not read) is counted at every
// check and warned about once (rate-limited), since trimming could drop its
// unread entries unnoticed.
func TestLagUnknownWarns(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
	publishN(t, newPub(t, c), topic, 3)
	ids, err := c.XRange(ctx, topic, "-", "+").Result()
	require.NoError(t, err)
	require.NoError(t, c.XDel(ctx, topic, ids[1].ID).Err())
	logs := newLogRecorder()
	pub := newPub(t, c, stream.WithMaxLen(1000), stream.WithLagCheckInterval(time.Nanosecond), stream.WithLogger(logs.logger()))
	for range 3 {
		require.NoError(t, pub.Publish(ctx, topic, broker.NewMessage([]byte("x"))))
	}
	assert.EqualValues(t, 3, pub.Stats().LagUnknown)
	assert.Zero(t, pub.Stats().LagWarnings)
	warned := logs.matching("lag is unknown")
	require.Len(t, warned, 1, "one warning, rate-limited")
	assert.Equal(t, "g", warned[0].attrs["group"])
}
