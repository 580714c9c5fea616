package stream_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/brokertest"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/internal/wire"
	"github.com/redisbroker/broker/stream"
)

// Tests of behaviour miniredis gets wrong, on a real redis-server.

// realServer returns the shared real server, or skips.
func realServer(t *testing.T) *redistest.Server {
	t.Helper()
	for _, s := range redistest.Servers(t) {
		if s.Real() {
			return s
		}
	}
	t.Skip("no redis-server on PATH")
	return nil
}

// TestLeaseKeepsLongHandler: a handler running five visibility timeouts
// keeps its entry; a competing consumer never claims it (miniredis's XCLAIM
// ignores MIN-IDLE, so only a real server tests this).
func TestLeaseKeepsLongHandler(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	topic := redistest.Topic(t)
	const vis = 300 * time.Millisecond
	var calls atomic.Int64
	h := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		calls.Add(1)
		time.Sleep(5 * vis)
		return nil
	})
	a := subscribe(t, c, topic, h, stream.WithVisibilityTimeout(vis))
	b := subscribe(t, c, topic, h, stream.WithVisibilityTimeout(vis))
	require.NoError(t, newPub(t, c).Publish(context.Background(), topic, broker.NewMessage([]byte("long"))))
	// Wait for the ack itself: an empty pending list alone is also what the
	// test sees before the entry was first read.
	require.Eventually(t, func() bool { return a.Stats().Acked+b.Stats().Acked == 1 }, waitTimeout, 10*time.Millisecond)
	time.Sleep(2 * vis)
	assert.EqualValues(t, 1, calls.Load(), "the entry of a running handler was claimed by another consumer")
	assert.Zero(t, a.Stats().Claimed+b.Stats().Claimed)
	assert.Zero(t, pendingCount(t, c, topic, "broker"))
	assert.EqualValues(t, 1, a.Stats().Acked+b.Stats().Acked)
}

// TestApproximateTrimming: MAXLEN ~ keeps more than n entries (whole macro
// nodes), and a group that has not read warns.
func TestApproximateTrimming(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "slow", "0").Err())
	pub := newPub(t, c, stream.WithMaxLen(10), stream.WithLagCheckInterval(time.Nanosecond))
	for i := range 250 {
		require.NoError(t, pub.Publish(ctx, topic, broker.NewMessage([]byte(strconv.Itoa(i)))))
	}
	n, err := c.XLen(ctx, topic).Result()
	require.NoError(t, err)
	t.Logf("MAXLEN ~ 10 after 250 adds: %d entries", n)
	assert.Greater(t, n, int64(10), "approximate trimming keeps whole nodes")
	assert.Less(t, n, int64(250), "trimmed at all")
	assert.Positive(t, pub.Stats().LagWarnings, "a group that read nothing is about to lose entries")

	// MINID via WithMaxAge drops old entries.
	topic2 := topic + "-age"
	// MINID ~ trims whole nodes only (100 entries each by default): fill
	// several nodes with old entries, then one new XADD drops them.
	oldMs := time.Now().Add(-time.Hour).UnixMilli()
	for i := range 300 {
		id := strconv.FormatInt(oldMs, 10) + "-" + strconv.Itoa(i+1)
		require.NoError(t, c.XAdd(ctx, &redis.XAddArgs{Stream: topic2, ID: id, Values: []any{"payload", "old"}}).Err())
	}
	aged := newPub(t, c, stream.WithMaxAge(time.Minute))
	require.NoError(t, aged.Publish(ctx, topic2, broker.NewMessage([]byte("new"))))
	n, err = c.XLen(ctx, topic2).Result()
	require.NoError(t, err)
	t.Logf("MINID ~ (max age 1m) after 300 hour-old entries and 1 new: %d entries", n)
	assert.Less(t, n, int64(301), "WithMaxAge trimmed old entries")
	assert.Positive(t, n)
}

