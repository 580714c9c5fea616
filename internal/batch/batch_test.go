package batch

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitTimeout bounds every wait in these tests, so a deadlock fails the test
// instead of hanging it.
const waitTimeout = 10 * time.Second

// gatedFlush records batches. Its first flush blocks until release is
// closed, so a test can queue callers behind an in-flight flush
// deterministically.
type gatedFlush struct {
	entered chan struct{} // closed when the first flush starts
	release chan struct{}
	// result computes the flush's results; nil means all succeed.
	result func(ctx context.Context, items []int) []error

	mu      sync.Mutex
	batches [][]int
}

func newGatedFlush() *gatedFlush {
	return &gatedFlush{entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedFlush) flush(ctx context.Context, items []int) []error {
	g.mu.Lock()
	first := len(g.batches) == 0
	g.batches = append(g.batches, slices.Clone(items))
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.release
	}
	if g.result != nil {
		return g.result(ctx, items)
	}
	return nil
}

func (g *gatedFlush) recorded() [][]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.batches)
}

func (g *gatedFlush) sizes() []int {
	var n []int
	for _, b := range g.recorded() {
		n = append(n, len(b))
	}
	return n
}

// itemErrors fails each item with its own error, so callers can check that
// they got theirs and not a neighbour's.
func itemErrors(_ context.Context, items []int) []error {
	errs := make([]error, len(items))
	for i, v := range items {
		errs[i] = itemError(v)
	}
	return errs
}

func itemError(v int) error { return fmt.Errorf("item %d", v) }

// call runs Do in a goroutine and returns where its result will arrive.
func call(ctx context.Context, c *Coalescer[int], v int) <-chan error {
	res := make(chan error, 1)
	go func() { res <- c.Do(ctx, v) }()
	return res
}

func result(t *testing.T, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		return err
	case <-time.After(waitTimeout):
		t.Fatal("Do did not return")
		return nil
	}
}

func queued(c *Coalescer[int]) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queue.len()
}

func requireQueued(t *testing.T, c *Coalescer[int], n int) {
	t.Helper()
	require.Eventually(t, func() bool { return queued(c) == n }, waitTimeout, time.Millisecond)
}

// requireIdle checks that nothing is left behind: no flush, no queue, no
// semaphore tokens. The flusher goroutine marks the Coalescer idle just
// after delivering the last results, hence the polling.
func requireIdle(t *testing.T, c *Coalescer[int]) {
	t.Helper()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return !c.busy && c.queue.len() == 0 && len(c.sem) == 0
	}, waitTimeout, time.Millisecond, "busy, queued or holding semaphore tokens")
}

// startBlocked makes item 0 the leader of a flush that blocks until
// g.release is closed.
func startBlocked(t *testing.T, c *Coalescer[int], g *gatedFlush) <-chan error {
	t.Helper()
	res := call(context.Background(), c, 0)
	select {
	case <-g.entered:
	case <-time.After(waitTimeout):
		t.Fatal("first flush did not start")
	}
	return res
}

func TestNewDefaults(t *testing.T) {
	tests := []struct {
		name        string
		opt         Options
		batch, pend int
	}{
		{"zero", Options{}, DefaultMaxBatch, DefaultMaxPending},
		{"negative", Options{MaxBatch: -1, MaxPending: -1}, DefaultMaxBatch, DefaultMaxPending},
		{"set", Options{MaxBatch: 3, MaxPending: 5}, 3, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(itemErrors, tt.opt)
			assert.Equal(t, tt.batch, c.maxBatch)
			assert.Equal(t, tt.pend, c.maxPending)
			assert.Equal(t, tt.pend, cap(c.sem))
		})
	}
}

func TestIdleCallFlushesImmediately(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	close(g.release)
	g.result = itemErrors
	c := New(g.flush, Options{})
	for v := range 3 {
		// No other caller exists, so Do can only return if it flushed
		// by itself, at once, in a batch of one.
		require.EqualError(t, c.Do(t.Context(), v), itemError(v).Error())
	}
	assert.Equal(t, [][]int{{0}, {1}, {2}}, g.recorded())
	requireIdle(t, c)
}

func TestDoneContextSendsNothing(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	c := New(g.flush, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, c.Do(ctx, 1), context.Canceled)
	assert.Empty(t, g.recorded())
}

