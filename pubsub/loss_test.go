package pubsub_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/internal/wire"
	"github.com/redisbroker/broker/pubsub"
)

// TestShardedSlotRemoved runs a one-node Redis Cluster and removes the slot
// of a sharded channel: Redis then sends SUNSUBSCRIBE on its own, and
// resubscribing is refused (CLUSTERDOWN) until the slot is served again.
// The subscription counts the outage and comes back by itself.
func TestShardedSlotRemoved(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	srv := redistest.NewReal(t, redistest.WithArgs("--cluster-enabled", "yes"))
	srv.Do(t, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
	waitClusterOK(t, srv)
	c := srv.Client(t)
	topic := redistest.Topic(t)
	slot := srv.Do(t, "CLUSTER", "KEYSLOT", topic)

	logs := &logRecorder{}
	rec := &seqRecorder{}
	sub := listen(t, mustSubscriber(t, c, pubsub.WithSharded(), pubsub.WithLogger(slog.New(logs))), topic, rec)
	p := mustPublisher(t, c, pubsub.WithSharded())
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("0"))))
	require.Eventually(t, func() bool { return rec.has(0) }, 5*time.Second, time.Millisecond)

	srv.Do(t, "CLUSTER", "DELSLOTS", slot)
	require.Eventually(t, func() bool { return sub.Stats().Disconnects == 1 }, 5*time.Second, time.Millisecond,
		"the SUNSUBSCRIBE sent by Redis is an outage")
	require.Eventually(t, func() bool { return logs.count("refused the subscription") >= 1 }, 5*time.Second, time.Millisecond,
		"resubscribing while the slot has no owner is refused")
	assert.Zero(t, sub.Stats().Reconnects)

	srv.Do(t, "CLUSTER", "ADDSLOTS", slot)
	waitClusterOK(t, srv)
	require.Eventually(t, func() bool { return sub.Stats().Reconnects == 1 }, 10*time.Second, time.Millisecond)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("1"))))
	require.Eventually(t, func() bool { return rec.has(1) }, 5*time.Second, time.Millisecond)
	st := sub.Stats()
	assert.Equal(t, uint64(1), st.Disconnects)
	assert.Zero(t, st.Gaps)
}

func waitClusterOK(t *testing.T, srv *redistest.Server) {
	t.Helper()
	require.Eventually(t, func() bool {
		return strings.Contains(fmt.Sprint(srv.Do(t, "CLUSTER", "INFO")), "cluster_state:ok")
	}, 10*time.Second, 10*time.Millisecond)
}

// TestResubscribeRefused takes the subscriber's channel permission away
// (ACL), which makes Redis close its connection and refuse the
// resubscription with NOPERM. The subscription keeps retrying and is back
// once the permission is.
func TestResubscribeRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	srv := redistest.NewReal(t)
	topic := redistest.Topic(t)
	srv.Do(t, "ACL", "SETUSER", "sub", "on", ">pw", "+@all", "~*", "resetchannels", "&"+topic)
	c := redis.NewClient(&redis.Options{
		Addr: srv.Addr, Username: "sub", Password: "pw", Protocol: 3, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	t.Cleanup(func() { _ = c.Close() })

	logs := &logRecorder{}
	rec := &seqRecorder{}
	sub := listen(t, mustSubscriber(t, c, pubsub.WithLogger(slog.New(logs))), topic, rec)
	p := mustPublisher(t, srv.Client(t))
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("0"))))
	require.Eventually(t, func() bool { return rec.has(0) }, 5*time.Second, time.Millisecond)

	srv.Do(t, "ACL", "SETUSER", "sub", "resetchannels")
	srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub") // in case the ACL change did not
	require.Eventually(t, func() bool { return sub.Stats().Disconnects == 1 }, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return logs.count("refused the subscription") >= 2 }, 10*time.Second, time.Millisecond,
		"NOPERM replies are retried")
	assert.Zero(t, sub.Stats().Reconnects)

	srv.Do(t, "ACL", "SETUSER", "sub", "&"+topic)
	require.Eventually(t, func() bool { return sub.Stats().Reconnects == 1 }, 10*time.Second, time.Millisecond)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("1"))))
	require.Eventually(t, func() bool { return rec.has(1) }, 5*time.Second, time.Millisecond)
	assert.Equal(t, uint64(1), sub.Stats().Disconnects)
}