// TestDeletedWhilePendingDrained: an entry deleted (XDEL) while pending for a
// consumer comes back without fields when that consumer drains its pending
// list on restart: it is acked and counted, not redelivered.
func TestDeletedWhilePendingDrained(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
	msgs := publishN(t, newPub(t, c), topic, 3)
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "w1", Streams: []string{topic, ">"}, Count: 3, Block: -1}).Result()
	require.NoError(t, err)
	require.NoError(t, c.XDel(ctx, topic, res[0].Messages[1].ID).Err())

	rec := brokertest.NewRecorder(nil)
	s := subscribe(t, c, topic, rec, stream.WithGroup("g"), stream.WithConsumerName("w1"), stream.WithVisibilityTimeout(time.Minute))
	require.Eventually(t, func() bool { return rec.Len() == 2 && pendingCount(t, c, topic, "g") == 0 }, waitTimeout, 5*time.Millisecond)
	assert.Equal(t, 1, rec.Count(msgs[0].ID))
	assert.Equal(t, 0, rec.Count(msgs[1].ID))
	assert.Equal(t, 1, rec.Count(msgs[2].ID))
	assert.EqualValues(t, 1, s.Stats().DeletedWhilePending)
}

// TestDeletedWhilePendingClaimed: XAUTOCLAIM reports entries deleted while
// pending for a crashed consumer (the typed XAutoClaim would drop the list);
// they are counted and never claimed again.
func TestDeletedWhilePendingClaimed(t *testing.T) {
	t.Parallel()
	srv := realServer(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	require.NoError(t, c.XGroupCreateMkStream(ctx, topic, "g", "0").Err())
	msgs := publishN(t, newPub(t, c), topic, 3)
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "gone", Streams: []string{topic, ">"}, Count: 3, Block: -1}).Result()
	require.NoError(t, err)
	require.NoError(t, c.XDel(ctx, topic, res[0].Messages[0].ID).Err())

	rec := brokertest.NewRecorder(nil)
	s := subscribe(t, c, topic, rec, stream.WithGroup("g"))
	require.Eventually(t, func() bool { return rec.Len() == 2 && pendingCount(t, c, topic, "g") == 0 }, waitTimeout, 5*time.Millisecond)
	assert.Equal(t, 0, rec.Count(msgs[0].ID))
	assert.EqualValues(t, 1, s.Stats().DeletedWhilePending)
	assert.EqualValues(t, 2, s.Stats().Claimed)
}

// TestLagUnknown: after XDEL of an entry the group has not read, Redis
// cannot compute the lag and the Inspector reports -1.
func TestLagUnknown(t *testing.T) {
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
	groups, err := stream.NewInspector(c).Groups(ctx, topic)
	require.NoError(t, err)
	require.Len(t, groups, 1)
	assert.EqualValues(t, -1, groups[0].Lag)
}