func TestConcurrentCallersShareNextFlush(t *testing.T) {
	t.Parallel()
	// A leader whose ctx can end flushes in a goroutine of its own; one whose
	// ctx cannot flushes inline. Both hand the backlog on.
	leaders := map[string]func(t *testing.T) context.Context{
		"cancellable leader": func(t *testing.T) context.Context { return t.Context() },
		"background leader":  func(*testing.T) context.Context { return context.Background() },
	}
	for name, leaderCtx := range leaders {
		for _, n := range []int{1, 5, 64} {
			t.Run(fmt.Sprint(name, "/", n), func(t *testing.T) {
				t.Parallel()
				g := newGatedFlush()
				g.result = itemErrors
				c := New(g.flush, Options{})
				lead := call(leaderCtx(t), c, 0)
				<-g.entered

				results := make([]<-chan error, n+1)
				for v := 1; v <= n; v++ {
					results[v] = call(t.Context(), c, v)
				}
				requireQueued(t, c, n)
				close(g.release)

				require.EqualError(t, result(t, lead), itemError(0).Error())
				for v := 1; v <= n; v++ {
					require.EqualError(t, result(t, results[v]), itemError(v).Error())
				}
				assert.Equal(t, []int{1, n}, g.sizes())
				requireIdle(t, c)
			})
		}
	}
}

func TestMaxBatchSplitsBacklog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		maxBatch int
		queued   int
		want     []int
	}{
		{"one per flush", 1, 3, []int{1, 1, 1, 1}},
		{"splits", 3, 7, []int{1, 3, 3, 1}},
		{"exact", 3, 6, []int{1, 3, 3}},
		{"fits", 10, 7, []int{1, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGatedFlush()
			c := New(g.flush, Options{MaxBatch: tt.maxBatch})
			lead := startBlocked(t, c, g)
			var results []<-chan error
			for v := 1; v <= tt.queued; v++ {
				// One at a time, so arrival order is known.
				results = append(results, call(t.Context(), c, v))
				requireQueued(t, c, v)
			}
			close(g.release)

			require.NoError(t, result(t, lead))
			for _, res := range results {
				require.NoError(t, result(t, res))
			}
			assert.Equal(t, tt.want, g.sizes())
			// FIFO across and within the batches.
			assert.Equal(t, seq(0, tt.queued), slices.Concat(g.recorded()...))
			requireIdle(t, c)
		})
	}
}

func seq(from, to int) []int {
	var s []int
	for v := from; v <= to; v++ {
		s = append(s, v)
	}
	return s
}

func TestMaxPendingBlocksCallers(t *testing.T) {
	t.Parallel()
	const maxPending, callers = 4, 20
	g := newGatedFlush()
	var maxSeen atomic.Int64
	g.result = func(_ context.Context, items []int) []error {
		// The leader's own item plus at most MaxPending queued ones.
		if len(items) > maxPending+1 {
			return Errors(len(items), fmt.Errorf("batch of %d", len(items)))
		}
		return nil
	}
	c := New(g.flush, Options{MaxPending: maxPending})

	// Watch the queue length for the whole test.
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := int64(queued(c)); n > maxSeen.Load() {
				maxSeen.Store(n)
			}
		}
	}()

	lead := startBlocked(t, c, g)
	var results []<-chan error
	for v := 1; v <= callers; v++ {
		results = append(results, call(t.Context(), c, v))
	}
	requireQueued(t, c, maxPending)
	// The extra callers are blocked, not buffered: nobody has returned.
	for _, res := range results {
		require.Empty(t, res)
	}
	close(g.release)

	require.NoError(t, result(t, lead))
	for _, res := range results {
		require.NoError(t, result(t, res))
	}
	close(stop)
	<-watched
	assert.LessOrEqual(t, maxSeen.Load(), int64(maxPending))
	assert.ElementsMatch(t, seq(0, callers), slices.Concat(g.recorded()...))
	requireIdle(t, c)
}

func TestMaxPendingHonoursContext(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	c := New(g.flush, Options{MaxPending: 1})
	lead := startBlocked(t, c, g)
	queuedRes := call(t.Context(), c, 1)
	requireQueued(t, c, 1)

	ctx, cancel := context.WithCancel(t.Context())
	asked := &doneNotifier{Context: ctx, asked: make(chan struct{})}
	blocked := call(asked, c, 2)
	<-asked.asked // Do is waiting for a slot with this ctx
	cancel()
	require.ErrorIs(t, result(t, blocked), context.Canceled)

	close(g.release)
	require.NoError(t, result(t, lead))
	require.NoError(t, result(t, queuedRes))
	assert.Equal(t, [][]int{{0}, {1}}, g.recorded())
	requireIdle(t, c)
}