// TestGapsExactAcrossRestart publishes while Redis is stopped and started and keeps the
// subscriber away a while longer (its new connections are refused), so
// that the publisher's first successful batches after the restart, which
// carry the range of failed numbers, never reach it. The gap counter must
// still equal exactly the messages Redis accepted that the subscriber did
// not get: none of the failed ones.
func TestGapsExactAcrossRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	srv := redistest.NewReal(t)
	faults := &dialFaults{}
	subC := srv.Client(t)
	subC.AddHook(faults)
	topic := redistest.Topic(t)
	rec := &seqRecorder{}
	sub := listen(t, mustSubscriber(t, subC, pubsub.WithBuffer(1<<16)), topic, rec)
	p := mustPublisher(t, srv.Client(t))

	var mu sync.Mutex
	var accepted []int
	var failed int
	nAccepted := func() int { mu.Lock(); defer mu.Unlock(); return len(accepted) }
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := p.Publish(ctx, topic, broker.NewMessage([]byte(strconv.Itoa(i))))
			cancel()
			mu.Lock()
			if err == nil {
				accepted = append(accepted, i)
			} else {
				failed++
			}
			mu.Unlock()
		}
	}()

	require.Eventually(t, func() bool { return nAccepted() >= 100 }, 10*time.Second, time.Millisecond)
	faults.setRefuse(true)
	srv.Stop(t)
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return failed >= 3 }, 30*time.Second, time.Millisecond)
	srv.Start(t)
	before := nAccepted()
	// The publisher is back; the subscriber is not yet.
	require.Eventually(t, func() bool { return nAccepted() >= before+100 }, 10*time.Second, time.Millisecond)
	faults.setRefuse(false)
	require.Eventually(t, func() bool { return sub.Stats().Reconnects == 1 }, 10*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return nAccepted() >= before+300 }, 10*time.Second, time.Millisecond)
	close(stop)
	<-done

	// A loss at the very end shows only with a later message: a trailer.
	trailer := 1 << 30
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte(strconv.Itoa(trailer)))))
	require.Eventually(t, func() bool { return rec.has(trailer) }, 10*time.Second, time.Millisecond)

	got := make(map[int]bool)
	for _, n := range rec.numbers() {
		got[n] = true
	}
	missed := 0
	for _, n := range accepted {
		if !got[n] {
			missed++
		}
	}
	st := sub.Stats()
	t.Logf("accepted %d, failed %d, accepted but missed %d: %+v", len(accepted), failed, missed, st)
	require.Positive(t, failed, "some publishes failed during the restart")
	require.GreaterOrEqual(t, missed, 100, "the subscriber missed what was published while it was away")
	assert.Equal(t, uint64(missed), st.Gaps, "gaps == accepted messages the subscriber missed")
	assert.Equal(t, uint64(1), st.Disconnects)
	assert.Zero(t, st.Duplicates)
}

