package broker

import "errors"

// Sentinel errors that callers match with errors.Is. Every other error is
// wrapped with context and is not meant to be matched.
var (
	// ErrClosed reports use of a closed Redis client or a stopped
	// subscription.
	ErrClosed = errors.New("broker: closed")

	// ErrInvalidOption reports an option or argument that a constructor or
	// method rejected. The wrapping error says which.
	ErrInvalidOption = errors.New("broker: invalid option")

	// ErrDiscard, returned (or wrapped) by a Handler, sends the message to
	// the dead letters without further retries where the pattern has them,
	// and drops it otherwise.
	ErrDiscard = errors.New("broker: discard message")

	// ErrTooLarge reports a payload over the publisher's size limit.
	ErrTooLarge = errors.New("broker: message too large")

	// ErrMalformed reports a value that claims to be this library's envelope
	// but does not decode. Consumers dead-letter such values with the reason;
	// they never stop on them.
	ErrMalformed = errors.New("broker: malformed message")

	// ErrPanic wraps a panic recovered from a Handler.
	ErrPanic = errors.New("broker: handler panicked")
)