func TestCancelQueuedWaiter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		cancel int // index among the queued items 1..3
		want   []int
	}{
		{"first", 1, []int{2, 3}},
		{"middle", 2, []int{1, 3}},
		{"last", 3, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGatedFlush()
			c := New(g.flush, Options{})
			lead := startBlocked(t, c, g)

			ctx, cancel := context.WithCancel(t.Context())
			results := map[int]<-chan error{}
			for v := 1; v <= 3; v++ {
				callCtx := t.Context()
				if v == tt.cancel {
					callCtx = ctx
				}
				results[v] = call(callCtx, c, v)
				requireQueued(t, c, v)
			}
			cancel()
			// Promptly: while the flush is still blocked.
			require.ErrorIs(t, result(t, results[tt.cancel]), context.Canceled)
			requireQueued(t, c, 2)

			close(g.release)
			require.NoError(t, result(t, lead))
			for _, v := range tt.want {
				require.NoError(t, result(t, results[v]))
			}
			assert.Equal(t, [][]int{{0}, tt.want}, g.recorded())
			requireIdle(t, c)
		})
	}
}

// TestCancelHandedLeader cancels the first queued caller just as the
// leader's flush returns, so it either leaves the queue by itself or is found
// with its ctx ended when the next batch is taken (which varies run to run,
// hence the loop). Either way its item is not sent, it returns ctx.Err(),
// and the callers behind it are flushed.
func TestCancelHandedLeader(t *testing.T) {
	t.Parallel()
	for range 200 {
		g := newGatedFlush()
		ctx, cancel := context.WithCancel(t.Context())
		g.result = func(_ context.Context, items []int) []error {
			if items[0] == 0 {
				cancel()
			}
			return nil
		}
		c := New(g.flush, Options{})
		lead := startBlocked(t, c, g)
		next := call(ctx, c, 1)
		requireQueued(t, c, 1)
		rest := []<-chan error{call(t.Context(), c, 2)}
		requireQueued(t, c, 2)
		rest = append(rest, call(t.Context(), c, 3))
		requireQueued(t, c, 3)
		close(g.release)

		require.NoError(t, result(t, lead))
		require.ErrorIs(t, result(t, next), context.Canceled)
		for _, res := range rest {
			require.NoError(t, result(t, res))
		}
		require.Equal(t, [][]int{{0}, {2, 3}}, g.recorded())
		requireIdle(t, c)
	}
}

// TestCancelTakenWaiter cancels a caller whose item is already in the
// in-flight batch: it returns promptly and its item is still flushed.
func TestCancelTakenWaiter(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	release := make(chan struct{})
	var flushed atomic.Int64
	flush := func(_ context.Context, items []int) []error {
		if items[0] == 1 {
			close(entered)
			<-release
		}
		flushed.Add(int64(len(items)))
		return nil
	}
	g := newGatedFlush()
	g.result = flush
	c := New(g.flush, Options{})
	lead := startBlocked(t, c, g)
	ctx, cancel := context.WithCancel(t.Context())
	first := call(t.Context(), c, 1)
	requireQueued(t, c, 1)
	taken := call(ctx, c, 2)
	requireQueued(t, c, 2)
	close(g.release)
	<-entered // batch {1, 2} is in flight

	cancel()
	require.ErrorIs(t, result(t, taken), context.Canceled)
	close(release)
	require.NoError(t, result(t, lead))
	require.NoError(t, result(t, first))
	assert.Equal(t, [][]int{{0}, {1, 2}}, g.recorded())
	assert.Equal(t, int64(3), flushed.Load())
	requireIdle(t, c)
}

type ctxKey struct{}

// TestLeaderCancelDoesNotCancelFlush: the leader returns as soon as its ctx
// ends, while its flush goes on with the leader's values but not its
// cancellation, and the callers queued behind it still get their results.
func TestLeaderCancelDoesNotCancelFlush(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	flushErr := make(chan error, 2)
	g.result = func(ctx context.Context, items []int) []error {
		// Runs after the leader's ctx was cancelled and it returned.
		if err := ctx.Err(); err != nil {
			flushErr <- err
			return Errors(len(items), err)
		}
		if items[0] == 0 && ctx.Value(ctxKey{}) != "leader" {
			flushErr <- errors.New("lost the leader's values")
		}
		flushErr <- nil
		return nil
	}
	c := New(g.flush, Options{})
	ctx, cancel := context.WithCancel(context.WithValue(t.Context(), ctxKey{}, "leader"))
	lead := call(ctx, c, 0)
	<-g.entered
	follower := call(t.Context(), c, 1)
	requireQueued(t, c, 1)
	cancel()
	// Promptly: while its flush is still blocked.
	require.ErrorIs(t, result(t, lead), context.Canceled)
	close(g.release)

	require.NoError(t, result(t, flushErr), "the leader's flush was not cancelled")
	require.NoError(t, result(t, follower))
	require.NoError(t, result(t, flushErr))
	assert.Equal(t, [][]int{{0}, {1}}, g.recorded())
	requireIdle(t, c)
}

