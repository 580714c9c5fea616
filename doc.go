// Package broker is the shared vocabulary of a Redis-only message broker
// toolkit: one small contract (Message, Handler, Publisher, Subscriber,
// Subscription) and three interchangeable implementations, one Redis
// messaging pattern each:
//
//   - queue: work queues on Redis lists, competing consumers. A simple
//     at-most-once mode (BLMPOP/BLPOP) and a reliable at-least-once mode (BLMOVE into
//     a processing list, ack, recovery of crashed consumers, retries with
//     backoff, delayed messages, dead letters).
//   - pubsub: fan-out with PUBLISH/SUBSCRIBE, at most once, live subscribers
//     only, with every loss counted.
//   - stream: Redis Streams with consumer groups: at least once, replay,
//     dead letters.
//
// The root package holds no Redis logic beyond Open, which turns a URL into a
// configured client. Constructors in the pattern packages take a caller-owned
// redis.UniversalClient and never close it.
//
// # Guarantees
//
//	|                  | queue, simple  | queue, reliable        | pubsub                       | stream                        |
//	|------------------|----------------|------------------------|------------------------------|-------------------------------|
//	| delivery         | at most once   | at least once          | at most once, live only      | at least once                 |
//	| consumers        | compete        | compete                | every subscriber gets all    | compete in a group; all groups get all |
//	| consumer crash   | popped lost    | recovered, redelivered | n/a                          | claimed by others (XAUTOCLAIM) |
//	| retries, backoff, dead letters | no | yes              | no                           | yes                           |
//	| delayed messages | yes            | yes                    | no                           | no                            |
//	| replay           | no             | no                     | no                           | yes, from any ID              |
//	| order            | FIFO           | FIFO dispatch; retries reorder | per publisher connection | stream ID order          |
//
// At least once means a message can be delivered more than once (after a
// crash, a lost acknowledgement or a client retry): every message carries a
// unique ID so handlers can detect duplicates.
//
// # Acknowledgement
//
// A Handler's return value is the acknowledgement. nil acks. An error asks for
// a retry where the pattern has retries, and is counted and dropped where it
// has not. An error matching ErrDiscard sends the message to the dead letters
// without retry. A panic is recovered and treated as an error.
//
// # Stopping
//
// Like net/http, there are two stops. Cancelling the context given to
// Subscribe is the hard stop: fetching ends and handler contexts are
// cancelled. Subscription.Shutdown is the graceful one: it stops fetching,
// hands back what was fetched but not started, waits for in-flight handlers,
// and returns ctx.Err() if its deadline comes first.
package broker
