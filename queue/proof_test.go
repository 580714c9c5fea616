package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/internal/wire"
	"github.com/redisbroker/broker/queue"
)

// commandLog records the commands that succeeded through a client, with
// their arguments, except connection handshakes. Neither those nor blocking
// pops that timed out (a reply of nil) are per message, and an EVALSHA
// that failed with NOSCRIPT is followed by the EVAL that did the work.
type commandLog struct {
	mu   sync.Mutex
	cmds [][]any
}

func logCommands(c redis.UniversalClient) *commandLog {
	l := &commandLog{}
	c.AddHook(&hook{
		process: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
			err := next(ctx, cmd)
			if err == nil {
				l.add(cmd)
			}
			return err
		},
		pipeline: func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
			for _, cmd := range cmds {
				l.add(cmd)
			}
			return next(ctx, cmds)
		},
	})
	return l
}

func (l *commandLog) add(cmd redis.Cmder) {
	if cmd.Name() == "hello" {
		return // a new connection's handshake
	}
	l.mu.Lock()
	l.cmds = append(l.cmds, cmd.Args())
	l.mu.Unlock()
}

// count returns how many logged commands match.
func (l *commandLog) count(match func(args []any) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, args := range l.cmds {
		if match(args) {
			n++
		}
	}
	return n
}

func (l *commandLog) reset() {
	l.mu.Lock()
	l.cmds = nil
	l.mu.Unlock()
}

// named matches commands by name.
func named(name string) func(args []any) bool {
	return func(args []any) bool { return args[0] == name }
}

// script matches script calls (EVALSHA, or EVAL after NOSCRIPT) whose
// first key is key.
func script(key string) func(args []any) bool {
	return func(args []any) bool {
		return (args[0] == "evalsha" || args[0] == "eval") && len(args) > 3 && args[3] == key
	}
}

// At a moderate rate the queue is empty whenever the consumer looks: each
// message should then cost the consumer one blocking pop (plus, in
// reliable mode, its ack), not also a batch fetch that comes back empty.
func TestRoundTripsPerMessage(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"reliable", "simple"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
				t.Parallel()
				if mode == "simple" && !s.Real() {
					t.Skip("miniredis has no BLMPOP: simple mode falls back to BLPOP + LPOP")
				}
				c := s.Client(t)
				ctx := context.Background()
				topic := redistest.Topic(t)
				sc := s.Client(t) // the consumer's own client, to count what it sends
				log := logCommands(sc)
				handled := make(chan struct{})
				opts := modeOpts(mode, queue.WithLease(30*time.Second), queue.WithPollInterval(time.Hour))
				subscribe(t, sc, topic, func(ctx context.Context, m *broker.Message) error {
					handled <- struct{}{}
					return nil
				}, opts...)
				p := publisher(t, c)
				proc := "{" + topic + "}:processing:"
				isAck := func(args []any) bool {
					return (args[0] == "evalsha" || args[0] == "eval") && len(args) > 3 &&
						strings.HasPrefix(fmt.Sprint(args[3]), proc)
				}
				const n = 30
				for i := range n {
					if i == 1 {
						log.reset() // the first fetch is a batch: the backlog is not known yet
					}
					require.NoError(t, p.Publish(ctx, topic, broker.NewMessage([]byte("m"))))
					<-handled
					if mode == "reliable" {
						// Acknowledged (and logged) before the next one is
						// published.
						require.Eventually(t, func() bool { return log.count(isAck) == max(i, 1) }, waitFor, tick)
					}
				}
				// Housekeeping is not per message: ticks and sweeps (first key
				// the consumers set), SCAN.
				cons := "{" + topic + "}:consumers"
				sent := log.count(func(args []any) bool {
					return !script(cons)(args) && args[0] != "scan"
				})
				perMessage := float64(sent) / (n - 1)
				t.Logf("%s: %.2f commands per message", mode, perMessage)
				if mode == "reliable" {
					// BLMOVE + ack.
					assert.LessOrEqual(t, perMessage, 2.1)
					assert.Zero(t, log.count(script(topic)), "no batch fetch: the queue was seen empty")
					assert.Equal(t, n-1, log.count(named("blmove")))
					assert.Equal(t, n-1, log.count(isAck))
				} else {
					// BLMPOP alone.
					assert.LessOrEqual(t, perMessage, 1.1)
					assert.Equal(t, n-1, log.count(named("blmpop")))
				}
			})
		})
	}
}