// TestStuckFlushHonoursDeadlines: while a flush does not return (a paused
// Redis), every caller returns at its own deadline: the leader, a queued
// caller, and one blocked on MaxPending. Nothing is lost once it returns.
func TestStuckFlushHonoursDeadlines(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	c := New(g.flush, Options{MaxPending: 1})
	const timeout = 50 * time.Millisecond
	deadline := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		t.Cleanup(cancel)
		return ctx
	}
	lead := call(deadline(), c, 0)
	<-g.entered
	require.ErrorIs(t, result(t, lead), context.DeadlineExceeded, "leader")

	// A later caller with no deadline waits behind the stuck flush, and
	// fills MaxPending.
	patient := call(t.Context(), c, 1)
	requireQueued(t, c, 1)
	require.ErrorIs(t, c.Do(deadline(), 2), context.DeadlineExceeded, "blocked on MaxPending")
	// The same goroutine can try again: still bounded by its ctx.
	require.ErrorIs(t, c.Do(deadline(), 3), context.DeadlineExceeded, "retry")
	require.Empty(t, patient)

	close(g.release)
	require.NoError(t, result(t, patient))
	assert.Equal(t, [][]int{{0}, {1}}, g.recorded())
	requireIdle(t, c)
}

// TestLeaderGetsResultWhenFlushWins: a leader whose ctx is still live gets
// its own flush result, not ctx.Err().
func TestLeaderGetsResultWhenFlushWins(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	g.result = itemErrors
	c := New(g.flush, Options{})
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	lead := call(ctx, c, 7)
	<-g.entered
	close(g.release)
	require.EqualError(t, result(t, lead), itemError(7).Error())
	requireIdle(t, c)
}

func TestFlushPanic(t *testing.T) {
	t.Parallel()
	g := newGatedFlush()
	g.result = func(_ context.Context, items []int) []error {
		if items[0] == 1 {
			panic("boom")
		}
		return nil
	}
	c := New(g.flush, Options{})
	lead := startBlocked(t, c, g)
	var results []<-chan error
	for v := 1; v <= 3; v++ {
		results = append(results, call(t.Context(), c, v))
		requireQueued(t, c, v) // so that 1 heads the panicking batch
	}
	close(g.release)

	require.NoError(t, result(t, lead))
	for _, res := range results {
		require.EqualError(t, result(t, res), "batch: flush panicked: boom")
	}
	require.NoError(t, c.Do(t.Context(), 4), "later calls still work")
	require.EqualError(t, c.Do(t.Context(), 1), "batch: flush panicked: boom", "an idle leader too")
	requireIdle(t, c)
}

func TestFlushResultLength(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		errs    []error
		wantErr string
	}{
		{"nil means success", nil, ""},
		{"one per item", []error{errors.New("x")}, "x"},
		{"too few", []error{}, "batch: flush returned 0 results for 1 items"},
		{"too many", []error{nil, nil}, "batch: flush returned 2 results for 1 items"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := New(func(context.Context, []int) []error { return tt.errs }, Options{})
			err := c.Do(t.Context(), 1)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.wantErr)
		})
	}
}

func TestErrors(t *testing.T) {
	errX := errors.New("x")
	assert.Equal(t, []error{errX, errX, errX}, Errors(3, errX))
	assert.Empty(t, Errors(0, errX))
}

// TestSequentialOrder checks that one goroutine's calls are flushed in the
// order it made them while other goroutines keep the Coalescer busy.
func TestSequentialOrder(t *testing.T) {
	t.Parallel()
	const n, noise = 500, 8
	var mu sync.Mutex
	var order []int
	c := New(func(_ context.Context, items []int) []error {
		mu.Lock()
		defer mu.Unlock()
		for _, v := range items {
			if v >= 0 {
				order = append(order, v)
			}
		}
		return nil
	}, Options{MaxBatch: 4})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range noise {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_ = c.Do(t.Context(), -1)
				}
			}
		})
	}
	for v := range n {
		require.NoError(t, c.Do(t.Context(), v))
	}
	close(stop)
	wg.Wait()
	assert.Equal(t, seq(0, n-1), order)
	requireIdle(t, c)
}

