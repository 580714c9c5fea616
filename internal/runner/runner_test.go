package runner

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redisbroker/broker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// feed starts a fetcher that pushes ints from src until Stopping closes.
func feed(r *Runner[int], src <-chan int) {
	r.Go(func() {
		for {
			if r.Acquire(1) == 0 {
				return
			}
			select {
			case v := <-src:
				r.Push(v)
			case <-r.Stopping():
				r.Release(1)
				return
			}
		}
	})
}

func TestConcurrencyIsBounded(t *testing.T) {
	for _, conc := range []int{1, 3, 8} {
		t.Run("", func(t *testing.T) {
			var running, peak, total atomic.Int64
			r := New(context.Background(), Options[int]{
				Concurrency: conc,
				Work: func(ctx context.Context, _ int) {
					n := running.Add(1)
					for {
						p := peak.Load()
						if n <= p || peak.CompareAndSwap(p, n) {
							break
						}
					}
					time.Sleep(time.Millisecond)
					running.Add(-1)
					total.Add(1)
				},
			})
			src := make(chan int)
			feed(r, src)
			for i := range 100 {
				src <- i
			}
			require.NoError(t, r.Shutdown(context.Background()))
			assert.Equal(t, int64(conc), peak.Load())
			// Every item pushed was either worked or handed to OnStop (nil here);
			// the unbuffered src means at most Prefetch items are not worked.
			assert.GreaterOrEqual(t, total.Load(), int64(100-DefaultPrefetch))
		})
	}
}

