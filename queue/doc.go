// Package queue implements work queues on Redis lists: producers push to the
// tail of a list, competing consumers take from its head, and each message is
// handled by one consumer.
//
// There are two consumer modes. Reliable mode (the default) is at least once:
// a message lives in Redis until its handler succeeded, survives consumer
// crashes, and is retried with backoff, then dead-lettered. Simple mode
// (WithSimple) is at most once: a popped message lives only in the consumer's
// memory, and is lost if that consumer dies.
//
// # Guarantees
//
//	|                               | simple (WithSimple)        | reliable (default)                        |
//	|-------------------------------|----------------------------|-------------------------------------------|
//	| delivery                      | at most once               | at least once                             |
//	| consumers                     | compete                    | compete                                   |
//	| consumer crash (kill -9)      | its popped messages lost   | returned to the head of the queue by a    |
//	|                               |                            | live consumer once the lease expires      |
//	| handler error or panic        | logged, message dropped    | retried after a backoff, dead after       |
//	|                               |                            | MaxAttempts deliveries                    |
//	| ErrDiscard                    | dropped                    | dead letter at once                       |
//	| malformed or oversize value   | dead letter                | dead letter                               |
//	| Shutdown                      | unstarted messages pushed  | unstarted messages back to the head,      |
//	|                               | back to the head           | in order; consumer deregistered           |
//	| delayed (PublishIn/PublishAt) | yes                        | yes                                       |
//	| order                         | FIFO dispatch              | FIFO dispatch; retries and recovery       |
//	|                               |                            | reorder                                   |
//
// FIFO dispatch means messages start in publish order; with concurrency above
// one they may finish in any order. LPUSH + BLPOP would be a stack: this
// package always pushes to the tail (RPUSH) and pops the head.
//
// Simple mode loses messages in these cases, and the docs mean it: a consumer
// process that dies holds up to Prefetch popped messages; a blocking pop whose
// reply is lost on a broken connection loses that value (Redis popped it, the
// reply never arrived); a handler error drops the message. Use it for work
// that is cheap to lose and where speed matters.
//
// Reliable mode can deliver a message more than once: after a consumer crash
// (everything it held is redelivered, including messages it had finished but
// not yet acknowledged), after an acknowledgement that could not be written
// (Redis down at that moment), and after a client retry of a publish whose
// reply was lost. Every message has a unique ID: make handlers idempotent or
// deduplicate on it.
//
// Durability is Redis's: an acknowledged publish is in memory; use AOF with
// appendfsync always to survive a Redis crash, and maxmemory-policy
// noeviction so queue keys are never evicted.
//
// # Keys
//
// The topic itself is the list of ready messages, so other clients can
// produce (RPUSH topic value) and consume (LPOP topic) with plain commands.
// Every other key of a topic shares its hash tag, which keeps every script
// legal on Redis Cluster:
//
//	orders                          LIST  ready messages (tail: newest)
//	{orders}:processing:<consumer>  LIST  held by one reliable consumer: fetched, not yet settled
//	{orders}:delayed                ZSET  retries and PublishIn/At, scored by due time (unix ms)
//	{orders}:dead                   LIST  dead-letter records, oldest first
//	{orders}:consumers              ZSET  reliable consumers, scored by last heartbeat (unix ms)
//	{orders}:concurrency            HASH  reliable consumer -> its handler concurrency
//
// A topic that contains braces ("a{b}c") has its own hash tag and then fails
// with CROSSSLOT on Redis Cluster; it works on a single server.
//
// Values are the envelope of internal/wire (ID, time, metadata, delivery
// count, payload). A value without its magic prefix (written by another
// client) is delivered as a payload-only message with no ID. A value with the
// prefix that does not decode goes to the dead letters with the reason.
//
// # How reliable mode works
//
// Fetching: while the queue has a backlog, one script call moves up to
// Prefetch values (as many as there are free slots) from the head of the
// queue to the consumer's processing list. The fetch and acknowledgement
// scripts report the queue's length: once a report shows it empty, the
// consumer blocks in BLMOVE queue -> processing (up to WithBlock at a time),
// one value per call, until a report shows a backlog again. So at moderate
// rates a message costs one BLMOVE and one acknowledgement, and a burst is
// fetched in batches. A crash after a move loses nothing: the value is in
// the processing list.
//
// Simple mode pops with BLMPOP COUNT n (Redis 7.0 and later): a batch when
// the queue has a backlog, a block only when it is empty, one call either
// way. Where the server rejects BLMPOP (older Redis, miniredis), it pops
// batches with LPOP COUNT n and blocks in BLPOP when the queue is empty.
//
// Settling: when a handler returns, the outcome goes to a background
// collector that writes a batch of outcomes in one script call: success
// removes the value from the processing list (LREM); failure removes it and
// adds it, with its delivery count raised, to {topic}:delayed, due after an
// exponential backoff with jitter; the last allowed failure, or ErrDiscard,
// pushes a dead-letter record instead. A retry or dead letter only happens if
// the value is still in the processing list, so a message that a reaper
// already returned is never scheduled twice.
//
// Delivery count: the envelope stores how many deliveries a message has had;
// Message.Attempt is that count plus one. A consumer that dies during a
// delivery counts too, so that a poison pill that kills every consumer that
// takes it is dead-lettered after MaxAttempts. Workers start messages in the
// order of the processing list, so only its oldest values, as many as the
// dead consumer's concurrency (recorded when it registers), can have been
// running: the reaper counts a delivery for those, and returns the values
// that were prefetched behind them unchanged. The count goes by position: a
// finished message whose acknowledgement was not yet written when its
// consumer died takes one of those places, and is counted in place of one
// that started after it.
//
// Lost replies: when the connection breaks after Redis moved a value with
// BLMOVE but before the reply arrived, the value sits in the consumer's
// processing list unknown to it. Every tick compares the list's length with
// what the consumer knows it holds; when the list is longer on two ticks in
// a row, the consumer returns the unknown values to the head of the queue.
//
// Liveness: each consumer writes a heartbeat into {topic}:consumers every
// lease/3 (at most DefaultPollInterval apart). On the same tick it promotes
// due messages from {topic}:delayed to the tail of the queue, and looks for
// consumers whose heartbeat is older than the lease. For each, a script
// re-checks the heartbeat (so a consumer that just beat is never reaped),
// moves its processing list back to the head of the queue in order, and
// deletes its entry. There is no separate cleaner process. All scores
// (heartbeats, due times of retries and of PublishIn/PublishAt) come from the
// Redis server's clock, read inside the scripts, so clock skew between hosts
// cannot reap a live consumer or fire a delayed message early. PublishAt uses
// the caller's clock only to measure how far away its time is.
//
// Orphaned lists: a consumer paused for longer than the lease (GC, a
// frozen VM) is reaped by the others. When it resumes, its next batch fetch
// registers it again before moving anything, and so does its next
// heartbeat; but a blocking BLMOVE cannot, so a consumer that resumed, moved
// a value that way and died before its next heartbeat would leave a
// processing list that no consumer knows of. Each consumer therefore sweeps
// the topic's processing lists (SCAN MATCH {topic}:processing:*) when it
// starts and then every 10 leases: a non-empty list without a heartbeat
// entry is registered with a fresh heartbeat, and reaped after the lease
// unless its owner was alive after all and keeps beating.
// Inspector.Stats counts the messages in such lists as Orphaned.
//
// Consumers of one topic should share MaxAttempts and the lease: the reaper
// applies its own.
//
// # Cost
//
// An idle consumer sends one blocking pop per block period and one tick per
// tick period: with the defaults (2s block, 3s poll, 30s lease) about 0.8
// commands per second. The price of a longer block is a slower Shutdown,
// which waits for the blocked pop to return (up to the block period). At a
// rate the consumer keeps up with, a message costs it one BLMOVE and one
// acknowledgement in reliable mode, one BLMPOP in simple mode. Under load, a
// consumer sends about one fetch call per Prefetch messages and one settle
// call per batch of finished handlers. Every 10 leases (5 minutes by
// default) a reliable consumer also sweeps for orphaned lists: a SCAN of the
// keyspace, about one call per 1,000 keys of the database.
//
// # Shutdown and stop
//
// Subscription.Shutdown stops fetching, waits for running handlers, writes
// the pending acknowledgements, returns every message still in the
// processing list (fetched and never started, or not acknowledged) to the
// head of the queue in order, and deregisters the consumer. Cancelling the
// Subscribe context is the hard stop: handler contexts are cancelled, and the
// same cleanup still runs, with a context that is not cancelled. A handler
// error once the hard stop cancelled its context (except one wrapping
// broker.ErrDiscard) is not the message's fault: the message is due again at
// once, without backoff, and is never dead-lettered for it. The cut delivery
// counts, so the next one is attempt 2, but never as the one that exhausts
// MaxAttempts (its count is capped at MaxAttempts-1).
//
// When Redis is unreachable, background calls (fetch, acknowledgements,
// heartbeats) are logged (WithLogger) and retried with backoff from 50ms to
// 2s; a subscription keeps running through a Redis restart.
//
// # Dead letters
//
// {topic}:dead holds records framed as "\xffBKD", attempts (uint32 BE),
// time (uint64 BE unix ms, server clock), reason length (uint32 BE), reason,
// then the original value. Inspector lists them (DeadLetters), moves them
// back to the queue with their count reset (Requeue) and deletes them
// (Purge).
//
// # Defaults
//
// Publisher: DefaultMaxPayload (1 MiB). Subscriber: reliable mode,
// DefaultConcurrency (10) handlers, DefaultPrefetch (100) held messages,
// DefaultLease (30s), DefaultMaxAttempts (5), backoff DefaultBackoffMin (1s)
// to DefaultBackoffMax (10min), DefaultBlock (2s), DefaultPollInterval (3s),
// DefaultMaxValueSize (8 MiB), a silent logger.
package queue
