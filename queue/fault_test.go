package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

// Environment of the helper consumer process (TestHelperConsumer).
const (
	envHelperAddr  = "QUEUE_HELPER_ADDR"
	envHelperTopic = "QUEUE_HELPER_TOPIC"
	envHelperOut   = "QUEUE_HELPER_OUT"
	helperPrefetch = 50
)

// TestHelperConsumer is not a test: run by TestKillConsumer in a child
// process, it consumes a topic in reliable mode and appends the ID of every
// handled message to a file (one write per message, before the ack), until
// SIGTERM (graceful Shutdown) or SIGKILL.
func TestHelperConsumer(t *testing.T) {
	addr := os.Getenv(envHelperAddr)
	if addr == "" {
		t.Skip("helper process of TestKillConsumer")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c := redis.NewClient(&redis.Options{
		Addr: addr, DisableIdentity: true, MaxRetries: 1, PoolSize: 16,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	defer c.Close()
	f, err := os.OpenFile(os.Getenv(envHelperOut), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	defer f.Close()
	sb, err := queue.NewSubscriber(c, queue.WithLease(2*time.Second), queue.WithConcurrency(8),
		queue.WithPrefetch(helperPrefetch), queue.WithBlock(time.Second), queue.WithPollInterval(200*time.Millisecond))
	require.NoError(t, err)
	sub, err := sb.Subscribe(context.Background(), os.Getenv(envHelperTopic), broker.HandlerFunc(
		func(ctx context.Context, m *broker.Message) error {
			time.Sleep(200 * time.Microsecond) // a little work, so kills land mid-run
			_, err := f.Write([]byte(m.ID + "\n"))
			return err
		}))
	require.NoError(t, err)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, sub.Shutdown(sctx))
}

type helperProc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startHelper(t *testing.T, s *redistest.Server, topic, out string) *helperProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConsumer$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelperAddr+"="+s.Addr, envHelperTopic+"="+topic, envHelperOut+"="+out)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	require.NoError(t, cmd.Start())
	return &helperProc{cmd: cmd, out: &buf}
}

// handled returns the IDs in the helper's output file: all lines, and the
// distinct ones.
func handled(t *testing.T, path string) (lines int, ids map[string]int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, map[string]int{}
	}
	require.NoError(t, err)
	ids = make(map[string]int)
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			ids[l]++
			lines++
		}
	}
	return lines, ids
}

// TestKillConsumer: 20,000 messages in reliable mode, the consumer process
// SIGKILLed 3 times mid-run and restarted. Every message is handled at least
// once, duplicates stay within kills x prefetch, and no processing list or
// heartbeat of a dead consumer is left.
func TestKillConsumer(t *testing.T) {
	if testing.Short() {
		t.Skip("kill test in -short mode")
	}
	t.Parallel()
	s := redistest.NewReal(t)
	c := s.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	const total, kills = 20_000, 3
	p := publisher(t, c)
	want := make(map[string]bool, total)
	for i := 0; i < total; i += 1000 {
		batch := msgs("k", 1000)
		require.NoError(t, p.Publish(ctx, topic, batch...))
		for _, m := range batch {
			want[m.ID] = true
		}
	}
	out := filepath.Join(t.TempDir(), "handled")
	for k := range kills {
		h := startHelper(t, s, topic, out)
		threshold := (k + 1) * total / (kills + 2)
		require.Eventually(t, func() bool {
			n, _ := handled(t, out)
			return n >= threshold
		}, 30*time.Second, time.Millisecond, "helper %d output:\n%s", k, h.out)
		require.NoError(t, h.cmd.Process.Kill())
		_ = h.cmd.Wait()
		n, _ := handled(t, out)
		t.Logf("%v: killed helper %d after %d handled", time.Now().Format("15:04:05.000"), k, n)
	}
	final := startHelper(t, s, topic, out)
	t.Logf("%v: final helper started", time.Now().Format("15:04:05.000"))
	require.Eventually(t, func() bool {
		_, ids := handled(t, out)
		return len(ids) >= total
	}, 60*time.Second, 10*time.Millisecond, "final helper output:\n%s", final.out)
	// The dead consumers are reaped (their lists returned, then handled).
	require.Eventually(t, func() bool {
		st := stats(t, c, topic)
		return st.Consumers == 1 && st.Ready == 0 && st.Processing == 0 && st.Delayed == 0
	}, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, final.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, final.cmd.Wait(), "final helper output:\n%s", final.out)

	lines, ids := handled(t, out)
	for id := range want {
		if ids[id] == 0 {
			t.Fatalf("message %s never handled", id)
		}
	}
	assert.Len(t, ids, total, "only published IDs")
	dups := lines - len(ids)
	t.Logf("handled %d lines, %d distinct, %d duplicates after %d kills", lines, len(ids), dups, kills)
	assert.LessOrEqual(t, dups, kills*helperPrefetch)
	assert.Equal(t, queue.Stats{}, stats(t, c, topic))
	left, err := c.Keys(ctx, "{"+topic+"}:*").Result()
	require.NoError(t, err)
	assert.Empty(t, left, "no processing list, heartbeat set or delayed set left")
}

