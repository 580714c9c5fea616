// Package stream is a broker on Redis Streams with consumer groups.
//
// A Publisher adds messages to a stream with XADD; a Subscriber reads them
// through a consumer group with XREADGROUP, runs the handler, and
// acknowledges with XACK. Entries stay in the stream after they are acked,
// so they can be replayed from any ID.
//
// # Guarantees
//
//   - Delivery is at least once. An entry is acked only after its handler
//     returned nil; until then it stays in the group's pending list and is
//     delivered again if the consumer fails, crashes or stops. Handlers must
//     therefore tolerate duplicates; Message.ID identifies them.
//   - Consumers of one group compete: each entry goes to one of them. Every
//     group gets every entry: give each application its own group
//     (WithGroup; default "broker", see DefaultGroup) to fan out.
//   - Order is stream ID order, which is the order in which Redis accepted
//     the XADDs. With one consumer and concurrency 1, handlers see that
//     order; concurrency, several consumers and redeliveries reorder.
//   - A new group starts at "$" (entries added after it was created) or
//     wherever WithStartID says; an existing group keeps its position.
//     Subscribe returns once the group exists, so a message published after
//     Subscribe returns is delivered.
//   - Replay reads any range of the stream, without a group and without
//     touching any group's state.
//
// # Retries and dead letters
//
// A handler error leaves the entry pending for a retry after a backoff
// (WithRetryBackoff: about 1s after the first failure, doubling, with
// jitter, never more than the visibility timeout). The entry's idle time is
// set to the visibility timeout less the backoff, so XAUTOCLAIM takes it
// once the backoff has passed: this consumer claims it then, or any other
// consumer of the group at its next claim, so a crash meanwhile loses
// nothing. Message.Attempt is the entry's delivery count in the group: 1,
// then 2, 3... A running handler keeps its entry by renewing it (XCLAIM ...
// JUSTID) every third of the visibility timeout (WithVisibilityTimeout,
// default 30s), so a handler may run longer than the timeout without the
// entry being claimed by another consumer; entries waiting in the prefetch
// buffer, and entries whose ack is not yet confirmed by Redis, are renewed
// too. A renewal re-claims an entry only while this consumer still owns it
// (a script checks XPENDING first), so a renewal that comes too late never
// takes an entry back from the consumer that claimed it meanwhile: this
// consumer stops renewing it, does not start it if it had not, and counts
// it in Stats.LeasesLost.
//
// When the handler fails the last attempt (WithMaxAttempts, default 5), or
// returns an error wrapping broker.ErrDiscard, or recovery finds an entry
// delivered more than MaxAttempts times (its consumers crashed while
// handling it), the entry is added to the dead-letter stream "{topic}:dead"
// and acked, in one script that acks only once the dead letter is written.
// If that write fails, the worker retries it with backoff (WithBackoff)
// while the entry stays leased, until it succeeds or the hard stop. The dead
// letter holds the message plus the metadata DeadReason, DeadAttempts,
// DeadEntryID, DeadGroup and DeadConsumer; Inspector.DeadLetters reads it.
//
// # Crashes and shutdown
//
// Entries read by a consumer that crashed stay pending for it: another
// consumer claims them after the visibility timeout (checked every half
// timeout), and the same consumer name, restarted, reads them first (its
// own pending entries, XREADGROUP from ID 0) before new ones.
//
// Shutdown stops reading, waits for the running handlers and flushes their
// acks. Entries fetched but not started are handed back: their idle time is
// set to the visibility timeout and their delivery count lowered by the
// delivery that never ran, so the next claim by any consumer of the group
// takes them at once. A handler interrupted by the hard stop (the Shutdown
// deadline, or cancelling the Subscribe context), that is any handler error
// once the handler's ctx is done, except one wrapping broker.ErrDiscard, is
// neither a failed attempt nor a dead letter: its entry is handed back the
// same way, and counted in Stats.Interrupted. The cut delivery counts, so
// the next one is attempt 2, but never as the one that exhausts
// MaxAttempts (its count is capped at MaxAttempts-1): with MaxAttempts 1
// the entry is delivered again as attempt 1, not dead-lettered. Like the
// hand back of unstarted entries, this applies only to entries this
// consumer still owns.
//
// A consumer whose group or stream is deleted while it runs (XGROUP DESTROY,
// DEL) gets NOGROUP: it recreates the group at the last entry it read and
// carries on. Entries other consumers read after that point are delivered
// again; pending entries of the old group are gone with it.
//
// Entries deleted while pending (XDEL, or trimming) are acked and counted in
// Stats.DeletedWhilePending, never claimed forever. An idle consumer of the
// group is deleted (XGROUP DELCONSUMER) only when it has no pending entries,
// checked atomically in a script, because deleting a consumer drops its
// pending entries.
//
// # Trimming
//
// Streams grow until trimmed. WithMaxLen(n) trims on every XADD to about n
// entries (MAXLEN ~ n: Redis trims whole nodes, so a little more may stay);
// WithMinID and WithMaxAge trim by ID (MINID ~; WithMaxAge computes it from
// the Redis server's clock, which stamps the IDs, not the publisher's).
// Trimming deletes entries whether or not every group has read them: an
// entry trimmed before a group read it is lost for that group, and one
// trimmed while pending is acked and counted as deleted. A trimming
// Publisher checks the groups' lag every few seconds (in the same pipeline
// as a Publish) and logs a warning, and counts PublisherStats.LagWarnings,
// when a group's lag reaches 80% of MaxLen or its last delivered ID falls
// below the MINID. A group whose lag Redis cannot tell (-1, after entries it
// had not read were deleted or trimmed) is counted in
// PublisherStats.LagUnknown and warned about every 10 minutes, since MaxLen
// trimming could then drop its unread entries unnoticed.
//
// # Messages and keys
//
// The topic is the stream key: any client can XADD to it, or read it with a
// group of its own. A message is stored as the fields "id", "time" (Unix
// nanoseconds), "meta.<key>" per metadata entry and "payload" (see
// internal/wire). Publish fills an empty Message.ID with a unique,
// time-ordered ID before sending; the entry ID Redis assigns is separate and
// available as EntryID(ctx, msg) in a handler and Entry.ID from Replay. An
// entry added by another client (redis-cli XADD orders * k v) is delivered
// with its fields as metadata, its "payload" field or only field as the
// payload, its entry ID as Message.ID and the entry's time as Message.Time.
//
// Keys of a topic "orders": the stream "orders" and the dead-letter stream
// "{orders}:dead". Both hash to the same Cluster slot. A topic with a hash
// tag of its own, "tenant{7}orders", keeps that tag: its dead letters are in
// "tenant{7}orders:dead". A topic containing '}' without a hash tag ("a}b")
// is rejected by Subscribe and Inspector.DeadLetters with
// broker.ErrInvalidOption, since no dead-letter key could share its slot.
//
// # Cost
//
// An idle subscription sends at most one command per block on average
// (WithBlock, default 1s; it is shortened to half the visibility timeout
// when that is less, because claims run between reads), everything
// included: its blocked XREADGROUPs, one XAUTOCLAIM per half visibility
// timeout and one XINFO CONSUMERS every 10 minutes at most. The claims fold
// into the read cadence: each command other than a blocked read is paid for
// with short pauses (block/8, 125ms with the defaults, or longer when claims
// are due more often than every eight blocks) after the following empty
// reads, and periodic commands wait while one is owed. A message arriving
// during such a pause waits up to that long; under load there are no empty
// reads and no pauses. With the defaults that is at most 1 command per
// second: 0.98 measured with INFO commandstats over 92 seconds on Redis 7.0;
// TestIdleCommandRate checks it scaled down (one command per 50ms block). Lease renewals are sent only while entries are held. Under
// load, one XREADGROUP fetches up to the prefetch (WithPrefetch), and the
// acks of handlers that finish while an XACK is in flight go out together in
// the next one. A periodic scan of the pending list makes at most 16
// XAUTOCLAIM calls, with a read between any two, and resumes where it
// stopped at the next claim interval, so a long pending list held by live
// consumers never starves reads.
package stream
