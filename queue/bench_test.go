package queue_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

// Benchmarks run against BROKER_BENCH_REDIS (host:port) when set, else a
// spawned redis-server, else they skip. Messages are counted end to end:
// from Publish to handler return. One op is one message.
//
//	go test -run '^$' -bench . -benchtime 200000x ./queue/
//	go test -run '^$' -bench 'Latency|Idle' -benchtime 1x ./queue/

const envBenchRedis = "BROKER_BENCH_REDIS"

func benchClient(b *testing.B) redis.UniversalClient {
	b.Helper()
	addr := os.Getenv(envBenchRedis)
	if addr == "" {
		addr = redistest.NewReal(b).Addr
	}
	c := redis.NewClient(&redis.Options{
		Addr: addr, DisableIdentity: true, PoolSize: 128, MaxRetries: 1,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	c.AddHook(&counter)
	b.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		b.Fatalf("bench redis %s: %v", addr, err)
	}
	return c
}

// counter counts what clients send: round trips (a command or a pipeline)
// and commands.
var counter cmdCounter

type cmdCounter struct{ trips, cmds atomic.Int64 }

func (h *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Add(1)
		h.cmds.Add(1)
		return next(ctx, cmd)
	}
}
func (h *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Add(1)
		h.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// commandCalls is the total of calls in INFO commandstats.
func commandCalls(b *testing.B, c redis.UniversalClient) int64 {
	b.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		total += n
	}
	return total
}