// TestLossAtPublisherStart: while the subscriber is disconnected, a
// publisher that did not exist before sends its first messages. They are
// gaps too, although the subscriber never saw that publisher before.
func TestLossAtPublisherStart(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		faults := &dialFaults{}
		subC := s.Client(t)
		subC.AddHook(faults)
		topic := redistest.Topic(t)
		ctx := context.Background()
		// A publisher older than the subscription: what it sent before was
		// not ours, so its first sighting is no gap.
		old := mustPublisher(t, s.Client(t))
		for range 3 {
			require.NoError(t, old.Publish(ctx, topic, broker.NewMessage([]byte("-1"))))
		}
		rec := &seqRecorder{}
		sub := listen(t, mustSubscriber(t, subC), topic, rec)
		require.NoError(t, old.Publish(ctx, topic, broker.NewMessage([]byte("100"))))
		require.Eventually(t, func() bool { return rec.has(100) }, 5*time.Second, time.Millisecond)
		require.Zero(t, sub.Stats().Gaps)

		faults.setRefuse(true)
		faults.breakAll()
		require.Eventually(t, func() bool { return sub.Stats().Disconnects == 1 }, 5*time.Second, time.Millisecond)

		p := mustPublisher(t, s.Client(t))
		const k = 5
		for i := range k {
			counts, err := p.PublishCount(context.Background(), topic, broker.NewMessage([]byte(strconv.Itoa(i))))
			require.NoError(t, err)
			require.Equal(t, []int64{0}, counts, "nobody is listening")
		}
		faults.setRefuse(false)
		require.Eventually(t, func() bool { return sub.Stats().Reconnects == 1 }, 10*time.Second, time.Millisecond)
		require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte(strconv.Itoa(k)))))
		require.Eventually(t, func() bool { return rec.has(k) }, 5*time.Second, time.Millisecond)
		assert.Equal(t, uint64(k), sub.Stats().Gaps)
	})
}

// TestOversizeDropped: a value over WithMaxValueSize is dropped and
// counted, not a gap, and the subscription carries on.
func TestOversizeDropped(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var got collector
		sub := listen(t, mustSubscriber(t, c, pubsub.WithMaxValueSize(200)), topic, &got)
		p := mustPublisher(t, c)
		big := make([]byte, 300)
		require.NoError(t, p.Publish(context.Background(), topic,
			broker.NewMessage([]byte("a")), broker.NewMessage(big), broker.NewMessage([]byte("b"))))
		require.NoError(t, c.Publish(context.Background(), topic, string(big)).Err()) // a foreign one
		require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("c"))))
		got.waitFor(t, 3)
		assert.Equal(t, []string{"a", "b", "c"}, got.payloads())
		st := sub.Stats()
		assert.Equal(t, uint64(2), st.DroppedOversize)
		assert.Zero(t, st.Gaps, "a dropped value's number was seen")
		assert.Equal(t, uint64(5), st.Received)
		assert.Equal(t, uint64(2), st.Lost())
	})
	_, err := pubsub.NewSubscriber(redistest.NewMiniredis(t).Client(t), pubsub.WithMaxValueSize(0))
	assert.ErrorIs(t, err, broker.ErrInvalidOption)
}

// forged returns an envelope with the given MetaSeq value, as another
// client could publish.
func forged(payload, seq string) string {
	return string(wire.Encode(&broker.Message{ID: "x", Payload: []byte(payload), Metadata: map[string]string{pubsub.MetaSeq: seq}}))
}

// TestForgedSequenceIsAnomaly: a foreign client publishing a stamp with an
// absurd number does not inflate the gap counter.
func TestForgedSequenceIsAnomaly(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	topic := redistest.Topic(t)
	var got collector
	sub := listen(t, mustSubscriber(t, c), topic, &got)
	ctx := context.Background()
	for _, seq := range []string{"f00.1.0.1", "f00.1.0.18446744073709551615", "f00.1.0.2", "f00.1.0.4"} {
		require.NoError(t, c.Publish(ctx, topic, forged(seq, seq)).Err())
	}
	got.waitFor(t, 4)
	// Delivered is counted after the handler returns, so it can trail got.
	require.Eventually(t, func() bool { return sub.Stats().Delivered == 4 }, 5*time.Second, time.Millisecond)
	st := sub.Stats()
	assert.Equal(t, uint64(2), st.SeqAnomalies, "the jump up and the jump back")
	assert.Equal(t, uint64(1), st.Gaps, "3 is missing after the restart at 2")
}