func TestPrefetchBoundsOutstandingItems(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int64
	r := New(context.Background(), Options[int]{
		Concurrency: 2,
		Prefetch:    5,
		Work: func(ctx context.Context, _ int) {
			started.Add(1)
			<-release
		},
	})
	got := r.Acquire(100)
	assert.Equal(t, 5, got, "Acquire takes at most the free slots")
	for i := range got {
		r.Push(i)
	}
	require.Eventually(t, func() bool { return started.Load() == 2 }, 2*time.Second, time.Millisecond)
	done := make(chan int)
	go func() { done <- r.Acquire(1) }()
	select {
	case <-done:
		t.Fatal("Acquire returned while every slot was held")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	assert.Equal(t, 1, <-done)
	r.Release(1)
	require.NoError(t, r.Shutdown(context.Background()))
}

func TestShutdownWaitsAndHandsBackUnstarted(t *testing.T) {
	inWork := make(chan struct{})
	finish := make(chan struct{})
	var finished atomic.Bool
	var unstarted []int
	var bgStopped atomic.Bool
	r := New(context.Background(), Options[int]{
		Concurrency: 1,
		Prefetch:    10,
		Work: func(ctx context.Context, v int) {
			close(inWork)
			<-finish
			finished.Store(true)
		},
		OnStop: func(ctx context.Context, items []int) {
			assert.False(t, bgStopped.Load(), "background loops outlive OnStop")
			assert.NoError(t, ctx.Err())
			unstarted = items
		},
	})
	r.GoBackground(func(stop <-chan struct{}) {
		<-stop
		bgStopped.Store(true)
	})
	n := r.Acquire(4)
	require.Equal(t, 4, n)
	for i := range n {
		r.Push(i)
	}
	<-inWork
	errc := make(chan error)
	go func() { errc <- r.Shutdown(context.Background()) }()
	select {
	case <-errc:
		t.Fatal("Shutdown returned while a handler was running")
	case <-time.After(20 * time.Millisecond):
	}
	close(finish)
	require.NoError(t, <-errc)
	assert.True(t, finished.Load())
	assert.True(t, bgStopped.Load())
	assert.Equal(t, []int{1, 2, 3}, unstarted, "unstarted items in push order")
	select {
	case <-r.Done():
	default:
		t.Fatal("Done not closed after Shutdown returned nil")
	}
}

func TestShutdownDeadlineCancelsWork(t *testing.T) {
	inWork := make(chan struct{})
	var sawCancel atomic.Bool
	r := New(context.Background(), Options[int]{
		Work: func(ctx context.Context, _ int) {
			close(inWork)
			<-ctx.Done()
			sawCancel.Store(true)
		},
	})
	r.Acquire(1)
	r.Push(1)
	<-inWork
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := r.Shutdown(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	<-r.Done()
	assert.True(t, sawCancel.Load())
	// A second Shutdown after the sequence completed returns nil.
	assert.NoError(t, r.Shutdown(context.Background()))
}

func TestCancelIsHardStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	inWork := make(chan struct{})
	r := New(ctx, Options[int]{
		Work: func(ctx context.Context, _ int) {
			close(inWork)
			<-ctx.Done()
		},
	})
	src := make(chan int, 1)
	feed(r, src)
	src <- 1
	<-inWork
	cancel()
	select {
	case <-r.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("runner did not stop after its context was cancelled")
	}
	select {
	case <-r.Stopping():
	default:
		t.Fatal("Stopping not closed")
	}
}

func TestConcurrentShutdown(t *testing.T) {
	r := New(context.Background(), Options[int]{Work: func(context.Context, int) {}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { assert.NoError(t, r.Shutdown(context.Background())) })
	}
	wg.Wait()
}

func TestCallRecoversPanic(t *testing.T) {
	h := broker.HandlerFunc(func(context.Context, *broker.Message) error { panic("boom") })
	err := Call(context.Background(), h, &broker.Message{})
	require.ErrorIs(t, err, broker.ErrPanic)
	var pe *PanicError
	require.True(t, errors.As(err, &pe))
	assert.Equal(t, "boom", pe.Value)
	assert.Contains(t, string(pe.Stack), "runner.TestCallRecoversPanic")
	assert.Equal(t, "broker: handler panicked: boom", err.Error())

	want := errors.New("plain")
	ok := broker.HandlerFunc(func(context.Context, *broker.Message) error { return want })
	assert.Equal(t, want, Call(context.Background(), ok, &broker.Message{}))
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	tests := []struct {
		n        int
		lo, high time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{5, 500 * time.Millisecond, time.Second},
		{50, 500 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			d := b.Delay(tt.n)
			assert.GreaterOrEqual(t, d, tt.lo, "n=%d", tt.n)
			assert.LessOrEqual(t, d, tt.high, "n=%d", tt.n)
		}
	}
	assert.Zero(t, Backoff{}.Delay(3))
}

func TestSleep(t *testing.T) {
	assert.True(t, Sleep(nil, time.Millisecond))
	stop := make(chan struct{})
	close(stop)
	assert.False(t, Sleep(stop, time.Hour))
}

// TestGoRacingStop starts fetchers and background loops while the hard stop
// is under way (a Subscribe ctx cancelled between New and Go): each one
// either does not run or runs before Done closes, and -race sees no
// WaitGroup misuse.
func TestGoRacingStop(t *testing.T) {
	for range 300 {
		ctx, cancel := context.WithCancel(context.Background())
		r := New(ctx, Options[int]{Work: func(context.Context, int) {}})
		var afterDone, running atomic.Int64
		fn := func() {
			running.Add(1)
			defer running.Add(-1)
			select {
			case <-r.Done():
				afterDone.Add(1)
			default:
			}
			<-r.Stopping()
		}
		go cancel()
		for range 4 {
			r.Go(fn)
			r.GoBackground(func(stop <-chan struct{}) {
				fn()
				<-stop
			})
		}
		<-r.Done()
		require.Zero(t, running.Load(), "a goroutine outlived Done")
		require.Zero(t, afterDone.Load(), "a goroutine ran after Done")
	}
}

// TestGoAfterDoneDoesNotRun: once Done is closed nothing can wait for a new
// goroutine, so Go and GoBackground start none.
func TestGoAfterDoneDoesNotRun(t *testing.T) {
	r := New(context.Background(), Options[int]{Work: func(context.Context, int) {}})
	require.NoError(t, r.Shutdown(context.Background()))
	hold := make(chan struct{})
	defer close(hold)
	before := goleak.IgnoreCurrent()
	r.Go(func() { <-hold })
	r.GoBackground(func(<-chan struct{}) { <-hold })
	goleak.VerifyNone(t, before)
}

// TestOptionsGoroutinesAlwaysRun: fetchers and background loops listed in
// Options run even when the ctx is cancelled before New returns.
func TestOptionsGoroutinesAlwaysRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var fetched, background atomic.Bool
	r := New(ctx, Options[int]{
		Work:       func(context.Context, int) {},
		Fetchers:   []func(){func() { fetched.Store(true) }},
		Background: []func(<-chan struct{}){func(stop <-chan struct{}) { <-stop; background.Store(true) }},
	})
	<-r.Done()
	assert.True(t, fetched.Load())
	assert.True(t, background.Load())
}

// syncBuffer is a bytes.Buffer safe for a logger used from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestWorkPanicIsRecovered(t *testing.T) {
	var logs syncBuffer
	var worked []int
	var mu sync.Mutex
	r := New(context.Background(), Options[int]{
		Concurrency: 1,
		Prefetch:    3,
		Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
		Work: func(_ context.Context, v int) {
			if v == 1 {
				panic("boom")
			}
			mu.Lock()
			worked = append(worked, v)
			mu.Unlock()
		},
	})
	require.Equal(t, 3, r.Acquire(3))
	for v := range 3 {
		r.Push(v)
	}
	// Every slot comes back, the panicking item's included.
	require.Equal(t, 1, r.Acquire(1))
	require.Equal(t, 1, r.Acquire(1))
	require.Equal(t, 1, r.Acquire(1))
	r.Release(3)
	require.NoError(t, r.Shutdown(context.Background()))
	assert.Equal(t, []int{0, 2}, worked)
	assert.Contains(t, logs.String(), "runner: work panicked")
	assert.Contains(t, logs.String(), "boom")
}