// TestStress checks that every item is flushed exactly once and every caller
// gets its own result, under contention, with and without cancellations.
func TestStress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		cancelEvery int // cancel every nth call's ctx right away; 0: none
	}{
		{"no cancel", 0},
		{"cancels", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const goroutines, calls = 64, 2000
			flushed := make([]atomic.Int32, goroutines*calls)
			var flushes, items atomic.Int64
			c := New(func(_ context.Context, batch []int) []error {
				// Yield, as a round trip would, so that callers pile up.
				runtime.Gosched()
				flushes.Add(1)
				items.Add(int64(len(batch)))
				for _, v := range batch {
					flushed[v].Add(1)
				}
				return itemErrors(nil, batch)
			}, Options{MaxBatch: 16, MaxPending: 32})

			results := make([]error, goroutines*calls)
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for i := range calls {
						v := g*calls + i
						results[v] = doMaybeCancelled(t, c, v, tt.cancelEvery)
					}
				})
			}
			wg.Wait()

			for v, err := range results {
				switch {
				case errors.Is(err, context.Canceled):
					require.LessOrEqual(t, flushed[v].Load(), int32(1), "item %d", v)
				default:
					require.EqualError(t, err, itemError(v).Error())
					require.Equal(t, int32(1), flushed[v].Load(), "item %d", v)
				}
			}
			requireIdle(t, c)
			t.Logf("%d flushes, %.1f items/flush", flushes.Load(), float64(items.Load())/float64(flushes.Load()))
		})
	}
}

func doMaybeCancelled(t *testing.T, c *Coalescer[int], v, cancelEvery int) error {
	if cancelEvery == 0 || v%cancelEvery != 0 {
		return c.Do(t.Context(), v)
	}
	ctx, cancel := context.WithCancel(t.Context())
	res := make(chan error, 1)
	go func() { res <- c.Do(ctx, v) }()
	cancel()
	return <-res
}

// endedCtx reports Canceled from Err once ended is set while its Done
// channel stays open. A real select that finds both the handoff and Done
// ready picks either at random; this makes the handoff win deterministically.
type endedCtx struct {
	context.Context
	ended atomic.Bool
}

func (c *endedCtx) Err() error {
	if c.ended.Load() {
		return context.Canceled
	}
	return c.Context.Err()
}

// TestHandedLeadershipAfterCtxEnded: a queued caller whose ctx ended
// before its batch was taken is not sent, even if it has not noticed yet;
// the callers behind it are.
func TestHandedLeadershipAfterCtxEnded(t *testing.T) {
	t.Parallel()
	ctx := &endedCtx{Context: t.Context()}
	g := newGatedFlush()
	g.result = func(_ context.Context, items []int) []error {
		if items[0] == 0 {
			ctx.ended.Store(true)
		}
		return nil
	}
	c := New(g.flush, Options{})
	lead := startBlocked(t, c, g)
	next := call(ctx, c, 1)
	requireQueued(t, c, 1)
	rest := call(t.Context(), c, 2)
	requireQueued(t, c, 2)
	close(g.release)

	require.NoError(t, result(t, lead))
	require.ErrorIs(t, result(t, next), context.Canceled)
	require.NoError(t, result(t, rest))
	assert.Equal(t, [][]int{{0}, {2}}, g.recorded())
	requireIdle(t, c)
}

// TestCancelDuringFlush cancels callers while their batch is being written:
// each returns nil or ctx.Err(), and its item is flushed exactly once.
func TestCancelDuringFlush(t *testing.T) {
	t.Parallel()
	for range 200 {
		ctx, cancel := context.WithCancel(t.Context())
		var flushed [4]atomic.Int32
		g := newGatedFlush()
		g.result = func(_ context.Context, items []int) []error {
			for _, v := range items {
				flushed[v].Add(1)
			}
			if items[0] == 1 {
				cancel()
			}
			return nil
		}
		c := New(g.flush, Options{})
		lead := startBlocked(t, c, g)
		var results []<-chan error
		for v := 1; v <= 3; v++ {
			results = append(results, call(ctx, c, v))
			requireQueued(t, c, v)
		}
		close(g.release)

		require.NoError(t, result(t, lead))
		for _, res := range results {
			if err := result(t, res); err != nil {
				require.ErrorIs(t, err, context.Canceled)
			}
		}
		for v := range flushed {
			require.Equal(t, int32(1), flushed[v].Load(), "item %d", v)
		}
		requireIdle(t, c)
	}
}

// doneNotifier closes asked the first time Done is called, which tells a
// test that Do has started waiting on the ctx (Do checks only Err before).
type doneNotifier struct {
	context.Context
	once  sync.Once
	asked chan struct{}
}

func (c *doneNotifier) Done() <-chan struct{} {
	c.once.Do(func() { close(c.asked) })
	return c.Context.Done()
}
