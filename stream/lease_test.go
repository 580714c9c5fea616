package stream_test

import (
	"context"
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

// Lease tests on a real redis-server: miniredis's XCLAIM ignores MIN-IDLE.

// TestRenewalLeavesEntryToNewOwner: once another consumer has claimed an
// entry (a renewal came too late), the old holder's renewals leave it alone:
// the new owner keeps it and its delivery count, and only one handler runs
// it from then on.
func TestRenewalLeavesEntryToNewOwner(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	release := make(chan struct{})
	ids := make(chan string, 1)
	a := subscribe(t, c, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		ids <- stream.EntryID(ctx, m)
		<-release
		return nil
	}), stream.WithVisibilityTimeout(300*time.Millisecond))
	defer close(release)
	require.NoError(t, newPub(t, c).Publish(ctx, topic, broker.NewMessage([]byte("long"))))
	id := <-ids
	// The thief claims it, as an XAUTOCLAIM after a missed renewal would.
	require.NoError(t, c.XClaim(ctx, &redis.XClaimArgs{Stream: topic, Group: stream.DefaultGroup, Consumer: "thief", Messages: []string{id}}).Err())
	require.Eventually(t, func() bool { return a.Stats().LeasesLost == 1 }, waitTimeout, 5*time.Millisecond)
	p := pendingEntry(t, c, topic, stream.DefaultGroup, id)
	assert.Equal(t, "thief", p.Consumer, "the renewal took the entry back")
	assert.EqualValues(t, 2, p.RetryCount, "the renewal rewrote the new owner's delivery count")
}

// TestHandBackLeavesEntryToNewOwner: Shutdown hands back only the unstarted
// entries this consumer still owns; one another consumer claimed meanwhile
// keeps its owner, idle time and delivery count.
func TestHandBackLeavesEntryToNewOwner(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	sub, err := stream.NewSubscriber(c, fastOpts(t, stream.WithVisibilityTimeout(time.Minute))...)
	require.NoError(t, err)
	s, err := sub.Subscribe(ctx, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	}))
	require.NoError(t, err)
	publishN(t, newPub(t, c), topic, 3)
	<-started
	require.Eventually(t, func() bool { return pendingCount(t, c, topic, stream.DefaultGroup) == 3 }, waitTimeout, 5*time.Millisecond)
	pending, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: topic, Group: stream.DefaultGroup, Start: "-", End: "+", Count: 10}).Result()
	require.NoError(t, err)
	stolen, kept := pending[1].ID, pending[2].ID
	require.NoError(t, c.XClaim(ctx, &redis.XClaimArgs{Stream: topic, Group: stream.DefaultGroup, Consumer: "thief", Messages: []string{stolen}}).Err())

	res := make(chan error, 1)
	go func() { res <- s.Shutdown(ctx) }()
	<-stream.Stopping(s.(*stream.Subscription))
	close(release)
	require.NoError(t, <-res)
	assert.EqualValues(t, 1, s.(*stream.Subscription).Stats().HandedBack)

	p := pendingEntry(t, c, topic, stream.DefaultGroup, stolen)
	assert.Equal(t, "thief", p.Consumer)
	assert.EqualValues(t, 2, p.RetryCount)
	assert.Less(t, p.Idle, time.Minute, "its idle time was not set by the hand back")
	p = pendingEntry(t, c, topic, stream.DefaultGroup, kept)
	assert.Equal(t, s.(*stream.Subscription).Consumer(), p.Consumer)
	assert.Zero(t, p.RetryCount, "handed back: the delivery that never ran does not count")
	assert.GreaterOrEqual(t, p.Idle, time.Minute)
}

