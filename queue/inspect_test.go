package queue_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

// An Inspector made with a nil client fails cleanly instead of panicking.
func TestInspectorNilClient(t *testing.T) {
	t.Parallel()
	in := queue.NewInspector(nil)
	ctx := context.Background()
	_, err := in.Stats(ctx, "t")
	require.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = in.DeadLetters(ctx, "t", 0, 10)
	require.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = in.Requeue(ctx, "t", 10)
	require.ErrorIs(t, err, broker.ErrInvalidOption)
	_, err = in.Purge(ctx, "t")
	require.ErrorIs(t, err, broker.ErrInvalidOption)
	assert.Contains(t, err.Error(), "queue t: purge: ")
}

// Requeue moves a large dead list in bounded script calls, in order.
func TestRequeueInChunks(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		const total = 2500
		vals := make([]any, total)
		for i := range vals {
			vals[i] = "v" + strconv.Itoa(i) // foreign values: not dead records, moved as they are
		}
		require.NoError(t, c.RPush(ctx, "{"+topic+"}:dead", vals...).Err())
		var mu sync.Mutex
		var chunks []int64
		c.AddHook(&hook{process: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
			args := cmd.Args()
			if (cmd.Name() == "evalsha" || cmd.Name() == "eval") && len(args) == 6 && args[4] == topic {
				n, err := strconv.ParseInt(fmt.Sprint(args[5]), 10, 64)
				require.NoError(t, err)
				mu.Lock()
				chunks = append(chunks, n)
				mu.Unlock()
			}
			return next(ctx, cmd)
		}})
		n, err := queue.NewInspector(c).Requeue(ctx, topic, total+500)
		require.NoError(t, err)
		assert.Equal(t, total, n)
		got, err := c.LRange(ctx, topic, 0, -1).Result()
		require.NoError(t, err)
		require.Len(t, got, total)
		for i, v := range got {
			require.Equal(t, vals[i], v)
		}
		mu.Lock()
		defer mu.Unlock()
		require.NotEmpty(t, chunks)
		for _, ch := range chunks {
			assert.LessOrEqual(t, ch, int64(1000), "one call moves at most a chunk")
		}
		assert.Equal(t, int64(0), stats(t, c, topic).Dead)
	})
}

// Purge frees the dead list with UNLINK (in the background on a real
// server), not with a blocking DEL.
func TestPurgeUnlinks(t *testing.T) {
	t.Parallel()
	s := redistest.NewReal(t)
	c := s.Client(t)
	ctx := context.Background()
	require.NoError(t, c.RPush(ctx, "{t}:dead", "a", "b").Err())
	before := commandCount(t, c)
	n, err := queue.NewInspector(c).Purge(ctx, "t")
	require.NoError(t, err)
	assert.Equal(t, int64(2), n)
	after := commandCount(t, c)
	assert.Equal(t, before["unlink"]+1, after["unlink"])
	assert.Equal(t, before["del"], after["del"])
	assert.Equal(t, int64(0), c.Exists(ctx, "{t}:dead").Val())
}

// commandCount returns the calls of each command in INFO commandstats.
func commandCount(t *testing.T, c redis.UniversalClient) map[string]int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	require.NoError(t, err)
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		out[name] = n
	}
	return out
}