// redisCPU is the server's used CPU (user + sys) from INFO cpu.
func redisCPU(b *testing.B, c redis.UniversalClient) time.Duration {
	b.Helper()
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		for _, k := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// processCPU is this process's used CPU (user + sys).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchTopic(name string) string {
	return "bench-" + name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

func benchSubscriber(b *testing.B, c redis.UniversalClient, simple bool, topic string, h broker.HandlerFunc) broker.Subscription {
	b.Helper()
	opts := []queue.SubscriberOption{queue.WithConcurrency(16), queue.WithPrefetch(1000), queue.WithBlock(time.Second)}
	if simple {
		opts = append(opts, queue.WithSimple())
	}
	s, err := queue.NewSubscriber(c, opts...)
	if err != nil {
		b.Fatal(err)
	}
	sub, err := s.Subscribe(context.Background(), topic, h)
	if err != nil {
		b.Fatal(err)
	}
	return sub
}

func BenchmarkEndToEnd(b *testing.B) {
	for _, mode := range []string{"simple", "reliable"} {
		for _, pubMode := range []string{"batch100", "single64"} {
			b.Run(mode+"/"+pubMode, func(b *testing.B) {
				c := benchClient(b)
				topic := benchTopic(mode)
				payload := make([]byte, 64)
				var got atomic.Int64
				done := make(chan struct{})
				total := int64(b.N)
				sub := benchSubscriber(b, c, mode == "simple", topic, func(ctx context.Context, m *broker.Message) error {
					if got.Add(1) == total {
						close(done)
					}
					return nil
				})
				p, err := queue.NewPublisher(c)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				calls0 := commandCalls(b, c)
				trips0, cmds0 := counter.trips.Load(), counter.cmds.Load()
				rcpu0, gcpu0 := redisCPU(b, c), processCPU()
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				var next atomic.Int64
				if pubMode == "batch100" {
					// Four publishers, 100 messages per Publish.
					for range 4 {
						wg.Go(func() {
							batch := make([]*broker.Message, 0, 100)
							for {
								first := next.Add(100) - 100
								if first >= total {
									return
								}
								batch = batch[:0]
								for i := first; i < min(first+100, total); i++ {
									batch = append(batch, broker.NewMessage(payload))
								}
								if err := p.Publish(ctx, topic, batch...); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
				} else {
					for range 64 {
						wg.Go(func() {
							for next.Add(1) <= total {
								if err := p.Publish(ctx, topic, broker.NewMessage(payload)); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
				}
				wg.Wait()
				pubElapsed := time.Since(start)
				select {
				case <-done:
				case <-time.After(2 * time.Minute):
					b.Fatalf("handled %d of %d", got.Load(), total)
				}
				elapsed := time.Since(start)
				b.StopTimer()
				calls := commandCalls(b, c) - calls0 - 1
				b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
				b.ReportMetric(float64(total)/pubElapsed.Seconds(), "pub-msgs/s")
				b.ReportMetric(float64(calls)/float64(total), "srv-cmds/msg")
				b.ReportMetric(float64((redisCPU(b, c)-rcpu0).Nanoseconds())/float64(total), "redis-cpu-ns/msg")
				b.ReportMetric(float64((processCPU()-gcpu0).Nanoseconds())/float64(total), "go-cpu-ns/msg")
				b.ReportMetric(float64(counter.trips.Load()-trips0)/float64(total), "trips/msg")
				b.ReportMetric(float64(counter.cmds.Load()-cmds0)/float64(total), "cmds/msg")
				_ = sub.Shutdown(context.Background())
				c.Del(context.Background(), topic)
			})
		}
	}
}

// BenchmarkLatency publishes single messages at a paced 2,000 msg/s and
// reports the publish-to-handler latency percentiles. b.N is ignored below
// 4,000 messages (two seconds).
func BenchmarkLatency(b *testing.B) {
	for _, mode := range []string{"simple", "reliable"} {
		b.Run(mode, func(b *testing.B) {
			c := benchClient(b)
			topic := benchTopic("lat")
			const rate = 2000
			total := max(b.N, 2*rate)
			lat := make([]time.Duration, 0, total)
			var mu sync.Mutex
			done := make(chan struct{})
			sub := benchSubscriber(b, c, mode == "simple", topic, func(ctx context.Context, m *broker.Message) error {
				d := time.Since(m.Time)
				mu.Lock()
				lat = append(lat, d)
				if len(lat) == total {
					close(done)
				}
				mu.Unlock()
				return nil
			})
			p, _ := queue.NewPublisher(c)
			ctx := context.Background()
			trips0, cmds0 := counter.trips.Load(), counter.cmds.Load()
			b.ResetTimer()
			tk := time.NewTicker(time.Second / rate)
			for range total {
				<-tk.C
				if err := p.Publish(ctx, topic, broker.NewMessage([]byte("x"))); err != nil {
					b.Fatal(err)
				}
			}
			tk.Stop()
			<-done
			b.StopTimer()
			// Publish and consume together: at this rate nearly every
			// message travels alone, so this is what one message costs.
			b.ReportMetric(float64(counter.trips.Load()-trips0)/float64(total), "trips/msg")
			b.ReportMetric(float64(counter.cmds.Load()-cmds0)/float64(total), "cmds/msg")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
			_ = sub.Shutdown(context.Background())
		})
	}
}

// BenchmarkIdle measures the Redis commands an idle consumer sends per
// second over 10 s, with the default options. It needs a server of its
// own (the server-side count is server-wide), so it always spawns one. Run
// it with -benchtime 1x: each run takes 11 s.
func BenchmarkIdle(b *testing.B) {
	for _, mode := range []string{"simple", "reliable"} {
		b.Run(mode, func(b *testing.B) {
			s := redistest.NewReal(b)
			c := s.Client(b)
			var sent cmdCounter
			c.AddHook(&sent)
			var opts []queue.SubscriberOption
			if mode == "simple" {
				opts = append(opts, queue.WithSimple())
			}
			sb, _ := queue.NewSubscriber(c, opts...)
			sub, err := sb.Subscribe(context.Background(), "idle", broker.HandlerFunc(func(context.Context, *broker.Message) error { return nil }))
			if err != nil {
				b.Fatal(err)
			}
			time.Sleep(time.Second)
			calls0, sent0 := commandCalls(b, c), sent.cmds.Load()
			const window = 10 * time.Second
			time.Sleep(window)
			// Sent: commands the consumer sent (one script call is one).
			// Server: commands Redis executed, including those inside scripts.
			b.ReportMetric(float64(sent.cmds.Load()-sent0-1)/window.Seconds(), "sent-cmds/s")
			b.ReportMetric(float64(commandCalls(b, c)-calls0-1)/window.Seconds(), "server-cmds/s")
			_ = sub.Shutdown(context.Background())
		})
	}
}
