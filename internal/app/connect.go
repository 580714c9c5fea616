// Package app holds what the demo binaries (cmd/producer, cmd/consumer,
// cmd/demo) share: connecting with the embedded default, building a
// publisher or subscriber for a pattern by name, the HTTP producer and the
// printing consumer. After construction it uses only the root package's
// interfaces, which is what makes the three patterns interchangeable behind
// one -mode flag.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
)

// DefaultRedisAddr is where the binaries look for a Redis when neither -redis
// nor REDIS_URL is set, and where they start the embedded one when nothing
// listens there.
const DefaultRedisAddr = "127.0.0.1:6379"

// Conn is an open connection to Redis, possibly to an embedded server.
type Conn struct {
	Client   redis.UniversalClient
	URL      string // redacted, safe to print
	Embedded *miniredis.Miniredis
}

// Close closes the client and stops the embedded server, if any.
func (c *Conn) Close() error {
	err := c.Client.Close()
	if c.Embedded != nil {
		c.Embedded.Close()
	}
	return err
}

// Connect opens rawURL; when it is empty, REDIS_URL; when that is empty too,
// the Redis at defaultAddr, starting an embedded in-memory one there (and
// saying so on w) when nothing listens. Tests pass a free port as
// defaultAddr so they never touch 6379.
//
// It then checks the server once (broker.Check): the warning about an
// evicting maxmemory-policy goes to stderr whatever the binaries' verbosity,
// because it predicts lost messages. An unreachable Redis is not fatal: the
// producer answers 503 until it is back.
func Connect(ctx context.Context, rawURL, defaultAddr string, w io.Writer) (*Conn, error) {
	if rawURL == "" {
		rawURL = os.Getenv("REDIS_URL")
	}
	var embedded *miniredis.Miniredis
	if rawURL == "" {
		rawURL = "redis://" + defaultAddr
		if !listening(ctx, defaultAddr) {
			m := miniredis.NewMiniRedis()
			if err := m.StartAddr(defaultAddr); err != nil {
				// Someone may have started a server between the probe and
				// now: use it rather than fail.
				if !listening(ctx, defaultAddr) {
					return nil, fmt.Errorf("start embedded redis on %s: %w", defaultAddr, err)
				}
			} else {
				embedded = m
				fmt.Fprintf(w, "no Redis at %s and no -redis or REDIS_URL: started an embedded in-memory Redis there (data is lost on exit)\n", defaultAddr)
			}
		}
	}
	c, err := broker.Open(rawURL)
	if err != nil {
		if embedded != nil {
			embedded.Close()
		}
		return nil, err
	}
	conn := &Conn{Client: c, URL: broker.RedactURL(rawURL), Embedded: embedded}
	warn := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	checkCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := broker.Check(checkCtx, c, warn); err != nil {
		warn.Warn("redis not reachable yet", "url", conn.URL, "err", err)
	}
	return conn, nil
}

func listening(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// unavailablePrefixes are the Redis error replies that mean "try again
// later": the server is loading its data set, is a read-only replica, is out
// of memory under noeviction, has lost its master, or the cluster is down or
// resharding; also a server busy running a script and one at its client
// limit. Matched by prefix (redis.HasErrorPrefix, which skips an "ERR "),
// never by whole text.
var unavailablePrefixes = []string{
	"LOADING", "READONLY", "OOM", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
	"BUSY ", "max number of clients reached",
}

// Unavailable reports whether err means Redis could not be reached, did not
// answer in time or refused for now (a 503: retrying later can succeed), as
// opposed to an error that retrying will not fix, such as a WRONGTYPE reply
// or a message over the size limit.
//
// It is true for network errors (refused, reset, EOF), timeouts, the client's
// pool errors, a closed client (broker.ErrClosed) and the reply prefixes
// LOADING, READONLY, OOM, MASTERDOWN, CLUSTERDOWN and TRYAGAIN.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, broker.ErrTooLarge) || errors.Is(err, broker.ErrInvalidOption) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range unavailablePrefixes {
			if redis.HasErrorPrefix(err, p) {
				return true
			}
		}
		return false
	}
	var nerr net.Error
	switch {
	case errors.Is(err, broker.ErrClosed), errors.Is(err, redis.ErrClosed),
		errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.As(err, &nerr):
		return true
	}
	return false
}

// HTTPStatus maps an error of a Redis call to the status the producer
// answers: 413 for a message over the size limit, 400 for an option the
// publisher rejected, 503 when Unavailable, 500 for everything else (a
// WRONGTYPE reply does not go away by retrying).
func HTTPStatus(err error) int {
	switch {
	case err == nil:
		return 200
	case errors.Is(err, broker.ErrTooLarge):
		return 413
	case errors.Is(err, broker.ErrInvalidOption):
		return 400
	case Unavailable(err):
		return 503
	default:
		return 500
	}
}
