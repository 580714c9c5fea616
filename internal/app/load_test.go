package app

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
)

// flakyPublisher fails every call, with errors of alternating types.
type flakyPublisher struct{ calls atomic.Int64 }

func (p *flakyPublisher) Publish(_ context.Context, _ string, _ ...*broker.Message) error {
	if p.calls.Add(1)%2 == 0 {
		return errors.New("plain")
	}
	return fmt.Errorf("wrapped: %w", broker.ErrClosed)
}

// TestLoadErrorsOfDifferentTypes: the first error is kept whatever the
// types of the later ones (an atomic.Value panics on a second type).
func TestLoadErrorsOfDifferentTypes(t *testing.T) {
	for _, conc := range []int{1, 4} {
		pub := &flakyPublisher{}
		res, err := load(context.Background(), pub, LoadConfig{Mode: Queue, Topic: "t", N: 40, Concurrency: conc})
		require.Error(t, err)
		assert.EqualValues(t, 40, res.Errors)
		assert.Zero(t, res.Published)
		assert.EqualValues(t, 40, pub.calls.Load())
	}
}

func TestLoad(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	out := &syncBuffer{}
	res, err := Load(context.Background(), c, LoadConfig{Mode: Queue, Topic: "load", N: 250, Batch: 100, Concurrency: 2, Size: 10, Out: out})
	require.NoError(t, err)
	assert.EqualValues(t, 250, res.Published)
	assert.EqualValues(t, 250, c.LLen(context.Background(), "load").Val())

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err = Load(ctx, c, LoadConfig{Mode: Queue, Topic: "load2", N: 10})
	assert.ErrorIs(t, err, context.Canceled, "an interrupted run says so")
	assert.Zero(t, res.Published)
}

func TestLoadRawStream(t *testing.T) {
	srv := redistest.NewMiniredis(t)
	_, err := Load(context.Background(), srv.Client(t), LoadConfig{Mode: Stream, Raw: true, N: 1})
	assert.ErrorIs(t, err, broker.ErrInvalidOption, "-raw does not apply to streams: rejected, not ignored")
}