// TestTrackerEvictionsCounted: past 4096 publishers on a channel the least
// recently seen is forgotten, and counted.
func TestTrackerEvictionsCounted(t *testing.T) {
	s := redistest.NewMiniredis(t)
	c := s.Client(t)
	topic := redistest.Topic(t)
	var n atomic.Int64
	sub := listen(t, mustSubscriber(t, c, pubsub.WithBuffer(8192), pubsub.WithOverflow(pubsub.Block)), topic,
		broker.HandlerFunc(func(context.Context, *broker.Message) error { n.Add(1); return nil }))
	ctx := context.Background()
	const pubs = 4096 + 3
	pipe := c.Pipeline()
	for i := range pubs {
		pipe.Publish(ctx, topic, forged("", fmt.Sprintf("p%d.1.0.1", i)))
	}
	// Publisher 0 was forgotten first: its next message starts afresh.
	pipe.Publish(ctx, topic, forged("", "p0.1.0.5"))
	_, err := pipe.Exec(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return n.Load() == pubs+1 }, 10*time.Second, time.Millisecond)
	st := sub.Stats()
	assert.Equal(t, uint64(4), st.TrackerEvictions)
	assert.Zero(t, st.Gaps, "a forgotten publisher's jump is not counted")
}

// TestClientClosedEndsSubscription: closing the client under a running
// subscription ends it, and says why.
func TestClientClosedEndsSubscription(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		sub, err := mustSubscriber(t, c).Listen(context.Background(), redistest.Topic(t),
			broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
		require.NoError(t, err)
		require.NoError(t, c.Close())
		select {
		case <-sub.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the subscription did not end after its client was closed")
		}
		assert.ErrorIs(t, sub.Err(), broker.ErrClosed)
		assert.NoError(t, sub.Shutdown(context.Background()))
	})
}

// TestSubscribeConfirms delays the subscriber's SUBSCRIBE on its way to
// Redis: Subscribe must not return before Redis has it, so a message
// published right after reaches it.
func TestSubscribeConfirms(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		faults := &dialFaults{}
		subC := s.Client(t)
		subC.AddHook(faults)
		topic := redistest.Topic(t)
		faults.delaySubscribe(300 * time.Millisecond)
		var got collector
		listen(t, mustSubscriber(t, subC), topic, &got)
		require.Equal(t, int64(1), faults.delayed.Load(), "the subscribe command was held back")
		counts, err := mustPublisher(t, s.Client(t)).PublishCount(context.Background(), topic, broker.NewMessage([]byte("x")))
		require.NoError(t, err)
		assert.Equal(t, []int64{1}, counts, "live when Subscribe returned")
		got.waitFor(t, 1)
	})
}

// TestConcurrentPublishesSharePipeline holds the first pipeline until nine
// more single-message Publish calls are waiting, then checks that those
// nine went out together in one pipeline.
func TestConcurrentPublishesSharePipeline(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		c := s.Client(t)
		topic := redistest.Topic(t)
		var got collector
		sub := listen(t, mustSubscriber(t, s.Client(t)), topic, &got)
		p := mustPublisher(t, c)
		require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("warm-up"))))
		h := &pipelineCounter{hold: make(chan struct{}), entered: make(chan struct{})}
		c.AddHook(h)

		const waiting = 9
		errc := make(chan error, waiting+1)
		go func() { errc <- p.Publish(context.Background(), topic, broker.NewMessage([]byte("first"))) }()
		<-h.entered
		for i := range waiting {
			go func() { errc <- p.Publish(context.Background(), topic, broker.NewMessage([]byte(strconv.Itoa(i)))) }()
		}
		require.Eventually(t, func() bool { return goroutinesWaitingIn("internal/batch.(*Coalescer") == waiting },
			10*time.Second, time.Millisecond)
		close(h.hold)
		for range waiting + 1 {
			require.NoError(t, <-errc)
		}
		assert.Equal(t, []int{1, waiting}, h.pipelines(), "one round trip for the nine waiting calls")
		got.waitFor(t, waiting+2)
		assert.Zero(t, sub.Stats().Gaps)
	})
}
