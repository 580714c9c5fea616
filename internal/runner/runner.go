// Package runner is the consume loop every pattern package shares.
//
// A Runner owns every goroutine of one subscription:
//
//   - fetchers (started with Go, or listed in Options.Fetchers) pull messages
//     from Redis while Stopping is open and hand them over with Push, after
//     reserving room with Acquire;
//   - Concurrency workers take pushed items in order and call the work
//     function, so handler concurrency is bounded;
//   - background loops (started with GoBackground, or listed in
//     Options.Background: heartbeats, ack flushers) keep running until the
//     stop sequence has finished, so a lease stays alive while in-flight
//     handlers drain.
//
// Memory is bounded by Prefetch: an item holds its slot from Acquire until
// its work function returns, so at most Prefetch items are buffered or in
// flight at any time, whatever the backlog in Redis.
//
// Stopping follows net/http: Shutdown (or cancelling the Subscribe context)
// closes Stopping; fetchers return; workers finish the item they hold and
// start no new one; then OnStop receives the items that were fetched but
// never started, so the package can hand them back to Redis; then the
// background loops are stopped and Done is closed. If Shutdown's context ends
// first, the work context is cancelled (the hard stop) and Shutdown returns
// ctx.Err() while the sequence completes in the background. Once the work
// context is cancelled no worker starts another item: what is left is handed
// to OnStop as unstarted.
//
// Go and GoBackground may race with a stop (a Subscribe ctx cancelled while
// the package is still starting its loops): a goroutine they start before
// Done is closed is waited for before Done closes, even when the stop
// sequence is already past the phase it belongs to; once Done is closed they
// start nothing. Code that must run whatever happens (closing a connection)
// belongs in OnStop, or in Options.Fetchers and Options.Background, which New
// starts before the Runner can begin stopping.
//
// A panic in the work function is recovered and logged, and the worker goes
// on with its next item; a panic in OnStop is recovered and logged too, so
// Done still closes. OnStop's context carries a deadline (StopTimeout), so a
// cleanup that cannot reach Redis cannot hold Done open forever.
package runner

import (
	"cmp"
	"context"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultConcurrency = 1
	DefaultPrefetch    = 64
	// DefaultStopTimeout is the default for Options.StopTimeout.
	DefaultStopTimeout = 10 * time.Second
)

// Options configure a Runner.
type Options[T any] struct {
	// Concurrency is the number of workers. Default: DefaultConcurrency.
	Concurrency int
	// Prefetch bounds items fetched but not finished (buffered plus in
	// flight). It is raised to Concurrency when smaller. Default:
	// max(DefaultPrefetch, Concurrency).
	Prefetch int
	// Work processes one item. Its context is cancelled on the hard stop. A
	// panic is recovered and logged; the item's slot is given back.
	Work func(ctx context.Context, item T)
	// OnStop runs once after fetchers and workers have returned and before
	// background loops stop. It receives the items pushed but never started,
	// in push order. Its context is not cancelled by the hard stop (cleanup
	// must still reach Redis) but ends after StopTimeout, and OnStop must
	// return once it has ended, so that Done closes.
	OnStop func(ctx context.Context, unstarted []T)
	// StopTimeout bounds OnStop's context. Default: DefaultStopTimeout (10s).
	StopTimeout time.Duration
	// Fetchers are started by New as if with Go, before the Runner can
	// begin stopping, so each of them always runs. They start before New
	// returns: they must not read the Runner from the variable New's
	// result is assigned to.
	Fetchers []func()
	// Background loops are started by New as if with GoBackground, before
	// the Runner can begin stopping, so each of them always runs. The same
	// caveat as for Fetchers applies.
	Background []func(stop <-chan struct{})
	// Logger receives recovered panics. Default: discard.
	Logger *slog.Logger
}

// Phases of the stop sequence, guarded by Runner.mu. Each tells Go and
// GoBackground which WaitGroup a new goroutine joins, so that no Add can race
// with the Wait of a phase already under way.
const (
	phaseRunning        = iota // fetchers and background loops join their groups
	phaseFetchersDone          // finish waits for fetchers: new fetchers are late
	phaseBackgroundDone        // finish waits for background loops: all are late
	phaseDone                  // finish waits for the late ones: nothing starts
)

type entry[T any] struct {
	item T
	seq  uint64 // push order, to hand back unstarted items in that order
}

