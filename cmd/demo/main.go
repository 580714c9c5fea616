// Command demo starts the whole demo in one process: Redis (the one at
// 127.0.0.1:6379, or an embedded in-memory one when nothing listens there),
// the HTTP producer, and one consumer per pattern printing what it handles.
//
//	go run ./cmd/demo
//	siege -c10 -r5 http://127.0.0.1:8080/queue   # the queue consumer prints 50 lines
//
// Open the printed URL for the live page.
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
	"sync"
	"syscall"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/app"
)

func main() { os.Exit(app.Exit("demo", run(os.Args[1:]), os.Stderr)) }

func run(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var (
		addr        = fs.String("addr", "127.0.0.1:8080", "HTTP listen address")
		redisURL    = fs.String("redis", "", "Redis URL (default $REDIS_URL, else 127.0.0.1:6379, else an embedded Redis)")
		defaultAddr = fs.String("default-redis", app.DefaultRedisAddr, "where to look for, or start, Redis when no URL is given")
		quiet       = fs.Bool("quiet", false, "consumers print a rate line per second instead of a line per message")
		fail        = fs.Float64("fail", 0, "fraction of queue and stream deliveries to fail on purpose (0..1)")
		drain       = fs.Duration("drain", 10*time.Second, "how long a graceful stop waits for in-flight requests and messages (a second Ctrl-C stops at once)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *fail < 0 || *fail > 1 {
		return fmt.Errorf("-fail %v: want a fraction between 0 and 1", *fail)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sig := app.NotifySignals(os.Interrupt, syscall.SIGTERM)
	defer sig.Stop()

	conn, err := app.Connect(sig.Graceful, *redisURL, *defaultAddr, os.Stdout)
	if err != nil {
		return err
	}
	defer conn.Close()

	// The subscriptions' own context: cancelled only for the hard stop.
	subCtx, cancelSubs := context.WithCancel(context.Background())
	defer cancelSubs()
	var consumers []*app.Consumer
	var subs []broker.Subscription
	for _, m := range app.Modes {
		f := *fail
		if m == app.PubSub {
			f = 0
		}
		k, err := app.StartConsumer(subCtx, conn.Client, app.ConsumerConfig{
			Mode:             m,
			SubscriberConfig: app.SubscriberConfig{Logger: logger},
			Quiet:            *quiet, Fail: f, Out: os.Stdout, StatsKey: app.DefaultStatsKey,
		})
		if err != nil {
			app.Drain(sig.Force, *drain, cancelSubs, subs...)
			return fmt.Errorf("%s consumer: %w", m, err)
		}
		consumers = append(consumers, k)
		subs = append(subs, k.Subscription())
	}
	reportCtx, stopReport := context.WithCancel(context.Background())
	var reporting sync.WaitGroup
	for _, k := range consumers {
		reporting.Go(func() { k.Report(reportCtx) })
	}
	// Every consumer's last flush reaches Redis before conn.Close.
	defer reporting.Wait()
	defer stopReport()

	p, err := app.NewProducer(conn.Client, app.ProducerConfig{Logger: logger})
	if err != nil {
		app.Drain(sig.Force, *drain, cancelSubs, subs...)
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		app.Drain(sig.Force, *drain, cancelSubs, subs...)
		return err
	}
	srv := app.NewHTTPServer(*addr, p.Handler())
	url := "http://" + app.DisplayAddr(ln.Addr())
	fmt.Printf("demo: open %s (redis %s)\n", url, conn.URL)
	fmt.Printf("demo: try  curl %s/queue?msg=hello   or   siege -c10 -r5 %s/queue\n", url, url)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	served := false
	select {
	case err = <-errc:
		served = true
	case <-sig.Graceful.Done():
	}
	// First the HTTP server, so nothing is published during the drain; then
	// the consumers. A second signal cuts both short.
	shutdownCtx, cancel := context.WithTimeout(sig.Force, *drain)
	defer cancel()
	if serr := srv.Shutdown(shutdownCtx); serr != nil {
		srv.Close()
	}
	if !served {
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
			err = serr
		}
	}
	if derr := app.Drain(sig.Force, *drain, cancelSubs, subs...); err == nil {
		err = derr
	}
	stopReport()
	reporting.Wait()
	for i, k := range consumers {
		fmt.Printf("%s %s\n", app.Modes[i], k.Summary())
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
