package broker

import (
	"context"
	"time"
)

// Message is the unit every pattern carries.
//
// Publish fills ID (when empty) and Time (when zero). Delivery fills Topic and
// Attempt: 1 on the first delivery, 2 on the first redelivery, and 0 where the
// pattern cannot know (pub/sub).
type Message struct {
	// ID identifies the message. It is unique per Publish unless the caller
	// sets it, so a consumer can detect the duplicates that at-least-once
	// delivery allows.
	ID string
	// Topic is the queue, stream or channel the message was delivered from.
	Topic string
	// Payload is the body. It may be empty and may hold any bytes.
	Payload []byte
	// Metadata carries small string headers alongside the payload.
	Metadata map[string]string
	// Attempt counts deliveries of this message: 1 on the first delivery, 2
	// on the first redelivery, and so on (queue, stream). It is 0 where the
	// pattern cannot count deliveries (pub/sub delivers every message once,
	// with Attempt 0), so a handler must not treat 0 as an error.
	Attempt int
	// Time is when the message was first published.
	Time time.Time
}

// NewMessage returns a message carrying payload. ID and Time are filled by
// Publish.
func NewMessage(payload []byte) *Message {
	return &Message{Payload: payload}
}

// Handler processes one message. Its return value is the acknowledgement: nil
// acks the message; an error asks for a retry (queue, stream) or is counted
// and dropped (pubsub); an error matching ErrDiscard sends the message to the
// dead letters without further retries. A panic is recovered and treated as an
// error.
//
// Handlers run concurrently up to the subscriber's concurrency limit. The
// message is owned by the handler until it returns and must not be retained
// afterwards.
type Handler interface {
	Handle(ctx context.Context, msg *Message) error
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, msg *Message) error

// Handle calls f(ctx, msg).
func (f HandlerFunc) Handle(ctx context.Context, msg *Message) error { return f(ctx, msg) }

// Publisher sends messages to a topic. Several messages in one call travel in
// one round trip to Redis. Publish is safe for concurrent use; concurrent
// single-message calls are coalesced into shared round trips.
//
// Publish returns only after Redis accepted every message, or an error. When
// ctx ends first, Publish returns ctx.Err(), and the messages may or may not
// have been written.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...*Message) error
}

// Subscriber starts consuming a topic.
//
// Subscribe returns once the subscription is live: a message published after
// it returns is delivered to this subscription (or, for competing consumers,
// to one of the subscriptions of the topic). Cancelling ctx is the hard stop:
// fetching ends and the handlers' context is cancelled. Use
// Subscription.Shutdown for a graceful stop.
type Subscriber interface {
	Subscribe(ctx context.Context, topic string, h Handler) (Subscription, error)
}

// Subscription is a running consumer of one topic.
type Subscription interface {
	// Shutdown stops fetching, hands back messages that were fetched but not
	// started (where the pattern can), and waits for in-flight handlers to
	// return. If ctx ends first, Shutdown cancels the handlers' context and
	// returns ctx.Err(), like http.Server.Shutdown. Calling it more than once
	// is safe.
	Shutdown(ctx context.Context) error
	// Done is closed when the subscription has stopped, after Shutdown or
	// after the Subscribe context was cancelled, once every goroutine of the
	// subscription has returned.
	Done() <-chan struct{}
}
