package queue

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

// A member of the delayed set with a far-future or infinite score (a
// foreign value, or a bogus score) must not make the tick loop spin: the
// next tick is at most one tick interval away, never 0.
func TestNextTickFarFuture(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		cfg := defaultSubscriberConfig()
		require.NoError(t, cfg.validate())
		for _, score := range []float64{1e18, 9.3e15, math.MaxInt64, 1e300, math.Inf(1)} {
			topic := redistest.Topic(t)
			b := &base{c: c, cfg: cfg, topic: topic, keys: newKeys(topic)}
			require.NoError(t, c.ZAdd(ctx, b.keys.delayed, redis.Z{Score: score, Member: "far"}).Err())
			res, err := b.runTick(ctx, "w")
			require.NoError(t, err)
			assert.Equal(t, cfg.tickInterval(), b.nextTick(res), "score %g", score)
			c.Del(ctx, b.keys.delayed, b.keys.consumers)
		}
		// A due time a little ahead is honoured, with a millisecond of slack.
		topic := redistest.Topic(t)
		b := &base{c: c, cfg: cfg, topic: topic, keys: newKeys(topic)}
		now, err := c.Time(ctx).Result()
		require.NoError(t, err)
		require.NoError(t, c.ZAdd(ctx, b.keys.delayed, redis.Z{Score: float64(now.UnixMilli() + 500), Member: "soon"}).Err())
		res, err := b.runTick(ctx, "")
		require.NoError(t, err)
		d := b.nextTick(res)
		assert.Greater(t, d, 400*time.Millisecond)
		assert.LessOrEqual(t, d, 501*time.Millisecond)
		c.Del(ctx, b.keys.delayed)
	})
}

func TestNextTickClamps(t *testing.T) {
	cfg := defaultSubscriberConfig()
	require.NoError(t, cfg.validate())
	b := &base{cfg: cfg}
	for _, tt := range []struct {
		untilDue int64
		want     time.Duration
	}{
		{-1, cfg.tickInterval()},
		{0, time.Millisecond},
		{10, 11 * time.Millisecond},
		{math.MaxInt64, cfg.tickInterval()},
	} {
		assert.Equal(t, tt.want, b.nextTick(tickResult{untilDue: tt.untilDue}), "until due %d", tt.untilDue)
	}
}