// Runner runs one subscription's goroutines. Create it with New.
type Runner[T any] struct {
	work        func(context.Context, T)
	onStop      func(context.Context, []T)
	stopTimeout time.Duration
	log         *slog.Logger

	ctx      context.Context // work context: the hard stop cancels it
	cancel   context.CancelFunc
	cleanup  context.Context // for OnStop: keeps values, not cancelled by the hard stop
	stopping chan struct{}
	stopOnce sync.Once

	slots chan struct{} // one token per item held between Acquire and the end of Work
	queue chan entry[T] // pushed, not started; cap == Prefetch so Push never blocks
	seq   atomic.Uint64 // last push number

	mu    sync.Mutex // guards phase, back, and the Adds of the groups below
	phase int        // of the stop sequence
	back  []entry[T] // taken by a worker after the hard stop, not started

	bgStop     chan struct{}
	fetchers   sync.WaitGroup
	workers    sync.WaitGroup
	background sync.WaitGroup
	late       sync.WaitGroup // started after their own phase was waited for
	done       chan struct{}
}

// New starts a Runner's workers, and the fetchers and background loops of
// o. Cancelling ctx is the hard stop.
func New[T any](ctx context.Context, o Options[T]) *Runner[T] {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Prefetch <= 0 {
		o.Prefetch = DefaultPrefetch
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Prefetch = max(o.Prefetch, o.Concurrency)
	wctx, cancel := context.WithCancel(ctx)
	r := &Runner[T]{
		work:        o.Work,
		onStop:      o.OnStop,
		stopTimeout: o.StopTimeout,
		log:         o.Logger,
		ctx:         wctx,
		cancel:      cancel,
		cleanup:     context.WithoutCancel(ctx),
		stopping:    make(chan struct{}),
		slots:       make(chan struct{}, o.Prefetch),
		queue:       make(chan entry[T], o.Prefetch),
		bgStop:      make(chan struct{}),
		done:        make(chan struct{}),
	}
	for range o.Prefetch {
		r.slots <- struct{}{}
	}
	r.workers.Add(o.Concurrency)
	for range o.Concurrency {
		go r.worker()
	}
	// Started before the hard stop is wired up, so they are never late.
	for _, fn := range o.Fetchers {
		r.Go(fn)
	}
	for _, fn := range o.Background {
		r.GoBackground(fn)
	}
	// The hard stop also stops fetching.
	stopOnCancel := context.AfterFunc(wctx, r.stop)
	go func() {
		r.finish()
		stopOnCancel()
	}()
	return r
}

// Context returns the work context, cancelled on the hard stop. Fetchers use
// it for their Redis calls.
func (r *Runner[T]) Context() context.Context { return r.ctx }

// Stopping is closed when fetching must end.
func (r *Runner[T]) Stopping() <-chan struct{} { return r.stopping }

// Done is closed once every goroutine of the Runner has returned.
func (r *Runner[T]) Done() <-chan struct{} { return r.done }

// Go starts a fetcher. It must return soon after Stopping is closed; the
// stop sequence waits for it before collecting unstarted items. Called while
// the Runner is stopping, fn still runs (and sees Stopping closed) and is
// waited for before Done closes; called after Done is closed, it does not
// run.
func (r *Runner[T]) Go(fn func()) {
	r.spawn(false, fn)
}

// GoBackground starts a loop that runs until stop is closed, which happens
// after OnStop has returned. Called after that, fn gets a closed stop and is
// still waited for before Done closes; called after Done is closed, it does
// not run.
func (r *Runner[T]) GoBackground(fn func(stop <-chan struct{})) {
	r.spawn(true, func() { fn(r.bgStop) })
}

func (r *Runner[T]) spawn(background bool, fn func()) {
	r.mu.Lock()
	var wg *sync.WaitGroup
	switch {
	case r.phase == phaseRunning && !background:
		wg = &r.fetchers
	case r.phase <= phaseFetchersDone && background:
		wg = &r.background
	case r.phase < phaseDone:
		wg = &r.late
	default:
		r.mu.Unlock()
		return
	}
	// Under mu: finish moves to the next phase under mu before it Waits, so
	// this Add happens before that Wait or joins a later group.
	wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer wg.Done()
		fn()
	}()
}

