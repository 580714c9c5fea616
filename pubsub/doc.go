// Package pubsub is fan-out over Redis PUBLISH / SUBSCRIBE: every live
// subscriber of a channel gets every message published to it.
//
// # Guarantees: at most once, live subscribers only
//
// Redis keeps nothing. PUBLISH hands the message to the subscribers
// connected at that instant and forgets it. So a message is delivered to a
// subscription at most once (see Duplicates below for the one exception),
// and only if the subscription is live when it is published. A message is
// lost, for a given subscriber, when:
//
//   - it was published before Subscribe returned, or after the subscription
//     stopped (not counted: it was never this subscription's to receive);
//   - it was published while the subscriber's connection was down, between
//     the disconnect and the resubscription (counted in Stats.Gaps; the
//     outage in Stats.Disconnects, the resubscription in Stats.Reconnects);
//   - Redis closed the subscriber's connection for exceeding
//     client-output-buffer-limit pubsub (default 32mb, or 8mb for 60s),
//     throwing away everything it had buffered for it (Stats.Gaps and
//     Stats.Disconnects). With the Block policy that is what a slow handler
//     leads to. The drop policies keep reading while handlers are slow, so
//     it takes a process that cannot even read and decode at the arrival
//     rate;
//   - the subscription's own buffer was full and the overflow policy
//     dropped it (Stats.DroppedOverflow);
//   - it claimed to be this package's envelope but did not decode
//     (Stats.DroppedMalformed), or was larger than WithMaxValueSize
//     (Stats.DroppedOversize); both are logged, never a crash;
//   - its handler returned an error or panicked: there is no retry, the
//     message is counted (Stats.HandlerErrors) and dropped;
//   - it was buffered when the subscription stopped (Stats.DroppedShutdown).
//
// For durable fan-out, where a subscriber that was away gets what it missed,
// use package stream with one consumer group per subscriber.
//
// # Counting what never arrived: sequence numbers
//
// A message that never reached the subscriber leaves no trace on its side,
// so each Publisher stamps its messages with MetaSeq: a random instance ID,
// an epoch, the server's TIME when the epoch started, and a number, 1, 2,
// 3, ... per channel. Numbers are assigned in the order messages are
// written to Redis (one pipeline at a time per Publisher), so the subscriber
// sees them in order and counts a jump from 5 to 9 as 3 messages missed
// (Stats.Gaps). The subscriber removes the key before the handler sees the
// message.
//
// Within the limits below, gaps are exact for every loss between two
// messages of a publisher. A loss
// at the very end of a publisher's stream is counted only when its next
// message arrives. A loss at its start is counted too when the publisher
// began after the subscription was confirmed (by the server's clock: the
// subscriber reads TIME once subscribed), since all of its messages were
// then this subscription's; so is a loss at the start of a new epoch, which
// a publisher begins for a channel it left unused for 5 minutes (or beyond
// 4096 channels). On Redis Cluster this compares TIME of the channel's node
// for sharded channels, of any node otherwise, and relies on the nodes'
// clocks agreeing.
//
// When a publish fails, the publisher cannot know whether Redis got the
// messages, so its next messages carry MetaResync, the ranges of numbers it
// could not confirm, and subscribers do not count those as gaps (the
// publisher's caller got the error instead). A range is carried until
// messages carrying it have reached Redis over 30 seconds, so that a
// subscriber still reconnecting when Redis came back sees it; one that stays
// away longer may count those numbers as gaps. At most 8 ranges are carried;
// beyond that the two closest are merged, and a loss between them is not
// counted.
//
// A single message adds at most 16,777,216 to Gaps: a bigger jump, forward
// or back, is taken for a forged or foreign stamp (anyone who may PUBLISH
// can send one; stamps are not authenticated), counted in
// Stats.SeqAnomalies, and tracking restarts from it. A subscription tracks
// 4096 (channel, publisher) pairs; the least recently seen are forgotten
// beyond that (Stats.TrackerEvictions), which can hide a loss. Raw
// publishers (WithRaw, redis-cli, other clients) carry no numbers: their
// losses cannot be counted, only the disconnects that cause them.
//
// A pipeline that go-redis retries after a connection error may reach Redis
// twice; the repeat has a number already seen and is counted in
// Stats.Duplicates (and delivered).
//
// # Order
//
// Redis delivers the messages of one channel in the order it executed the
// PUBLISH commands. With WithConcurrency(1), the default, handlers see them
// in that order, and the messages of one Publisher in the order its Publish
// calls returned. With more concurrency, in no particular order. On Redis
// Cluster without WithSharded, PUBLISH commands may go to different nodes
// and reach subscribers out of order, which also makes gap counting
// unreliable: use WithSharded there.
//
// # Flow control
//
// Each subscription reads its connection in its own goroutine into a
// bounded buffer (WithBuffer), from which up to WithConcurrency handlers
// take messages. It does not use go-redis's Channel, which buffers 100
// messages and silently drops one after a minute of being full. When the
// buffer is full, WithOverflow decides: DropOldest (the default), DropNewest
// or Block. Memory is bounded by (buffer + concurrency) messages of at most
// WithMaxValueSize each; Stats.BufferHighWater shows how close it came.
//
// # Reconnects
//
// go-redis redials and resubscribes by itself after a connection error.
// The subscription also replaces its connection when Redis ends the
// subscription on its own (a sharded channel's slot moved: SUNSUBSCRIBE)
// or refuses the resubscription (NOPERM after an ACL change, CLUSTERDOWN,
// LOADING), retrying with backoff until it is accepted; go-redis alone
// would stay connected and subscribed to nothing. A health check
// (WithHealthCheck) pings a silent connection and replaces it when
// nothing, not even the pong, comes back, which catches half-open TCP
// connections. Each outage is logged and counted once (Stats.Disconnects),
// each resubscription too (Stats.Reconnects). If the caller closes the
// client, the subscription ends by itself: Done closes and Err says why.
//
// Redis does not tell a client why it closed its connection. A disconnect
// that happens while the subscription is behind (Block waiting for room, or
// the buffer full within the last second) is counted in
// Stats.SlowDisconnects and logged as a possible client-output-buffer-limit
// disconnect: that is an inference. Redis 7.2 and later count such
// disconnections in INFO stats (client_output_buffer_limit_disconnections);
// on those servers the subscription reads the counter when it resubscribes
// and counts outages across which it rose in Stats.BufferLimitDisconnects
// (the counter covers every client of the server). Older servers (7.0)
// offer no confirmation. The counts of messages lost (Gaps, Dropped*) do
// not depend on the cause.
//
// # Publishing
//
// Publish sends many messages in one pipeline, and concurrent
// single-message calls are coalesced into shared pipelines. Messages are
// encoded in the calling goroutine: Publish fills ID and Time and never
// touches the messages after that, even when it returns early on a
// cancelled ctx. PublishCount also returns how many subscribers received
// each message (0 = nobody). Payloads over WithMaxPayload (1 MiB by
// default) fail with broker.ErrTooLarge. Metadata keys starting with "bk-"
// are reserved.
package pubsub
