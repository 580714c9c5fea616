package pubsub_test

import (
	"context"
	"encoding/binary"
	"fmt"
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
	"github.com/redisbroker/broker/pubsub"
)

// benchClient connects to BROKER_BENCH_REDIS (host:port) when set, else to
// a spawned redis-server; without one the benchmark is skipped.
func benchClient(b *testing.B) redis.UniversalClient {
	b.Helper()
	if addr := os.Getenv("BROKER_BENCH_REDIS"); addr != "" {
		c := redis.NewClient(&redis.Options{
			Addr:                     addr,
			Protocol:                 3,
			DisableIdentity:          true,
			PoolSize:                 128,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		})
		b.Cleanup(func() { _ = c.Close() })
		return c
	}
	if _, ok := redistest.Available(); !ok {
		b.Skip("no BROKER_BENCH_REDIS and no redis-server on PATH")
	}
	return redistest.NewReal(b).Client(b)
}

const (
	benchSubscribers = 4
	benchBatch       = 100
	// benchWindow bounds messages published but not yet handled by the
	// slowest subscriber, so the benchmark measures sustained throughput
	// instead of filling Redis's output buffers until it disconnects us.
	benchWindow = 20_000
)

type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) Handle(context.Context, *broker.Message) error {
	h.n.Add(1)
	return nil
}

// fanOut starts the subscribers and returns them and a function reporting
// the least number of messages any of them handled.
func fanOut(b *testing.B, c redis.UniversalClient, topic string) ([]*pubsub.Subscription, func() int64) {
	b.Helper()
	s, err := pubsub.NewSubscriber(c, pubsub.WithBuffer(benchWindow), pubsub.WithOverflow(pubsub.Block))
	if err != nil {
		b.Fatal(err)
	}
	hs := make([]*countingHandler, benchSubscribers)
	subs := make([]*pubsub.Subscription, benchSubscribers)
	for i := range hs {
		hs[i] = new(countingHandler)
		subs[i] = listen(b, s, topic, hs[i])
	}
	return subs, func() int64 {
		m := hs[0].n.Load()
		for _, h := range hs[1:] {
			m = min(m, h.n.Load())
		}
		return m
	}
}

// waitHandled waits until every subscriber handled n messages, and fails
// instead of hanging when messages were lost.
func waitHandled(slowest func() int64, n int64) error {
	deadline := time.Now().Add(30 * time.Second)
	for slowest() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("handled %d of %d messages", slowest(), n)
		}
		time.Sleep(50 * time.Microsecond)
	}
	return nil
}

// cpuMeter measures the CPU time of this process and of the Redis server
// over a benchmark, to tell which side bounds it.
type cpuMeter struct {
	c         redis.UniversalClient
	go0, rds0 time.Duration
}

func startCPU(c redis.UniversalClient) *cpuMeter {
	return &cpuMeter{c: c, go0: processCPU(), rds0: redisCPU(c)}
}

func (m *cpuMeter) report(b *testing.B, deliveries int) {
	goCPU, rdsCPU := processCPU()-m.go0, redisCPU(m.c)-m.rds0
	b.ReportMetric(float64(goCPU.Nanoseconds())/float64(deliveries), "go-cpu-ns/delivery")
	if rdsCPU > 0 {
		b.ReportMetric(float64(rdsCPU.Nanoseconds())/float64(deliveries), "redis-cpu-ns/delivery")
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU reads used_cpu_user + used_cpu_sys from INFO cpu (0 if absent).
func redisCPU(c redis.UniversalClient) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		return 0
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

func reportFanOut(b *testing.B, start time.Time, subs []*pubsub.Subscription) {
	el := time.Since(start)
	b.ReportMetric(float64(b.N*benchSubscribers)/el.Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	var lost uint64
	for _, s := range subs {
		lost += s.Stats().Lost()
	}
	if lost > 0 {
		b.Errorf("lost %d messages", lost)
	}
}

// BenchmarkFanOutBatch: one publisher sending batches of 100 messages, four
// subscribers. b.N is messages published; deliveries/s counts handler calls
// across the four subscribers.
func BenchmarkFanOutBatch(b *testing.B) {
	c := benchClient(b)
	topic := "bench-" + redistest.Topic(b)
	subs, slowest := fanOut(b, c, topic)
	p, err := pubsub.NewPublisher(c)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 16)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU(c)
	start := time.Now()
	msgs := make([]*broker.Message, 0, benchBatch)
	for sent := 0; sent < b.N; {
		n := min(benchBatch, b.N-sent)
		msgs = msgs[:0]
		for range n {
			msgs = append(msgs, broker.NewMessage(payload))
		}
		if err := p.Publish(ctx, topic, msgs...); err != nil {
			b.Fatal(err)
		}
		sent += n
		if err := waitHandled(slowest, int64(sent-benchWindow/2)); err != nil {
			b.Fatal(err)
		}
	}
	if err := waitHandled(slowest, int64(b.N)); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	reportFanOut(b, start, subs)
	cpu.report(b, b.N*benchSubscribers)
}

// BenchmarkFanOutSingle: 64 goroutines each publishing one message per call
// (coalesced into shared pipelines), four subscribers.
func BenchmarkFanOutSingle(b *testing.B) {
	c := benchClient(b)
	topic := "bench-" + redistest.Topic(b)
	subs, slowest := fanOut(b, c, topic)
	p, err := pubsub.NewPublisher(c)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 16)
	ctx := context.Background()
	const writers = 64
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU(c)
	start := time.Now()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := p.Publish(ctx, topic, broker.NewMessage(payload)); err != nil {
					b.Error(err)
					return
				}
				if i-slowest() > benchWindow/2 {
					if err := waitHandled(slowest, i-benchWindow/2); err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err := waitHandled(slowest, int64(b.N)); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	reportFanOut(b, start, subs)
	cpu.report(b, b.N*benchSubscribers)
}

// BenchmarkLatency publishes single messages at a paced 2,000 msg/s to four
// subscribers and reports the publish-to-handler latency (p50, p99, max)
// over every delivery. Run with -benchtime=4000x (two seconds).
func BenchmarkLatency(b *testing.B) {
	c := benchClient(b)
	topic := "bench-" + redistest.Topic(b)
	// Block: at 2,000 msg/s nothing should be dropped, and a drop would
	// leave the benchmark waiting for a message that never comes.
	s, err := pubsub.NewSubscriber(c, pubsub.WithOverflow(pubsub.Block))
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N*benchSubscribers)
	var handled atomic.Int64
	h := broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		d := time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload))))
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
		handled.Add(1)
		return nil
	})
	subs := make([]*pubsub.Subscription, benchSubscribers)
	for i := range subs {
		subs[i] = listen(b, s, topic, h)
	}
	p, err := pubsub.NewPublisher(c)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const rate = 2000
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		// Paced by the schedule, not by sleeping a fixed interval, so a
		// slow publish does not lower the rate.
		if d := time.Until(start.Add(time.Duration(i) * time.Second / rate)); d > 0 {
			time.Sleep(d)
		}
		payload := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
		if err := p.Publish(ctx, topic, broker.NewMessage(payload)); err != nil {
			b.Fatal(err)
		}
	}
	// Bounded: a message lost on the way (a reconnect) must fail the
	// benchmark, not hang it.
	for deadline := time.Now().Add(10 * time.Second); handled.Load() < int64(b.N*benchSubscribers); {
		if time.Now().After(deadline) {
			for _, sub := range subs {
				b.Logf("%+v", sub.Stats())
			}
			b.Fatalf("handled %d of %d deliveries", handled.Load(), b.N*benchSubscribers)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(1), "max-µs")
}
