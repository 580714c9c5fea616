package stream_test

import (
	"context"
	"os"
	"runtime"
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
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/stream"
)

// Benchmarks run end to end, publish to handler return, on a real server:
// BROKER_BENCH_REDIS=host:port if set (never flushed; each run uses fresh
// keys), else a spawned redis-server, else they skip. One op is one message,
// so allocs/op is allocations per message, publisher and subscriber
// together. Besides msgs/s they report cmds/msg (INFO commandstats) and the
// CPU used by this process (go-cores) and by the server (redis-cores) per
// second of wall time, which tells which side bounds the rate. The bar is
// redis-benchmark on the same server, e.g.
// redis-benchmark -p PORT -n 1000000 -P 32 -q XADD bar '*' payload <100 bytes>.
// BENCH_CONC and BENCH_PREFETCH override the subscriber's concurrency
// (default GOMAXPROCS) and prefetch (default 1024).

type benchServer struct {
	addr string
	srv  *redistest.Server // nil for BROKER_BENCH_REDIS
}

func newBenchServer(b *testing.B) *benchServer {
	if addr := os.Getenv("BROKER_BENCH_REDIS"); addr != "" {
		return &benchServer{addr: addr}
	}
	s := redistest.NewReal(b)
	return &benchServer{addr: s.Addr, srv: s}
}

func (s *benchServer) client(b *testing.B) redis.UniversalClient {
	c := redis.NewClient(&redis.Options{
		Addr: s.addr, Protocol: 3, DisableIdentity: true, PoolSize: 128,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// info returns an INFO section. A server the tests did not start
// (BROKER_BENCH_REDIS) is asked through a client of its own, since
// redistest.Server.Do refuses servers it did not start; INFO only reads.
func (s *benchServer) info(b *testing.B, section string) string {
	if s.srv != nil {
		info, _ := s.srv.Do(b, "INFO", section).(string)
		return info
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	defer func() { _ = c.Close() }()
	info, err := c.Info(context.Background(), section).Result()
	require.NoError(b, err)
	return info
}

// calls returns the total commands the server has executed (INFO
// commandstats), not counting INFO and HELLO.
func (s *benchServer) calls(b *testing.B, c redis.UniversalClient) int64 {
	return sumCalls(b, s.info(b, "commandstats"))
}

// benchSub subscribes with throughput settings and returns a channel that
// receives once n messages were handled.
func benchSub(b *testing.B, c redis.UniversalClient, topic string, n int, h func(*broker.Message)) <-chan struct{} {
	// The handler does no work, so more handlers than cores only add
	// scheduling; BENCH_CONC and BENCH_PREFETCH override.
	conc, pre := runtime.GOMAXPROCS(0), 1024
	if v, err := strconv.Atoi(os.Getenv("BENCH_CONC")); err == nil {
		conc = v
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_PREFETCH")); err == nil {
		pre = v
	}
	sub, err := stream.NewSubscriber(c, stream.WithConcurrency(conc), stream.WithPrefetch(pre), stream.WithStartID("0"))
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	s, err := sub.Subscribe(context.Background(), topic, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if h != nil {
			h(m)
		}
		if handled.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return done
}

func reportRate(b *testing.B, start time.Time, cmds int64, redisCPU, goCPU time.Duration) {
	el := time.Since(start)
	b.ReportMetric((processCPU()-goCPU).Seconds()/el.Seconds(), "go-cores")
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(cmds)/float64(b.N), "cmds/msg")
	// The share of one core the server used: near 1 means Redis is the bound.
	b.ReportMetric(redisCPU.Seconds()/el.Seconds(), "redis-cores")
}

// cpu returns the server's used CPU (user + sys) from INFO cpu.
func (s *benchServer) cpu(b *testing.B) time.Duration {
	info := s.info(b, "cpu")
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

// BenchmarkEndToEndBatch: one publisher, Publish of 500 messages per call.
func BenchmarkEndToEndBatch(b *testing.B) {
	srv := newBenchServer(b)
	c := srv.client(b)
	topic := "bench-batch-" + wireID()
	pub, _ := stream.NewPublisher(c)
	const batch = 500
	msgs := make([]*broker.Message, batch)
	payload := make([]byte, 100)
	done := benchSub(b, c, topic, b.N, nil)
	before, cpu, gocpu := srv.calls(b, c), srv.cpu(b), processCPU()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += batch {
		n := min(batch, b.N-i)
		for j := range n {
			msgs[j] = &broker.Message{Payload: payload}
		}
		if err := pub.Publish(context.Background(), topic, msgs[:n]...); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	reportRate(b, start, srv.calls(b, c)-before, srv.cpu(b)-cpu, gocpu)
}

// BenchmarkEndToEndSingle64: 64 goroutines publishing one message per call,
// coalesced into shared pipelines.
func BenchmarkEndToEndSingle64(b *testing.B) {
	srv := newBenchServer(b)
	c := srv.client(b)
	topic := "bench-single-" + wireID()
	pub, _ := stream.NewPublisher(c)
	payload := make([]byte, 100)
	done := benchSub(b, c, topic, b.N, nil)
	before, cpu, gocpu := srv.calls(b, c), srv.cpu(b), processCPU()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := pub.Publish(context.Background(), topic, &broker.Message{Payload: payload}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	<-done
	b.StopTimer()
	reportRate(b, start, srv.calls(b, c)-before, srv.cpu(b)-cpu, gocpu)
}

// BenchmarkLatencyPaced: single-message publishes paced at 2,000 msg/s;
// reports p50 and p99 from Publish's start to the handler.
func BenchmarkLatencyPaced(b *testing.B) {
	srv := newBenchServer(b)
	c := srv.client(b)
	topic := "bench-paced-" + wireID()
	pub, _ := stream.NewPublisher(c)
	const n = 4000 // 2s at the paced rate, whatever b.N
	lat := make([]time.Duration, 0, n)
	var mu sync.Mutex
	done := benchSub(b, c, topic, n, func(m *broker.Message) {
		d := time.Since(m.Time)
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
	})
	b.ResetTimer()
	const rate = 2000
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for range n {
		<-tick.C
		// Time set here, before Publish, so latency includes the XADD.
		if err := pub.Publish(context.Background(), topic, &broker.Message{Payload: []byte("x"), Time: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

func wireID() string { return time.Now().Format("150405.000000") }

// processCPU returns this process's CPU time, user + system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