// A burst that arrives while the consumer blocks on an empty queue is
// fetched in batches again once an acknowledgement shows the backlog, not
// one blocking pop per message.
func TestBurstFetchedInBatches(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		sc := s.Client(t)
		log := logCommands(sc)
		rec := subscribeRecorder(t, sc, topic, fast()...)
		// Idle: its first fetch saw the queue empty, so it blocks.
		require.Eventually(t, func() bool { return log.count(script(topic)) > 0 }, waitFor, tick)
		const n = 2000
		require.NoError(t, publisher(t, c).Publish(ctx, topic, msgs("b", n)...))
		require.Eventually(t, func() bool { return rec.len() == n }, waitFor, tick)
		fetches := log.count(named("blmove")) + log.count(script(topic))
		t.Logf("%d fetch calls for %d messages", fetches, n)
		assert.Less(t, fetches, n/8, "batches of up to Prefetch (100)")
	})
}

// Publish of many messages is one RPUSH with all of them.
func TestPublishManyIsOneRPush(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		log := logCommands(c)
		topic := redistest.Topic(t)
		require.NoError(t, publisher(t, c).Publish(context.Background(), topic, msgs("m", 100)...))
		require.Equal(t, 1, log.count(func([]any) bool { return true }), "one command in all")
		require.Equal(t, 1, log.count(named("rpush")))
		log.mu.Lock()
		assert.Len(t, log.cmds[0], 2+100, "RPUSH topic v1 ... v100")
		log.mu.Unlock()
		n, err := c.LLen(context.Background(), topic).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(100), n)
	})
}

// Concurrent single-message Publish calls share round trips: while one
// write is in flight the next calls queue, and go out together. Publish
// fills ID and Time in the caller's goroutine, before it hands the message
// on, so the caller may read them as soon as Publish returns (-race checks
// that nothing writes them later).
func TestConcurrentPublishCoalesces(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		topic := redistest.Topic(t)
		var mu sync.Mutex
		trips, most := 0, 0 // round trips, most messages in one
		count := func(cmds ...redis.Cmder) {
			n := 0
			for _, cmd := range cmds {
				if cmd.Name() == "rpush" {
					n += len(cmd.Args()) - 2
				}
			}
			mu.Lock()
			trips++
			most = max(most, n)
			mu.Unlock()
		}
		inFlight := make(chan struct{})
		resume := make(chan struct{})
		var once sync.Once
		c.AddHook(&hook{
			process: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
				if cmd.Name() == "rpush" {
					count(cmd)
					// Hold the first write until the other publishers called.
					once.Do(func() { close(inFlight); <-resume })
				}
				return next(ctx, cmd)
			},
			pipeline: func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
				count(cmds...)
				return next(ctx, cmds)
			},
		})
		p := publisher(t, c)
		ctx := context.Background()
		first := broker.NewMessage([]byte("first"))
		errc := make(chan error, 1)
		go func() { errc <- p.Publish(ctx, topic, first) }()
		<-inFlight
		const goroutines, each = 64, 20
		var calling, wg sync.WaitGroup
		calling.Add(goroutines)
		for range goroutines {
			wg.Go(func() {
				calling.Done()
				for range each {
					m := broker.NewMessage([]byte("x"))
					assert.NoError(t, p.Publish(ctx, topic, m))
					assert.Len(t, m.ID, 26)
					assert.False(t, m.Time.IsZero())
				}
			})
		}
		calling.Wait()
		close(resume)
		require.NoError(t, <-errc)
		wg.Wait()
		n, err := c.LLen(ctx, topic).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(1+goroutines*each), n)
		mu.Lock()
		defer mu.Unlock()
		// How much coalesces once the server answers fast depends on the
		// scheduler; what queued behind the held write goes out together.
		t.Logf("%d publishes in %d round trips, up to %d in one", 1+goroutines*each, trips, most)
		assert.GreaterOrEqual(t, most, goroutines/4, "the calls made while a write was in flight share one")
		assert.Less(t, trips, 1+goroutines*each)
	})
}

