// Command producer is the demo producer.
//
// HTTP mode (the default) publishes one message per request:
//
//	producer -addr :8080
//	curl -X POST --data 'hello' http://127.0.0.1:8080/queue
//	siege -c10 -r5 http://127.0.0.1:8080/queue
//
// GET|POST /queue, /pubsub and /stream publish the request body, or ?msg=, or
// a random number when both are empty, and answer 202 with JSON once Redis
// has accepted the message (503 with Retry-After when Redis is unavailable,
// 413 over the size limit). A publish, once started, finishes even if the
// client hangs up (5 s at most), so /stats counts every message that reached
// Redis. GET /stats and GET /healthz report state.
//
// CLI mode publishes N messages and prints a summary:
//
//	producer -n 100000 -batch 100 -mode queue
//	producer -n 10000 -rate 2000 -size 256 -mode stream
//
// Redis comes from -redis or REDIS_URL; with neither, the Redis at
// 127.0.0.1:6379, and when nothing listens there an embedded in-memory one is
// started in-process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/app"
)

func main() { os.Exit(app.Exit("producer", run(os.Args[1:]), os.Stderr)) }

func run(args []string) error {
	fs := flag.NewFlagSet("producer", flag.ContinueOnError)
	var (
		addr        = fs.String("addr", ":8080", "HTTP listen address")
		redisURL    = fs.String("redis", "", "Redis URL (default $REDIS_URL, else 127.0.0.1:6379, else an embedded Redis)")
		defaultAddr = fs.String("default-redis", app.DefaultRedisAddr, "where to look for, or start, Redis when no URL is given")
		raw         = fs.Bool("raw", false, "queue and pubsub: write payloads as-is (no envelope), for consumers that are not ours; stream entries are plain fields anyway (CLI mode rejects -raw -mode stream)")
		queueTopic  = fs.String("queue-topic", app.DefaultQueueTopic, "topic of /queue (the classic tutorial uses task:prodcons:queue)")
		pubsubTopic = fs.String("pubsub-topic", app.DefaultPubSubTopic, "channel of /pubsub (the classic tutorial uses task:pubsub:channel)")
		streamTopic = fs.String("stream-topic", app.DefaultStreamTopic, "stream of /stream")
		n           = fs.Int64("n", 0, "CLI mode: publish N messages and exit")
		mode        = fs.String("mode", "queue", "CLI mode: queue, pubsub or stream")
		rate        = fs.Float64("rate", 0, "CLI mode: messages per second (0 = as fast as possible)")
		size        = fs.Int("size", 100, "CLI mode: payload size in bytes")
		batchSize   = fs.Int("batch", 1, "CLI mode: messages per Publish call")
		conc        = fs.Int("c", 1, "CLI mode: concurrent publishers")
		verbose     = fs.Bool("v", false, "log warnings and errors to stderr")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	sig := app.NotifySignals(os.Interrupt, syscall.SIGTERM)
	defer sig.Stop()

	conn, err := app.Connect(sig.Graceful, *redisURL, *defaultAddr, os.Stdout)
	if err != nil {
		return err
	}
	defer conn.Close()

	topics := app.Topics{Queue: *queueTopic, PubSub: *pubsubTopic, Stream: *streamTopic}
	if *n > 0 {
		m, err := app.ParseMode(*mode)
		if err != nil {
			return err
		}
		res, err := app.Load(sig.Graceful, conn.Client, app.LoadConfig{
			Mode: m, Topic: topics.For(m), N: *n, Rate: *rate, Size: *size,
			Batch: *batchSize, Concurrency: *conc, Raw: *raw, Out: os.Stdout,
		})
		if errors.Is(err, broker.ErrInvalidOption) {
			return err
		}
		fmt.Println("summary:", res)
		if sig.Graceful.Err() != nil {
			return fmt.Errorf("published %d of %d: %w", res.Published, *n, app.ErrInterrupted)
		}
		return err
	}
	return serve(sig, conn, *addr, app.ProducerConfig{Topics: topics, Raw: *raw, Logger: logger})
}

func serve(sig *app.Signals, conn *app.Conn, addr string, cfg app.ProducerConfig) error {
	p, err := app.NewProducer(conn.Client, cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := app.NewHTTPServer(addr, p.Handler())
	fmt.Printf("producer: listening on http://%s (redis %s)\n", app.DisplayAddr(ln.Addr()), conn.URL)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-sig.Graceful.Done():
	}
	// Requests in flight finish; a second signal or 10 s cut them off.
	shutdownCtx, cancel := context.WithTimeout(sig.Force, 10*time.Second)
	defer cancel()
	serr := srv.Shutdown(shutdownCtx)
	if serr != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return serr
}
