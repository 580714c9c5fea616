package pubsub_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/pubsub"
)

// seqRecorder is a handler that records the message numbers (payloads) it
// handled and when it last handled one.
type seqRecorder struct {
	mu    sync.Mutex
	seen  []int
	last  atomic.Int64 // unix nanos of the last delivery
	delay time.Duration
}

func (r *seqRecorder) Handle(_ context.Context, m *broker.Message) error {
	if r.delay > 0 {
		time.Sleep(r.delay)
	}
	n, err := strconv.Atoi(string(m.Payload))
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.seen = append(r.seen, n)
	r.mu.Unlock()
	r.last.Store(time.Now().UnixNano())
	return nil
}

func (r *seqRecorder) numbers() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.seen...)
}

func (r *seqRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *seqRecorder) max() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) == 0 {
		return -1
	}
	return r.seen[len(r.seen)-1]
}

func (r *seqRecorder) has(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen) > 0 && r.seen[len(r.seen)-1] == n
}

// assertIncreasing checks order (concurrency 1) and no duplicates.
func assertIncreasing(t *testing.T, nums []int) {
	t.Helper()
	for i := 1; i < len(nums); i++ {
		if nums[i] <= nums[i-1] {
			t.Fatalf("out of order at %d: %d after %d", i, nums[i], nums[i-1])
		}
	}
}

// TestClientKillDuringRun kills the subscriber's connection 10 times during a
// 100,000-message run. The test paces the publisher: it keeps publishing
// through each outage and for a while after the resubscription, so that
// every kill's recovery is measured (a message published after the
// resubscription is handled within a second of the kill), and then pauses
// until the subscription has handled everything, so that the gap counter
// can be checked after each kill: it equals the messages missed so far.
func TestClientKillDuringRun(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	srv := redistest.NewReal(t)
	c := srv.Client(t)
	topic := redistest.Topic(t)
	const total, kills, batchSize = 100_000, 10, 50
	// Messages published after each kill, and after each resubscription.
	const during, after = 2_000, 1_000

	rec := &seqRecorder{}
	// A buffer that never overflows: every loss is then a gap.
	sub := listen(t, mustSubscriber(t, c, pubsub.WithBuffer(total+1)), topic, rec)
	p := mustPublisher(t, c)

	// The publisher sends batches of numbered messages until published
	// reaches target, then waits for the test to raise it.
	var published, target atomic.Int64
	raised := make(chan struct{}, 1)
	raise := func(n int64) {
		target.Store(min(n, total))
		select {
		case raised <- struct{}{}:
		default:
		}
	}
	pubDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := int64(0); i < total; {
			if i >= target.Load() {
				<-raised
				continue
			}
			<-tick.C
			n := min(batchSize, target.Load()-i)
			msgs := make([]*broker.Message, n)
			for j := range msgs {
				msgs[j] = broker.NewMessage(strconv.AppendInt(nil, i+int64(j), 10))
			}
			if err := p.Publish(context.Background(), topic, msgs...); err != nil {
				pubDone <- err
				return
			}
			i += n
			published.Store(i)
		}
		pubDone <- nil
	}()
	// quiet waits until the publisher has sent everything up to its target
	// and the subscription has handled all of it that reached it.
	quiet := func(k int) {
		t.Helper()
		require.Eventually(t, func() bool {
			tg := target.Load()
			// Delivered is counted after the handler returns, so it can
			// trail rec.
			return published.Load() == tg && rec.has(int(tg-1)) && sub.Stats().Buffered == 0 &&
				sub.Stats().Delivered == uint64(rec.count())
		}, 30*time.Second, time.Millisecond, "kill %d: not settled", k)
	}

	for k := 1; k <= kills; k++ {
		at := int64(k * total / (kills + 1))
		raise(at + during)
		require.Eventually(t, func() bool { return published.Load() >= at }, 30*time.Second, time.Millisecond)
		killed := time.Now()
		srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
		require.Eventually(t, func() bool { return sub.Stats().Reconnects == uint64(k) },
			time.Second, time.Millisecond, "kill %d: not resubscribed within 1s", k)
		// Receiving again: a message published after the resubscription
		// (the publisher goes on for at least `after` more) is handled
		// within a second of the kill.
		from := published.Load()
		raise(max(target.Load(), from+after))
		require.Eventually(t, func() bool { return rec.max() >= int(from) },
			time.Until(killed.Add(time.Second)), time.Millisecond, "kill %d: not receiving within 1s", k)
		t.Logf("kill %d: receiving again after %v", k, time.Since(killed).Round(time.Millisecond))

		quiet(k)
		nums := rec.numbers()
		missed := rec.max() + 1 - len(nums)
		st := sub.Stats()
		assert.Equal(t, uint64(missed), st.Gaps, "kill %d: gap counter == messages missed so far", k)
		assert.Equal(t, uint64(k), st.Disconnects, "kill %d", k)
	}
	raise(total)
	require.NoError(t, <-pubDone)
	quiet(kills + 1)

	nums := rec.numbers()
	assertIncreasing(t, nums)
	require.Equal(t, total-1, nums[len(nums)-1], "the last message arrived")
	missed := total - len(nums)
	st := sub.Stats()
	t.Logf("stats: %+v; missed %d", st, missed)
	assert.Equal(t, uint64(missed), st.Gaps, "gap counter == messages missed")
	assert.Positive(t, missed, "the kills should have cost messages")
	assert.Equal(t, uint64(kills), st.Disconnects)
	assert.Equal(t, uint64(kills), st.Reconnects)
	assert.Zero(t, st.Dropped())
	assert.Zero(t, st.Duplicates)
	assert.Equal(t, uint64(len(nums)), st.Delivered)
}