// Acknowledgements are written in batches: many handlers finishing
// together cost a few script calls, not one each.
func TestAcksBatched(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		const n = 100
		require.NoError(t, publisher(t, c).Publish(ctx, topic, msgs("a", n)...))
		proc := "{" + topic + "}:processing:w"
		var returned sync.WaitGroup
		returned.Add(n)
		var mu sync.Mutex
		calls, acked := 0, 0
		var once sync.Once
		sc := s.Client(t)
		sc.AddHook(&hook{process: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
			if !script(proc)(cmd.Args()) || fmt.Sprint(cmd.Args()[2]) != "4" { // ack.lua has 4 keys
				return next(ctx, cmd)
			}
			// The first ack call waits until every handler returned, so the
			// others queue meanwhile.
			once.Do(returned.Wait)
			err := next(ctx, cmd)
			if err == nil { // not an EVALSHA that Script.Run retries as EVAL
				mu.Lock()
				calls++
				for _, a := range cmd.Args()[7:] {
					if a == "A" {
						acked++
					}
				}
				mu.Unlock()
			}
			return err
		}})
		subscribe(t, sc, topic, func(ctx context.Context, m *broker.Message) error {
			defer returned.Done()
			return nil
		}, fast(queue.WithConsumerName("w"), queue.WithConcurrency(n), queue.WithPrefetch(n))...)
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return acked == n
		}, waitFor, tick)
		assert.Equal(t, queue.Stats{Consumers: 1}, stats(t, c, topic))
		mu.Lock()
		defer mu.Unlock()
		t.Logf("%d acks in %d script calls", acked, calls)
		assert.LessOrEqual(t, calls, n/10)
	})
}

// Retry delays grow exponentially: failure n waits a random time in
// [d/2, d], d = min * 2^(n-1). With a one-hour minimum the test reads each
// scheduled due time, then makes the message due at once to get the next.
func TestBackoffGrows(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		delayed := "{" + topic + "}:delayed"
		attempts := make(chan int, 10)
		subscribe(t, c, topic, func(ctx context.Context, m *broker.Message) error {
			attempts <- m.Attempt
			return errors.New("fails")
		}, fast(queue.WithBackoff(time.Hour, 100*time.Hour), queue.WithMaxAttempts(10))...)
		require.NoError(t, publisher(t, c).Publish(ctx, topic, broker.NewMessage([]byte("x"))))
		for n := 1; n <= 4; n++ {
			require.Equal(t, n, <-attempts)
			var z redis.Z
			require.Eventually(t, func() bool {
				zs, err := c.ZRangeWithScores(ctx, delayed, 0, -1).Result()
				require.NoError(t, err)
				if len(zs) == 1 {
					z = zs[0]
				}
				return len(zs) == 1
			}, waitFor, tick)
			wait := time.Duration(int64(z.Score)-serverMillis(t, c)) * time.Millisecond
			d := time.Hour << (n - 1)
			t.Logf("failure %d: retry in %v", n, wait.Round(time.Second))
			assert.GreaterOrEqual(t, wait, d/2-5*time.Second, "failure %d", n)
			assert.LessOrEqual(t, wait, d, "failure %d", n)
			require.NoError(t, c.ZAddXX(ctx, delayed, redis.Z{Score: 0, Member: z.Member}).Err())
		}
	})
}

