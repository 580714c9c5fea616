// Package batch coalesces concurrent single-item calls into batched flushes,
// so that N goroutines publishing one message each cost about one Redis round
// trip per in-flight pipeline instead of N.
//
// # Flushes, no resident goroutine
//
// A [Coalescer] keeps no goroutine while it is idle, so its users need no
// Close. The caller of [Coalescer.Do] that finds no flush in progress starts
// one at once with its item: an idle call is sent immediately, with no timer
// or linger. Calls arriving while that flush is in flight queue their item
// and wait for their own result. Whoever finishes a flush delivers every
// result of its batch and, if items are queued, goes on with the next batch
// (oldest first), until the queue is empty; then the Coalescer is idle again.
//
// When the first caller's ctx can end (ctx.Done() != nil), the flushes run
// in a goroutine started for this busy period, and the caller waits for its
// result or its ctx, whichever comes first, like every other caller. When it
// cannot end, the caller flushes its item in its own goroutine (saving the
// goroutine start) and hands any backlog to a flusher goroutine. Either way no
// caller waits for more than the flush that carries its own item, so no
// caller's latency grows with the other callers' load, and a flush that
// hangs (a paused Redis) holds up no caller beyond its ctx.
//
// # Semantics
//
//   - Order: the items of one flush are in arrival order, and batches go out
//     one at a time, so the sequential calls of one goroutine keep their
//     order, even when an earlier call returned on its ctx before its flush
//     finished.
//   - Flush context: a batch is flushed with context.WithoutCancel of the ctx
//     of its first caller. It keeps that caller's values but not its
//     cancellation or deadline, because one caller's cancellation must not
//     fail the other callers' items; the Redis client's own timeouts bound
//     the flush.
//   - Cancellation: any caller whose ctx ends returns ctx.Err() promptly. If
//     its item was still queued it is never sent: either the caller removes
//     it, or the flusher finds the ctx ended when it takes the next batch and
//     skips it. If its item was already taken into a flush (always the case
//     for the caller that started the flush) it may still be written; the
//     caller returns the flush's result if it is already known, ctx.Err()
//     otherwise, and the flush goes on and delivers the other callers'
//     results.
//   - Ownership of items: Do copies the item into the batch, and the flush
//     may still read it after Do returned ctx.Err(). An item must therefore
//     not refer to anything its caller changes after Do returns (encode the
//     message, or fill its ID and time, before calling Do), and a FlushFunc
//     must not be required to write results into caller-owned structures:
//     a caller that left does not read them, and a caller that has not left
//     gets its result through the returned error. Anything a FlushFunc
//     writes into an item is visible to its caller only when Do returned
//     that item's flush result (not ctx.Err()).
//   - Bounded memory: at most MaxBatch items per flush and at most MaxPending
//     items queued behind the in-flight flush. Further callers block, honouring
//     their ctx, until a queued item leaves the queue. Callers that returned
//     early leave at most the one in-flight batch behind.
//   - Panics: a FlushFunc that panics does not deadlock or crash anyone. The
//     panic is recovered and every item of that batch gets the error
//     "batch: flush panicked: ...". Later calls work as before.
//   - Results: the FlushFunc returns one error per item, or nil when every
//     item succeeded. A slice of any other length fails every item of the
//     batch with an error saying so.
//
// A FlushFunc must not keep the items slice after it returns (the Coalescer
// reuses it for the next batch) and must not call Do on its own Coalescer
// (the call would queue behind the flush that is making it). Flushes never
// overlap, so a FlushFunc may keep unlocked state across flushes.
//
// # Cost
//
// A queued call allocates nothing in steady state: its waiter and result
// channel come from a sync.Pool. A busy period started by a caller whose ctx
// can end starts one goroutine (about half a microsecond and two small
// allocations, against tens of microseconds for a Redis round trip); one
// started with a ctx that cannot end costs nothing extra. A batch whose
// first caller's ctx is cancellable allocates one small context, plus
// whatever the FlushFunc allocates; returning nil for an all-successful
// batch avoids a result slice.
package batch
