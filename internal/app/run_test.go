package app

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestExit(t *testing.T) {
	var w bytes.Buffer
	assert.Equal(t, 0, Exit("x", nil, &w))
	assert.Equal(t, 0, Exit("x", flag.ErrHelp, &w), "-h")
	assert.Empty(t, w.String())
	assert.Equal(t, 130, Exit("x", fmt.Errorf("published 3 of 9: %w", ErrInterrupted), &w))
	assert.Equal(t, "x: published 3 of 9: interrupted\n", w.String())
	w.Reset()
	assert.Equal(t, 1, Exit("x", errors.New("boom"), &w))
	assert.Equal(t, "x: boom\n", w.String())
}

// TestSignals: the first signal asks for a graceful stop, the second forces it.
func TestSignals(t *testing.T) {
	s := NotifySignals(syscall.SIGUSR1)
	defer s.Stop()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	select {
	case <-s.Graceful.Done():
	case <-time.After(waitFor):
		t.Fatal("first signal not seen")
	}
	assert.NoError(t, s.Force.Err())
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGUSR1))
	select {
	case <-s.Force.Done():
	case <-time.After(waitFor):
		t.Fatal("second signal not seen")
	}
	s.Stop()
	s.Stop()
}

// stuck is a subscription whose handlers only return on the hard stop.
type stuck struct {
	hard chan struct{}
	done chan struct{}
}

func newStuck() *stuck { return &stuck{hard: make(chan struct{}), done: make(chan struct{})} }

func (s *stuck) Shutdown(ctx context.Context) error {
	<-ctx.Done()
	close(s.hard)
	close(s.done)
	return ctx.Err()
}
func (s *stuck) Done() <-chan struct{} { return s.done }

func TestDrainForced(t *testing.T) {
	force, forceNow := context.WithCancel(context.Background())
	subCtx, cancelSub := context.WithCancel(context.Background())
	s := newStuck()
	errc := make(chan error, 1)
	go func() { errc <- Drain(force, time.Hour, cancelSub, s) }()
	forceNow() // the second Ctrl-C
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, ErrInterrupted)
	case <-time.After(waitFor):
		t.Fatal("a forced drain did not return")
	}
	assert.Error(t, subCtx.Err(), "the subscription's context is cancelled on the hard stop")
}

func TestDrainTimeout(t *testing.T) {
	subCtx, cancelSub := context.WithCancel(context.Background())
	err := Drain(context.Background(), 10*time.Millisecond, cancelSub, newStuck())
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrInterrupted)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Error(t, subCtx.Err())
}
