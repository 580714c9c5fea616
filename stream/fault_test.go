package stream_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/brokertest"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/stream"
)

// Environment of the consumer process of TestKillConsumerProcesses.
const (
	envHelperAddr     = "STREAM_HELPER_ADDR"
	envHelperTopic    = "STREAM_HELPER_TOPIC"
	envHelperConsumer = "STREAM_HELPER_CONSUMER"
)

const (
	killPrefetch    = 64
	killConcurrency = 8
)

// seenKey is where the helper consumer records every message it handled,
// with RPUSH before acking: duplicates show as repeated IDs.
func seenKey(topic string) string { return "{" + topic + "}:seen" }

// TestHelperConsumer is the consumer process of TestKillConsumerProcesses,
// run by re-executing the test binary; it does nothing in a normal run. It
// consumes until SIGTERM, then shuts down gracefully.
func TestHelperConsumer(t *testing.T) {
	addr := os.Getenv(envHelperAddr)
	if addr == "" {
		t.Skip("helper process for TestKillConsumerProcesses")
	}
	topic := os.Getenv(envHelperTopic)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c := (&redistest.Server{Addr: addr}).Client(t)
	sub, err := stream.NewSubscriber(c,
		stream.WithConsumerName(os.Getenv(envHelperConsumer)), stream.WithStartID("0"),
		stream.WithConcurrency(killConcurrency), stream.WithPrefetch(killPrefetch),
		stream.WithVisibilityTimeout(500*time.Millisecond),
		stream.WithBlock(100*time.Millisecond),
		stream.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	require.NoError(t, err)
	s, err := sub.Subscribe(context.Background(), topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		time.Sleep(200 * time.Microsecond) // some work, so kills land mid-handler
		return c.RPush(ctx, seenKey(topic), m.ID).Err()
	}))
	require.NoError(t, err)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(sctx))
}

// TestKillConsumerProcesses: 20,000 messages, consumer processes SIGKILLed
// three times mid-run. Nothing is lost, duplicates stay within kills x
// prefetch, and the pending list ends empty.
func TestKillConsumerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	srv := redistest.NewReal(t)
	c := srv.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	const total, kills = 20_000, 3

	pub := newPub(t, c)
	msgs := publishN(t, pub, topic, total)

	start := func(n int) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConsumer$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			envHelperAddr+"="+srv.Addr,
			envHelperTopic+"="+topic,
			envHelperConsumer+"="+fmt.Sprintf("killable-%d", n))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		require.NoError(t, cmd.Start())
		return cmd
	}
	seen := func() int64 { return c.LLen(ctx, seenKey(topic)).Val() }

	for k := range kills {
		cmd := start(k)
		threshold := int64((k + 1) * total / (kills + 2))
		require.Eventually(t, func() bool { return seen() >= threshold }, 60*time.Second, time.Millisecond,
			"consumer %d made no progress", k)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		t.Logf("kill %d at %d handled", k+1, seen())
	}
	last := start(kills)
	done := false
	defer func() {
		if !done {
			_ = last.Process.Kill()
			_ = last.Wait()
		}
	}()
	distinct := func() (int, int) {
		ids, err := c.LRange(ctx, seenKey(topic), 0, -1).Result()
		require.NoError(t, err)
		set := make(map[string]bool, len(ids))
		for _, id := range ids {
			set[id] = true
		}
		return len(set), len(ids)
	}
	require.Eventually(t, func() bool {
		d, _ := distinct()
		return d == total && pendingCount(t, c, topic, stream.DefaultGroup) == 0
	}, 60*time.Second, 20*time.Millisecond, "every message handled and acked")
	require.NoError(t, last.Process.Signal(syscall.SIGTERM))
	require.NoError(t, last.Wait(), "graceful stop of the last consumer")
	done = true

	d, n := distinct()
	ids, err := c.LRange(ctx, seenKey(topic), 0, -1).Result()
	require.NoError(t, err)
	set := make(map[string]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	lost := 0
	for _, m := range msgs {
		if !set[m.ID] {
			lost++
		}
	}
	dups := n - d
	t.Logf("published %d, handled %d, distinct %d, lost %d, duplicates %d (bound %d)", total, n, d, lost, dups, kills*killPrefetch)
	assert.Zero(t, lost, "lost messages")
	assert.LessOrEqual(t, dups, kills*killPrefetch, "duplicates")
	assert.Zero(t, pendingCount(t, c, topic, stream.DefaultGroup), "pending at the end")
}

// TestGroupDestroyedWhileConsuming: XGROUP DESTROY under a running consumer;
// it recreates the group on NOGROUP and every message arrives (at least
// once).
func TestGroupDestroyedWhileConsuming(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		rec := brokertest.NewRecorder(nil)
		s := subscribe(t, c, topic, rec, stream.WithConcurrency(4))
		var all []*broker.Message
		for i := range 40 {
			all = append(all, publishN(t, pub, topic, 25)...)
			if i == 20 {
				require.Eventually(t, func() bool { return rec.Len() > 0 }, waitTimeout, time.Millisecond)
				require.NoError(t, c.XGroupDestroy(ctx, topic, stream.DefaultGroup).Err())
			}
			time.Sleep(5 * time.Millisecond)
		}
		require.Eventually(t, func() bool {
			for _, m := range all {
				if rec.Count(m.ID) == 0 {
					return false
				}
			}
			return true
		}, waitTimeout, 10*time.Millisecond, "every message delivered after the group was destroyed")
		assert.GreaterOrEqual(t, s.Stats().GroupRecreated, int64(1))
		t.Logf("delivered %d for %d messages", rec.Deliveries(), len(all))
	})
}

// TestStreamDeletedWhileConsuming: DEL of the stream under a running
// consumer; messages published afterwards still arrive.
func TestStreamDeletedWhileConsuming(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, srv *redistest.Server) {
		t.Parallel()
		c := srv.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		pub := newPub(t, c)
		rec := brokertest.NewRecorder(nil)
		s := subscribe(t, c, topic, rec)
		before := publishN(t, pub, topic, 50)
		require.Eventually(t, func() bool { return rec.Len() == len(before) }, waitTimeout, time.Millisecond)
		require.NoError(t, c.Del(ctx, topic).Err())
		var after []*broker.Message
		var wg sync.WaitGroup
		wg.Go(func() {
			for range 10 {
				after = append(after, publishN(t, pub, topic, 10)...)
				time.Sleep(10 * time.Millisecond)
			}
		})
		wg.Wait()
		require.Eventually(t, func() bool {
			for _, m := range after {
				if rec.Count(m.ID) == 0 {
					return false
				}
			}
			return true
		}, waitTimeout, 10*time.Millisecond, "messages published after DEL delivered")
		assert.GreaterOrEqual(t, s.Stats().GroupRecreated, int64(1))
	})
}