// TestIdleCommandRate: an idle subscription sends at most one command per
// block on average, its periodic claims (XAUTOCLAIM every half visibility
// timeout) and idle-consumer cleanup (XINFO CONSUMERS) included, measured
// with INFO commandstats on a server of its own. Scaled down: a 50ms block,
// a claim every 200ms and a cleanup every 500ms, where the defaults are 1s,
// 15s and 10min; the window spans many claims and cleanups.
func TestIdleCommandRate(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a redis-server")
	}
	t.Parallel()
	srv := redistest.NewReal(t)
	c := srv.Client(t)
	const block = 50 * time.Millisecond
	sub, err := stream.NewSubscriber(c, stream.WithBlock(block),
		stream.WithVisibilityTimeout(400*time.Millisecond), stream.WithConsumerIdleTimeout(time.Second))
	require.NoError(t, err)
	s, err := sub.Subscribe(context.Background(), "idle", brokertest.NewRecorder(nil))
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Shutdown(context.Background())) }()
	// Past the start-up commands: the first claim and cleanup happened.
	require.Eventually(t, func() bool {
		return commandCalls(t, srv, "xinfo|consumers") >= 1 && commandCalls(t, srv, "xautoclaim") >= 2
	},
		waitTimeout, 10*time.Millisecond)
	before, claims, cleanups, start := totalCalls(t, srv), commandCalls(t, srv, "xautoclaim"), commandCalls(t, srv, "xinfo|consumers"), time.Now()
	require.Eventually(t, func() bool {
		return commandCalls(t, srv, "xautoclaim") >= claims+10 && commandCalls(t, srv, "xinfo|consumers") >= cleanups+3
	},
		waitTimeout, 10*time.Millisecond)
	sent, elapsed := totalCalls(t, srv)-before, time.Since(start)
	budget := int64(elapsed/block) + 2 // a read in flight at each end
	t.Logf("idle subscription: %d commands in %v (%d claims, %d cleanups): %.2f per block",
		sent, elapsed, commandCalls(t, srv, "xautoclaim")-claims, commandCalls(t, srv, "xinfo|consumers")-cleanups, float64(sent)*float64(block)/float64(elapsed))
	assert.LessOrEqual(t, sent, budget, "commands in %v, at most one per %v block", elapsed, block)
}

// commandCalls returns the calls of one command in INFO commandstats.
func commandCalls(t testing.TB, srv *redistest.Server, name string) int64 {
	info, _ := srv.Do(t, "INFO", "commandstats").(string)
	for _, line := range strings.Split(info, "\n") {
		if cmd, rest, ok := strings.Cut(line, ":calls="); ok && strings.TrimSpace(cmd) == "cmdstat_"+name {
			n, _, _ := strings.Cut(rest, ",")
			v, err := strconv.ParseInt(n, 10, 64)
			require.NoError(t, err)
			return v
		}
	}
	return 0
}

// totalCalls sums the calls of INFO commandstats, except the HELLO and INFO
// of the measuring connections.
func totalCalls(t testing.TB, srv *redistest.Server) int64 {
	info, _ := srv.Do(t, "INFO", "commandstats").(string)
	return sumCalls(t, info)
}

// sumCalls sums the calls of an INFO commandstats reply, except HELLO and
// INFO.
func sumCalls(t testing.TB, info string) int64 {
	var total int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(line, ":calls=")
		if !ok || name == "cmdstat_info" || name == "cmdstat_hello" {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		require.NoError(t, err)
		total += v
	}
	return total
}

// TestPublishLeavesTheMessageOnCtxEnd: a single Publish whose ctx ends while
// Redis holds its write (CLIENT PAUSE WRITE) returns ctx.Err(), and the
// caller may then change the message: the write still going on reads its own
// copy. Under -race, a flush that read the caller's message would be
// reported.
func TestPublishLeavesTheMessageOnCtxEnd(t *testing.T) {
	t.Parallel()
	srv := redistest.NewReal(t) // skips without redis-server; its own: CLIENT PAUSE stops every client of a server
	c := srv.Client(t)
	topic := redistest.Topic(t)
	pub := newPub(t, c)
	srv.Do(t, "CLIENT", "PAUSE", "500", "WRITE")
	m := broker.NewMessage([]byte("before"))
	m.Metadata = map[string]string{"k": "before"}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, pub.Publish(ctx, topic, m), context.DeadlineExceeded)
	m.Payload[0] = 'X'
	m.Metadata["k"] = "after"
	m.ID = "changed"
	require.Eventually(t, func() bool { return c.XLen(context.Background(), topic).Val() == 1 }, waitTimeout, 10*time.Millisecond)
	entries, err := c.XRange(context.Background(), topic, "-", "+").Result()
	require.NoError(t, err)
	got := wire.DecodeFields(entries[0].Values)
	assert.Equal(t, "before", string(got.Payload))
	assert.Equal(t, "before", got.Metadata["k"])
	assert.NotEqual(t, "changed", got.ID)
}