// TestAckKeepsLeaseUntilFlushed: an entry whose handler returned nil stays
// leased until its XACK succeeded; a stalled XACK does not let another
// consumer claim and redeliver it.
func TestAckKeepsLeaseUntilFlushed(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	const vis = 300 * time.Millisecond
	h := newHook(c)
	release := make(chan struct{})
	var stalled atomic.Bool
	var entryID atomic.Value
	h.set(func(h *cmdHook) {
		h.keep = func(cmd redis.Cmder) bool {
			id, _ := entryID.Load().(string)
			return stalled.Load() && id != "" && cmdName(cmd) == "evalsha" && argsContain(cmd, id)
		}
		h.hold = func(cmd redis.Cmder) <-chan struct{} {
			if cmdName(cmd) == "xack" {
				stalled.Store(true)
				return release
			}
			return nil
		}
	})
	a := subscribe(t, c, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		entryID.Store(stream.EntryID(ctx, m))
		return nil
	}), stream.WithVisibilityTimeout(vis))
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	require.NoError(t, newPub(t, c).Publish(ctx, topic, broker.NewMessage([]byte("x"))))
	require.Eventually(t, stalled.Load, waitTimeout, time.Millisecond)
	other := brokertest.NewRecorder(nil)
	b := subscribe(t, srv.Client(t), topic, other, stream.WithVisibilityTimeout(vis))
	// Renewals every vis/3: four of them span more than the timeout.
	require.Eventually(t, func() bool { return len(h.kept()) >= 4 }, waitTimeout, 5*time.Millisecond)
	id := entryID.Load().(string)
	p := pendingEntry(t, c, topic, stream.DefaultGroup, id)
	assert.Equal(t, a.Consumer(), p.Consumer)
	assert.Less(t, p.Idle, vis)
	close(release)
	released = true
	require.Eventually(t, func() bool { return pendingCount(t, c, topic, stream.DefaultGroup) == 0 }, waitTimeout, 5*time.Millisecond)
	assert.Zero(t, other.Len(), "the other consumer redelivered an entry whose ack was in flight")
	assert.Zero(t, b.Stats().Claimed)
}

// TestClaimScanDoesNotStarveReads: a long pending list held by a live
// consumer (nothing idle to claim) does not keep the fetcher in XAUTOCLAIM:
// with COUNT 1, Redis scans 10 entries per call, and a read comes between
// any two claims.
func TestClaimScanDoesNotStarveReads(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
	const held = 3000
	publishN(t, newPub(t, c), topic, held)
	require.NoError(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "busy", Streams: []string{topic, ">"}, Count: held, Block: -1}).Err())
	fresh := broker.NewMessage([]byte("new"))
	require.NoError(t, newPub(t, c).Publish(ctx, topic, fresh))

	sc := srv.Client(t)
	h := newHook(sc)
	claimsBefore := make(chan int, 1)
	subscribe(t, sc, topic, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if m.ID == fresh.ID {
			claimsBefore <- h.count("xautoclaim")
		}
		return nil
	}), stream.WithGroup("g"), stream.WithPrefetch(1), stream.WithVisibilityTimeout(time.Minute))
	select {
	case n := <-claimsBefore:
		assert.LessOrEqual(t, n, 2, "XAUTOCLAIM calls before the new entry was read")
	case <-time.After(waitTimeout):
		t.Fatal("the new entry was not delivered")
	}
}

// TestDeletedWhilePendingLoggedOnce: entries deleted while pending are
// reported with one warning per batch, not one per entry.
func TestDeletedWhilePendingLoggedOnce(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
	publishN(t, newPub(t, c), topic, 5)
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "w1", Streams: []string{topic, ">"}, Count: 5, Block: -1}).Result()
	require.NoError(t, err)
	for _, m := range res[0].Messages[1:4] {
		require.NoError(t, c.XDel(ctx, topic, m.ID).Err())
	}
	logs := newLogRecorder()
	rec := brokertest.NewRecorder(nil)
	s := subscribe(t, c, topic, rec, stream.WithGroup("g"), stream.WithConsumerName("w1"),
		stream.WithVisibilityTimeout(time.Minute), stream.WithLogger(logs.logger()))
	require.Eventually(t, func() bool { return rec.Len() == 2 && pendingCount(t, c, topic, "g") == 0 }, waitTimeout, 5*time.Millisecond)
	warned := logs.matching("deleted before")
	require.Len(t, warned, 1)
	assert.Equal(t, "3", warned[0].attrs["count"])
	assert.EqualValues(t, 3, s.Stats().DeletedWhilePending)
}
