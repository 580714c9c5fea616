// Command consumer is the demo worker for any pattern.
//
//	consumer -mode queue                 # reliable work queue (at least once)
//	consumer -mode queue -simple         # BLPOP, at most once
//	consumer -mode pubsub                # every consumer gets every message
//	consumer -mode stream -group billing # consumer group on a stream
//	consumer -mode queue -fail 0.3       # fail 30% to show retries and dead letters
//	consumer -mode queue -quiet -n 10000 # a rate line per second, exit after 10,000
//
// By default it prints one line per message (mode, ID, attempt, payload). On
// SIGINT or SIGTERM it stops fetching, lets in-flight messages finish, hands
// back what it fetched but did not start, and prints a summary.
//
// Redis comes from -redis or REDIS_URL; with neither, the Redis at
// 127.0.0.1:6379, and when nothing listens there an embedded in-memory one is
// started in-process.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/redisbroker/broker/internal/app"
)

func main() { os.Exit(app.Exit("consumer", run(os.Args[1:]), os.Stderr)) }

func run(args []string) error {
	fs := flag.NewFlagSet("consumer", flag.ContinueOnError)
	var (
		redisURL    = fs.String("redis", "", "Redis URL (default $REDIS_URL, else 127.0.0.1:6379, else an embedded Redis)")
		defaultAddr = fs.String("default-redis", app.DefaultRedisAddr, "where to look for, or start, Redis when no URL is given")
		mode        = fs.String("mode", "queue", "queue, pubsub or stream")
		topic       = fs.String("topic", "", "topic (default: the producer's topic for -mode)")
		group       = fs.String("group", app.DefaultGroup, "stream consumer group")
		from        = fs.String("from", "0", "stream: where a new group starts: 0 (the whole stream) or $ (new entries only)")
		conc        = fs.Int("concurrency", 1, "handlers running at once")
		simple      = fs.Bool("simple", false, "queue: at-most-once BLPOP mode instead of the reliable one")
		quiet       = fs.Bool("quiet", false, "print one rate line per second instead of one line per message")
		n           = fs.Int64("n", 0, "stop after N messages: fetching stops and what was fetched but not started is handed back (0 = run until stopped)")
		fail        = fs.Float64("fail", 0, "fraction of deliveries to fail on purpose (0..1)")
		attempts    = fs.Int("max-attempts", app.DefaultMaxAttempts, "deliveries before a failing message is dead-lettered (queue, stream)")
		drain       = fs.Duration("drain", 10*time.Second, "how long a graceful stop waits for in-flight messages (a second Ctrl-C stops at once)")
		verbose     = fs.Bool("v", false, "log warnings and errors to stderr")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := app.ParseMode(*mode)
	if err != nil {
		return err
	}
	if *fail < 0 || *fail > 1 {
		return fmt.Errorf("-fail %v: want a fraction between 0 and 1", *fail)
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

	// The subscription has its own context: a first signal starts the
	// graceful drain below; the hard stop (cancelSub) comes only after the
	// drain timed out or a second signal.
	subCtx, cancelSub := context.WithCancel(context.Background())
	defer cancelSub()
	k, err := app.StartConsumer(subCtx, conn.Client, app.ConsumerConfig{
		Mode:  m,
		Topic: *topic,
		SubscriberConfig: app.SubscriberConfig{
			Group: *group, StartID: *from, Concurrency: *conc, Simple: *simple, MaxAttempts: *attempts, Logger: logger,
		},
		Quiet: *quiet, N: *n, Fail: *fail, Out: os.Stdout, StatsKey: app.DefaultStatsKey,
	})
	if err != nil {
		return err
	}
	topicName := *topic
	if topicName == "" {
		topicName = app.Topics{}.For(m)
	}
	fmt.Printf("consumer: %s on %q (redis %s); Ctrl-C to stop\n", m, topicName, conn.URL)

	reportCtx, stopReport := context.WithCancel(context.Background())
	var reporting sync.WaitGroup
	reporting.Go(func() { k.Report(reportCtx) })

	select {
	case <-sig.Graceful.Done():
	case <-k.LimitReached():
	case <-k.Subscription().Done():
	}
	k.BeginStop()
	drainErr := app.Drain(sig.Force, *drain, cancelSub, k.Subscription())
	stopReport()
	reporting.Wait() // its last flush must reach Redis before conn.Close
	fmt.Println(k.Summary())
	return drainErr
}