// TestConnectionCutDuringBLMOVE: killing the consumer's blocked connection
// again and again loses nothing.
func TestConnectionCutDuringBLMOVE(t *testing.T) {
	t.Parallel()
	s := redistest.NewReal(t)
	c := s.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	rec := newRecorder()
	sb, err := queue.NewSubscriber(c, fast()...)
	require.NoError(t, err)
	sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		rec.add(m)
		return nil
	}))
	require.NoError(t, err)
	p := publisher(t, c)
	var sent []string
	for i := range 10 {
		// Wait for the consumer to block, cut its connection, then publish.
		var id int64
		require.Eventually(t, func() bool {
			id = blockedClient(t, s, "blmove")
			return id != 0
		}, waitFor, tick)
		s.Do(t, "CLIENT", "KILL", "ID", id)
		m := broker.NewMessage([]byte("cut " + itoa(i)))
		require.NoError(t, p.Publish(ctx, topic, m))
		sent = append(sent, m.ID)
		require.Eventually(t, func() bool { return rec.len() >= i+1 }, waitFor, tick)
	}
	shutdown(t, sub)
	for _, id := range sent {
		assert.Positive(t, rec.ids[id], "message %s lost", id)
	}
	assert.Equal(t, queue.Stats{}, stats(t, c, topic))
}

// blockedClient returns the ID of a client blocked in cmd, or 0.
func blockedClient(t *testing.T, s *redistest.Server, cmd string) int64 {
	t.Helper()
	list, _ := s.Do(t, "CLIENT", "LIST", "TYPE", "normal").(string)
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, " cmd="+cmd+" ") || !strings.Contains(line, " flags=b ") {
			continue
		}
		var id int64
		if _, err := fmt.Sscanf(line, "id=%d ", &id); err == nil {
			return id
		}
	}
	return 0
}

// TestRedisRestartWithAOF: Redis restarted (and killed) with appendfsync
// always during a run: nothing acknowledged is lost, and the subscription
// keeps going.
func TestRedisRestartWithAOF(t *testing.T) {
	t.Parallel()
	s := redistest.NewReal(t, redistest.WithAOF("always"))
	c := s.Client(t)
	ctx := context.Background()
	topic := redistest.Topic(t)
	rec := newRecorder()
	sb, err := queue.NewSubscriber(c, fast(queue.WithConcurrency(4))...)
	require.NoError(t, err)
	sub, err := sb.Subscribe(ctx, topic, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		time.Sleep(100 * time.Microsecond)
		rec.add(m)
		return nil
	}))
	require.NoError(t, err)
	p := publisher(t, c)
	var mu sync.Mutex
	sent := map[string]bool{}
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			default:
			}
			batch := msgs("r", 20)
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			err := p.Publish(pctx, topic, batch...)
			cancel()
			if err == nil {
				mu.Lock()
				for _, m := range batch {
					sent[m.ID] = true
				}
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	for i := range 4 {
		require.Eventually(t, func() bool { return rec.len() > (i+1)*300 }, 20*time.Second, tick)
		if i%2 == 0 {
			s.Restart(t)
		} else {
			s.Kill(t)
			s.Start(t)
		}
	}
	close(stopPub)
	<-pubDone
	mu.Lock()
	defer mu.Unlock()
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for id := range sent {
			if rec.ids[id] == 0 {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond, "every acknowledged publish handled")
	shutdown(t, sub)
	t.Logf("published %d, handled %d (%d duplicates)", len(sent), rec.len(), rec.len()-len(rec.ids))
	// Messages whose Publish failed may still have been written (the reply
	// was lost), and Shutdown hands back what was fetched but not started:
	// those wait in ready. Nothing is held, delayed or dead.
	st := stats(t, c, topic)
	st.Ready = 0
	assert.Equal(t, queue.Stats{}, st)
}
