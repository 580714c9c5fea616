package runner

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/redisbroker/broker"
)

// PanicError is a panic recovered from a Handler. It matches
// broker.ErrPanic with errors.Is.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("%v: %v", broker.ErrPanic, e.Value) }

// Unwrap makes errors.Is(err, broker.ErrPanic) hold.
func (e *PanicError) Unwrap() error { return broker.ErrPanic }

// Call runs h and turns a panic into a *PanicError, so one bad message
// never takes a consumer down.
func Call(ctx context.Context, h broker.Handler, m *broker.Message) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return h.Handle(ctx, m)
}