func TestOnStopPanicStillClosesDone(t *testing.T) {
	var logs syncBuffer
	r := New(context.Background(), Options[int]{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Work:   func(context.Context, int) {},
		OnStop: func(context.Context, []int) { panic("cleanup") },
	})
	require.NoError(t, r.Shutdown(context.Background()))
	assert.Contains(t, logs.String(), "runner: OnStop panicked")
}

// holdStopping keeps Stopping open until the returned func is called, even
// after the work context was cancelled, which reproduces the window in
// which the hard stop's AfterFunc has not closed Stopping yet.
func holdStopping(r *Runner[int]) (release func()) {
	gate := make(chan struct{})
	entered := make(chan struct{})
	go r.stopOnce.Do(func() {
		close(entered)
		<-gate
		close(r.stopping)
	})
	<-entered
	return func() { close(gate) }
}

// TestHardStopStartsNoNewItem: once the work context is cancelled, a worker
// starts no item, even while Stopping is not closed yet; the items are
// handed to OnStop as unstarted.
func TestHardStopStartsNoNewItem(t *testing.T) {
	tests := []struct {
		name string
		busy bool // the worker is in Work (else waiting for an item) at the hard stop
	}{
		{"busy worker", true},
		{"idle worker", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			inWork := make(chan struct{})
			lateStart := make(chan int, 8)
			unstarted := make(chan []int, 1)
			r := New(ctx, Options[int]{
				Concurrency: 1,
				Prefetch:    8,
				Work: func(ctx context.Context, v int) {
					if v == 0 {
						close(inWork)
						<-ctx.Done()
						return
					}
					if ctx.Err() != nil {
						lateStart <- v
					}
				},
				OnStop: func(_ context.Context, items []int) { unstarted <- items },
			})
			release := holdStopping(r)
			want := []int{1, 2, 3}
			if tt.busy {
				require.Equal(t, 4, r.Acquire(4))
				for v := range 4 {
					r.Push(v)
				}
				<-inWork
				cancel()
			} else {
				cancel()
				// Stopping is still open: the fetcher may push, and the
				// idle worker receives the item after the hard stop.
				require.Equal(t, 1, r.Acquire(1))
				r.Push(7)
				want = []int{7}
			}
			workersDone := make(chan struct{})
			go func() {
				r.workers.Wait()
				close(workersDone)
			}()
			select {
			case v := <-lateStart:
				t.Fatalf("item %d started after the hard stop", v)
			case <-workersDone:
			}
			release()
			<-r.Done()
			assert.Equal(t, want, <-unstarted)
		})
	}
}

// TestShutdownAfterDoneReturnsNil: a finished Runner reports success even
// to a Shutdown whose ctx has already ended.
func TestShutdownAfterDoneReturnsNil(t *testing.T) {
	r := New(context.Background(), Options[int]{Work: func(context.Context, int) {}})
	require.NoError(t, r.Shutdown(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 {
		require.NoError(t, r.Shutdown(ctx))
	}
}

// TestOnStopContextIsBounded: OnStop's ctx survives the hard stop but ends
// after StopTimeout, so an OnStop that waits on it cannot hold Done open.
func TestOnStopContextIsBounded(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var alive atomic.Bool
		r := New(ctx, Options[int]{
			StopTimeout: 20 * time.Millisecond,
			Work:        func(context.Context, int) {},
			OnStop: func(ctx context.Context, _ []int) {
				alive.Store(ctx.Err() == nil) // after the hard stop
				<-ctx.Done()                  // a cleanup stuck until its deadline
			},
		})
		cancel()
		select {
		case <-r.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Done not closed after StopTimeout")
		}
		assert.True(t, alive.Load(), "the hard stop cancelled OnStop's ctx")
	})
	t.Run("default", func(t *testing.T) {
		var deadline time.Time
		start := time.Now()
		r := New(context.Background(), Options[int]{
			Work:   func(context.Context, int) {},
			OnStop: func(ctx context.Context, _ []int) { deadline, _ = ctx.Deadline() },
		})
		require.NoError(t, r.Shutdown(context.Background()))
		assert.WithinDuration(t, start.Add(DefaultStopTimeout), deadline, 5*time.Second)
	})
}