// TestSlowSubscriber lowers client-output-buffer-limit and runs three slow
// subscribers (one per overflow policy) beside two fast ones. The drop
// policies keep reading, so Redis never disconnects them: all their losses
// are overflow drops. The blocked one is disconnected by Redis: all its
// losses are gaps. Memory stays bounded by the buffer (the heap never holds
// the backlog, which would take tens of MB), and the fast ones lose nothing.
func TestSlowSubscriber(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	srv := redistest.NewReal(t)
	srv.Do(t, "CONFIG", "SET", "client-output-buffer-limit", "pubsub 4mb 2mb 1")
	c := srv.Client(t)
	topic := redistest.Topic(t)
	const total, batchSize, capacity = 20_000, 50, 100
	pad := strings.Repeat("x", 2000)

	type subject struct {
		name string
		rec  *seqRecorder
		sub  *pubsub.Subscription
	}
	var slow, fast []subject
	for _, pol := range []pubsub.Overflow{pubsub.DropNewest, pubsub.DropOldest, pubsub.Block} {
		rec := &seqRecorder{delay: time.Millisecond}
		sub := listen(t, mustSubscriber(t, c, pubsub.WithBuffer(capacity), pubsub.WithOverflow(pol)), topic, rec)
		slow = append(slow, subject{pol.String(), rec, sub})
	}
	for i := range 2 {
		rec := &seqRecorder{}
		sub := listen(t, mustSubscriber(t, c, pubsub.WithBuffer(total+1)), topic, rec)
		fast = append(fast, subject{"fast" + strconv.Itoa(i), rec, sub})
	}

	// Sample the heap while publishing. Unbounded buffering of the slow
	// subscribers' backlog would hold 2 x ~18,000 x 2 KB = ~70 MB.
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-sampling:
				return
			case <-tick.C:
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()

	p := mustPublisher(t, c)
	tick := time.NewTicker(5 * time.Millisecond)
	for i := 0; i < total; i += batchSize {
		<-tick.C
		msgs := make([]*broker.Message, batchSize)
		for j := range msgs {
			msgs[j] = broker.NewMessage(strconv.AppendInt(nil, int64(i+j), 10))
			msgs[j].Metadata = map[string]string{"pad": pad}
		}
		require.NoError(t, p.Publish(context.Background(), topic, msgs...))
	}
	tick.Stop()
	close(sampling)
	<-sampled

	// Let every subscription settle (reconnected, buffer drained) before the
	// trailer, so that it is neither lost in a gap nor dropped on overflow.
	all := append(append([]subject(nil), slow...), fast...)
	for _, s := range all {
		require.Eventually(t, func() bool {
			st := s.sub.Stats()
			return st.Disconnects == st.Reconnects && st.Buffered == 0 &&
				st.Received == st.Delivered+st.Dropped()
		}, 60*time.Second, 10*time.Millisecond, s.name)
	}
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte(strconv.Itoa(total)))))
	for _, s := range all {
		// Delivered is counted after the handler returns, so it can trail rec.
		require.Eventually(t, func() bool { return s.rec.has(total) && s.sub.Stats().Delivered == uint64(s.rec.count()) },
			10*time.Second, time.Millisecond, s.name)
	}

	growth := int64(peak.Load()) - int64(base.HeapAlloc)
	t.Logf("heap: base %d KB, peak %d KB", base.HeapAlloc>>10, peak.Load()>>10)
	assert.Less(t, growth, int64(32<<20), "memory bounded by the buffers, not by the backlog")

	for _, s := range fast {
		st := s.sub.Stats()
		assert.Equal(t, uint64(total+1), st.Delivered, "%s: %+v", s.name, st)
		assert.Zero(t, st.Lost(), "%s", s.name)
		assert.Zero(t, st.Disconnects, "%s", s.name)
	}
	_, limitCounted := redistestInfoField(t, srv, "client_output_buffer_limit_disconnections")
	for _, s := range slow {
		nums := s.rec.numbers()
		assertIncreasing(t, nums)
		st := s.sub.Stats()
		missed := uint64(total + 1 - len(nums))
		t.Logf("%s: delivered %d, missed %d: %+v", s.name, len(nums), missed, st)
		assert.Positive(t, missed, "%s: a slow subscriber must lose", s.name)
		assert.Equal(t, uint64(len(nums)), st.Delivered, "%s", s.name)
		assert.Zero(t, st.DroppedMalformed+st.DroppedOversize+st.DroppedShutdown+st.HandlerErrors, "%s", s.name)
		assert.Equal(t, capacity, st.BufferHighWater, "%s: the buffer filled", s.name)
		if s.name == pubsub.Block.String() {
			assert.Zero(t, st.DroppedOverflow, "Block never drops locally")
			assert.Equal(t, missed, st.Gaps, "Block: every loss is a gap")
			assert.Positive(t, st.Disconnects, "Redis disconnected the blocked subscriber")
			assert.Equal(t, st.Disconnects, st.SlowDisconnects, "each while it was behind")
			if limitCounted {
				assert.Positive(t, st.BufferLimitDisconnects, "confirmed by the server's counter")
			} else {
				assert.Zero(t, st.BufferLimitDisconnects, "the server does not report it (before Redis 7.2)")
			}
		} else {
			assert.Equal(t, missed, st.DroppedOverflow, "%s: every loss is an overflow drop", s.name)
			assert.Zero(t, st.Gaps, "%s", s.name)
			assert.Zero(t, st.Disconnects, "%s: a drop policy keeps reading; Redis did not disconnect it", s.name)
		}
	}
}

