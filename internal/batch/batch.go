package batch

import (
	"context"
	"fmt"
	"sync"
)

const (
	// DefaultMaxBatch is the default for Options.MaxBatch.
	DefaultMaxBatch = 1024
	// DefaultMaxPending is the default for Options.MaxPending.
	DefaultMaxPending = 8192
)

// FlushFunc writes a batch in one round trip and returns one error per item
// (same length as items), or nil when every item succeeded. To fail the whole
// batch with one error, return [Errors](len(items), err). It must not keep
// items after it returns.
type FlushFunc[T any] func(ctx context.Context, items []T) []error

// Options bounds a Coalescer. Zero or negative fields take their defaults.
type Options struct {
	// MaxBatch is the most items per flush. Default: 1024 (DefaultMaxBatch).
	MaxBatch int
	// MaxPending is the most items queued behind the in-flight flush before
	// callers block. Default: 8192 (DefaultMaxPending).
	MaxPending int
}

// Errors returns a slice of n copies of err (helper for FlushFunc
// implementations that fail a whole batch at once).
func Errors(n int, err error) []error {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// Waiter states, guarded by Coalescer.mu. They tell a cancelled waiter what
// it still owns: a queued item, or nothing.
const (
	stateQueued  = iota // in c.queue, not yet sent
	stateTaken          // in a batch; its result is or will be in res
	stateDropped        // its ctx ended before it was taken; ctx.Err() is in res
)

type waiter[T any] struct {
	item T
	// ctx is the caller's: the flusher checks it before sending the item
	// and uses its values (not its cancellation) for the flush.
	ctx context.Context
	// res has capacity 1 and receives exactly one value per use of the
	// waiter, so senders never block (they may hold c.mu while sending).
	res   chan error
	state int
}

// Coalescer batches concurrent Do calls into flushes. See the package doc
// for the semantics. The zero value is not usable; call New.
type Coalescer[T any] struct {
	flush      FlushFunc[T]
	maxBatch   int
	maxPending int

	// sem holds one token per queued item (plus callers about to queue), so
	// callers block on it with their ctx once MaxPending is reached.
	sem chan struct{}
	// waiters recycles waiter structs and their channels, so a queued Do
	// allocates nothing in steady state.
	waiters sync.Pool

	mu sync.Mutex
	// busy is true while a flush is in progress or about to start (a
	// caller flushing inline, or a flusher goroutine).
	// Invariant: !busy implies queue is empty.
	busy  bool
	queue fifo[T]

	// Scratch of the single current flusher, reused across flushes. Only the
	// flusher touches them outside mu; the role changes hands under mu.
	items []T
	batch []*waiter[T]
}

// New returns a Coalescer that writes batches with flush.
func New[T any](flush FlushFunc[T], opt Options) *Coalescer[T] {
	if opt.MaxBatch <= 0 {
		opt.MaxBatch = DefaultMaxBatch
	}
	if opt.MaxPending <= 0 {
		opt.MaxPending = DefaultMaxPending
	}
	c := &Coalescer[T]{
		flush:      flush,
		maxBatch:   opt.MaxBatch,
		maxPending: opt.MaxPending,
		sem:        make(chan struct{}, opt.MaxPending),
	}
	c.waiters.New = func() any { return &waiter[T]{res: make(chan error, 1)} }
	return c
}

// Do submits one item and waits for its result, or until ctx ends: then it
// returns ctx.Err() and the item may or may not be written (see the package
// doc). Safe for concurrent use. A call whose ctx is already done returns
// ctx.Err() without sending item.
func (c *Coalescer[T]) Do(ctx context.Context, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	if !c.busy {
		c.busy = true
		return c.leadLocked(ctx, item)
	}
	select {
	case c.sem <- struct{}{}:
	default:
		// MaxPending reached: wait for a slot without holding mu.
		c.mu.Unlock()
		if err := c.acquire(ctx); err != nil {
			return err
		}
		c.mu.Lock()
		if !c.busy {
			// The backlog drained while we waited: lead instead of queueing.
			<-c.sem
			c.busy = true
			return c.leadLocked(ctx, item)
		}
	}
	w := c.get(ctx, item)
	w.state = stateQueued
	c.queue.push(w)
	c.mu.Unlock()
	return c.wait(ctx, w)
}

func (c *Coalescer[T]) acquire(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// leadLocked starts a flush of item while the Coalescer was idle (so the
// queue is empty). It is called with mu held and busy set by this caller,
// and returns with mu released.
func (c *Coalescer[T]) leadLocked(ctx context.Context, item T) error {
	if ctx.Done() == nil {
		// A ctx that never ends cannot make the caller leave early, so
		// flush in this goroutine and save starting one.
		c.items = append(c.items[:0], item)
		c.batch = c.batch[:0]
		c.mu.Unlock()
		err := errAt(c.flushSafe(ctx, c.items), 0)
		clear(c.items) // don't retain the callers' items until the next flush
		c.mu.Lock()
		c.continueLocked()
		return err
	}
	// The flush runs in its own goroutine, so that this caller can return
	// on its ctx while the flush goes on.
	w := c.get(ctx, item)
	w.state = stateTaken
	c.items = append(c.items[:0], item)
	c.batch = append(c.batch[:0], w)
	c.mu.Unlock()
	go c.flushLoop()
	return c.wait(ctx, w)
}

// continueLocked is called by the flusher after a flush, with mu held: it
// hands the backlog to a flusher goroutine, or marks the Coalescer idle. It
// returns with mu released.
func (c *Coalescer[T]) continueLocked() {
	if !c.takeLocked() {
		c.busy = false
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	go c.flushLoop()
}

// flushLoop flushes the prepared batch, delivers its results, and goes on
// with the queue until it is empty. At most one runs at a time (busy), and
// it exits when the Coalescer is idle, so it needs no Close.
func (c *Coalescer[T]) flushLoop() {
	for {
		errs := c.flushSafe(flushContext(c.batch[0].ctx), c.items)
		for i, w := range c.batch {
			// w may be recycled by its caller as soon as it has its result.
			w.res <- errAt(errs, i)
		}
		clear(c.items)
		clear(c.batch)
		c.mu.Lock()
		if !c.takeLocked() {
			c.busy = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
}

// wait blocks until w gets its result or ctx ends.
func (c *Coalescer[T]) wait(ctx context.Context, w *waiter[T]) error {
	select {
	case err := <-w.res:
		c.release(w)
		return err
	case <-ctx.Done():
		return c.cancel(ctx, w)
	}
}

// cancel settles a waiter whose ctx ended, according to what it still owns.
func (c *Coalescer[T]) cancel(ctx context.Context, w *waiter[T]) error {
	c.mu.Lock()
	switch w.state {
	case stateQueued:
		c.queue.remove(w)
		<-c.sem
		c.mu.Unlock()
		c.release(w)
		return ctx.Err()
	case stateDropped:
		err := <-w.res // takeLocked sent it under mu with the state
		c.mu.Unlock()
		c.release(w)
		return err
	}
	c.mu.Unlock()
	// Taken: the item is or was being written.
	select {
	case err := <-w.res:
		c.release(w)
		return err
	default:
		// The flusher will still send into res (capacity 1, never blocks);
		// w is abandoned to the GC rather than recycled with a stale result.
		return ctx.Err()
	}
}

// errAt reads a flushSafe result, where nil means every item succeeded.
func errAt(errs []error, i int) error {
	if errs == nil {
		return nil
	}
	return errs[i]
}

// takeLocked moves queued waiters into a new batch, oldest first, and
// reports whether it took any. A waiter whose ctx has ended is not sent: it
// gets ctx.Err() instead, as if it had left the queue by itself.
func (c *Coalescer[T]) takeLocked() bool {
	c.items = c.items[:0]
	c.batch = c.batch[:0]
	for len(c.items) < c.maxBatch {
		w, ok := c.queue.pop()
		if !ok {
			break
		}
		<-c.sem
		if err := w.ctx.Err(); err != nil {
			w.state = stateDropped
			w.res <- err
			continue
		}
		w.state = stateTaken
		c.items = append(c.items, w.item)
		c.batch = append(c.batch, w)
	}
	return len(c.batch) > 0
}

// flushSafe calls the FlushFunc and returns nil (all succeeded) or exactly
// len(items) errors, turning a panic or a wrong-length result into an error
// for every item so that no waiter is left without a result.
func (c *Coalescer[T]) flushSafe(ctx context.Context, items []T) (errs []error) {
	defer func() {
		if r := recover(); r != nil {
			errs = Errors(len(items), fmt.Errorf("batch: flush panicked: %v", r))
		}
	}()
	errs = c.flush(ctx, items)
	if errs == nil || len(errs) == len(items) {
		return errs
	}
	return Errors(len(items), fmt.Errorf("batch: flush returned %d results for %d items", len(errs), len(items)))
}

func (c *Coalescer[T]) get(ctx context.Context, item T) *waiter[T] {
	w := c.waiters.Get().(*waiter[T])
	w.item = item
	w.ctx = ctx
	return w
}

func (c *Coalescer[T]) release(w *waiter[T]) {
	var zero T
	w.item = zero
	w.ctx = nil
	c.waiters.Put(w)
}

// flushContext detaches the flush from the caller's cancellation. A ctx that
// can never be cancelled is used as is, which saves an allocation per flush.
func flushContext(ctx context.Context) context.Context {
	if ctx.Done() == nil {
		return ctx
	}
	return context.WithoutCancel(ctx)
}