// Acquire reserves room for up to n items: it blocks until at least one slot
// is free, then takes up to n without blocking. It returns 0 once Stopping is
// closed. Each reserved slot must be used by Push or given back by Release.
func (r *Runner[T]) Acquire(n int) int {
	if n <= 0 {
		return 0
	}
	// Checked first: a select between a free slot and a closed Stopping picks
	// at random, and a fetcher must not start another blocking fetch once
	// Shutdown began.
	select {
	case <-r.stopping:
		return 0
	default:
	}
	select {
	case <-r.slots:
	case <-r.stopping:
		return 0
	}
	got := 1
	for got < n {
		select {
		case <-r.slots:
			got++
		default:
			return got
		}
	}
	return got
}

// Release gives back n slots reserved by Acquire but not pushed.
func (r *Runner[T]) Release(n int) {
	for range n {
		r.slots <- struct{}{}
	}
}

// Push hands an item to the workers, using one slot reserved by Acquire. It
// never blocks. Items pushed after Stopping closed are returned by OnStop
// unless a worker already took them.
func (r *Runner[T]) Push(item T) {
	r.queue <- entry[T]{item: item, seq: r.seq.Add(1)}
}

// Shutdown stops fetching and waits for the stop sequence. If ctx ends first
// it cancels the work context and returns ctx.Err(). It is safe to call more
// than once and concurrently; once the sequence has completed it returns nil
// at once, whatever ctx.
func (r *Runner[T]) Shutdown(ctx context.Context) error {
	r.stop()
	// Checked first: a select between a closed done and an ended ctx picks
	// at random.
	select {
	case <-r.done:
		return nil
	default:
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		select {
		case <-r.done:
			return nil
		default:
		}
		r.cancel()
		return ctx.Err()
	}
}

func (r *Runner[T]) stop() { r.stopOnce.Do(func() { close(r.stopping) }) }

func (r *Runner[T]) worker() {
	defer r.workers.Done()
	for {
		// Checked first so that a closed Stopping or an ended work context
		// wins over a ready item: unstarted items go back to Redis instead
		// of being started late.
		select {
		case <-r.stopping:
			return
		default:
		}
		if r.ctx.Err() != nil {
			return
		}
		select {
		case <-r.stopping:
			return
		case e := <-r.queue:
			if r.ctx.Err() != nil {
				// The hard stop came (Stopping closes just after, from an
				// AfterFunc): hand the item back instead of starting it.
				r.mu.Lock()
				r.back = append(r.back, e)
				r.mu.Unlock()
				r.slots <- struct{}{}
				return
			}
			r.run(e.item)
			r.slots <- struct{}{}
		}
	}
}

// run calls the work function, recovering a panic so that the worker and
// the item's slot survive it.
func (r *Runner[T]) run(item T) {
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("runner: work panicked", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	r.work(r.ctx, item)
}

// setPhase moves the stop sequence on, under mu, before finish waits for the
// group that phase closes.
func (r *Runner[T]) setPhase(p int) {
	r.mu.Lock()
	r.phase = p
	r.mu.Unlock()
}

// finish runs the stop sequence once Stopping is closed.
func (r *Runner[T]) finish() {
	<-r.stopping
	r.setPhase(phaseFetchersDone)
	r.fetchers.Wait()
	r.workers.Wait()
	r.mu.Lock()
	unstarted := r.back
	r.back = nil
	r.mu.Unlock()
	for {
		select {
		case e := <-r.queue:
			unstarted = append(unstarted, e)
			continue
		default:
		}
		break
	}
	r.stopWork(unstarted)
	close(r.bgStop)
	r.setPhase(phaseBackgroundDone)
	r.background.Wait()
	r.setPhase(phaseDone)
	r.late.Wait()
	r.cancel()
	close(r.done)
}

// stopWork calls OnStop with the unstarted items in push order, under a
// bounded context, recovering a panic so that Done still closes.
func (r *Runner[T]) stopWork(unstarted []entry[T]) {
	if r.onStop == nil {
		return
	}
	slices.SortFunc(unstarted, func(a, b entry[T]) int { return cmp.Compare(a.seq, b.seq) })
	var items []T
	if len(unstarted) > 0 {
		items = make([]T, len(unstarted))
		for i, e := range unstarted {
			items[i] = e.item
		}
	}
	ctx, cancel := context.WithTimeout(r.cleanup, r.stopTimeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("runner: OnStop panicked", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	r.onStop(ctx, items)
}