// redistestInfoField reads an INFO stats field of srv.
func redistestInfoField(t *testing.T, srv *redistest.Server, name string) (string, bool) {
	t.Helper()
	info := fmt.Sprint(srv.Do(t, "INFO", "stats"))
	for line := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == name {
			return v, true
		}
	}
	return "", false
}

func trimZero(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// TestHealthCheckReplacesSilentConnection: CLIENT PAUSE makes Redis stop
// answering, like a half-open connection. The health check pings, hears
// nothing, replaces the connection, and the subscription carries on.
func TestHealthCheckReplacesSilentConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	srv := redistest.NewReal(t)
	c := srv.Client(t)
	topic := redistest.Topic(t)
	rec := &seqRecorder{}
	sub := listen(t, mustSubscriber(t, c, pubsub.WithHealthCheck(100*time.Millisecond)), topic, rec)
	p := mustPublisher(t, c)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("0"))))
	require.Eventually(t, func() bool { return rec.has(0) }, 5*time.Second, time.Millisecond)

	srv.Do(t, "CLIENT", "PAUSE", "1000", "ALL")
	require.Eventually(t, func() bool { return sub.Stats().Disconnects == 1 }, 5*time.Second, 5*time.Millisecond,
		"silent connection not detected")
	require.Eventually(t, func() bool { return sub.Stats().Reconnects >= 1 }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, p.Publish(context.Background(), topic, broker.NewMessage([]byte("1"))))
	require.Eventually(t, func() bool { return rec.has(1) }, 5*time.Second, time.Millisecond)
	st := sub.Stats()
	assert.Zero(t, st.Gaps)
	assert.Equal(t, uint64(1), st.Disconnects)
}