// The hard stop of a simple-mode consumer whose blocking pop is in flight:
// a value that arrives after the stop is popped by that call and pushed
// back to the head of the queue, not lost.
func TestSimpleHardStopDuringBlockingPop(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		c := s.Client(t)
		ctx := context.Background()
		topic := redistest.Topic(t)
		var sc redis.UniversalClient = c
		if s.Real() {
			// A named client, to see it blocked in CLIENT LIST.
			sc = redis.NewClient(&redis.Options{
				Addr: s.Addr, ClientName: topic, DisableIdentity: true, Protocol: 3,
				MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
			})
			t.Cleanup(func() { _ = sc.Close() })
		}
		sb, err := queue.NewSubscriber(sc, queue.WithSimple(), queue.WithBlock(time.Second))
		require.NoError(t, err)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var handled atomic.Int64
		sub, err := sb.Subscribe(sctx, topic, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			handled.Add(1)
			return nil
		}))
		require.NoError(t, err)
		if s.Real() {
			require.Eventually(t, func() bool { return blockedNamed(t, s, topic) }, waitFor, tick)
		}
		cancel()
		<-queue.Stopping(sub)
		m := broker.NewMessage([]byte("late"))
		require.NoError(t, publisher(t, c).Publish(ctx, topic, m))
		select {
		case <-sub.Done():
		case <-time.After(waitFor):
			t.Fatal("no stop after cancel")
		}
		assert.Zero(t, handled.Load(), "nothing starts after the hard stop")
		vals, err := c.LRange(ctx, topic, 0, -1).Result()
		require.NoError(t, err)
		require.Len(t, vals, 1, "the value is back in the queue")
		assert.Equal(t, m.ID, decode(t, vals[0]).ID)
	})
}

// blockedNamed reports whether the client named name is blocked in a
// command (CLIENT LIST flags=b).
func blockedNamed(t *testing.T, s *redistest.Server, name string) bool {
	t.Helper()
	list, _ := s.Do(t, "CLIENT", "LIST", "TYPE", "normal").(string)
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+name+" ") && strings.Contains(line, " flags=b ") {
			return true
		}
	}
	return false
}

// A value with the envelope's magic prefix but a version this package does
// not know (a newer producer, or garbage) goes to the dead letters with the
// reason, by both fetch paths, and the consumer keeps going.
func TestUnknownEnvelopeVersion(t *testing.T) {
	t.Parallel()
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		for _, mode := range []string{"reliable", "simple"} {
			t.Run(mode, func(t *testing.T) {
				c := s.Client(t)
				ctx := context.Background()
				topic := redistest.Topic(t)
				future := wire.Magic + "\x09" + strings.Repeat("\x00", 20) + "from the future"
				// A backlog (batch fetch), then alone (blocking pop).
				require.NoError(t, c.RPush(ctx, topic, future, envelope("after", 0)).Err())
				opts := modeOpts(mode, queue.WithConcurrency(1))
				rec := subscribeRecorder(t, c, topic, opts...)
				require.Eventually(t, func() bool { return rec.len() == 1 && stats(t, c, topic).Dead == 1 }, waitFor, tick)
				require.NoError(t, c.RPush(ctx, topic, future).Err())
				require.Eventually(t, func() bool { return stats(t, c, topic).Dead == 2 }, waitFor, tick)
				require.NoError(t, c.RPush(ctx, topic, envelope("last", 0)).Err())
				require.Eventually(t, func() bool { return rec.len() == 2 }, waitFor, tick)
				assert.Equal(t, []string{"after", "last"}, rec.payloads())
				dls, err := queue.NewInspector(c).DeadLetters(ctx, topic, 0, 10)
				require.NoError(t, err)
				require.Len(t, dls, 2)
				for _, d := range dls {
					assert.Contains(t, d.Reason, "unknown version 9")
					assert.Equal(t, future, string(d.Message.Payload), "kept whole")
				}
				require.Eventually(t, func() bool { // the last ack written
					st := stats(t, c, topic)
					return st.Ready+st.Processing+st.Orphaned+st.Delayed == 0
				}, waitFor, tick)
			})
		}
	})
}
