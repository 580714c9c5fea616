package app

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/pubsub"
	"github.com/redisbroker/broker/queue"
	"github.com/redisbroker/broker/stream"
)

// Mode names a messaging pattern.
type Mode string

// The patterns, in the order the demo shows them.
const (
	Queue  Mode = "queue"
	PubSub Mode = "pubsub"
	Stream Mode = "stream"
)

const numModes = 3

// Modes lists every pattern.
var Modes = [numModes]Mode{Queue, PubSub, Stream}

func (m Mode) index() int {
	switch m {
	case Queue:
		return 0
	case PubSub:
		return 1
	default:
		return 2
	}
}

// ParseMode validates a -mode flag.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown mode %q: want queue, pubsub or stream", s)
}

// Default topics: the producer's endpoints and the consumer's -mode meet on
// these out of the box. The classic tutorial's keys are
// task:prodcons:queue and task:pubsub:channel.
const (
	DefaultQueueTopic  = "broker:demo:queue"
	DefaultPubSubTopic = "broker:demo:pubsub"
	DefaultStreamTopic = "broker:demo:stream"
	DefaultGroup       = "demo"
)

// Topics holds the topic of each pattern.
type Topics struct {
	Queue, PubSub, Stream string
}

func (t Topics) withDefaults() Topics {
	if t.Queue == "" {
		t.Queue = DefaultQueueTopic
	}
	if t.PubSub == "" {
		t.PubSub = DefaultPubSubTopic
	}
	if t.Stream == "" {
		t.Stream = DefaultStreamTopic
	}
	return t
}

// For returns the topic of pattern m.
func (t Topics) For(m Mode) string {
	t = t.withDefaults()
	switch m {
	case Queue:
		return t.Queue
	case PubSub:
		return t.PubSub
	default:
		return t.Stream
	}
}

// receiverCounter is the pubsub publisher's extra: how many subscribers
// received each message.
type receiverCounter interface {
	PublishCount(ctx context.Context, topic string, msgs ...*broker.Message) ([]int64, error)
}

// NewPublisher builds the publisher of pattern m. raw writes payload bytes
// as-is (no envelope) for consumers that are not ours.
func NewPublisher(c redis.UniversalClient, m Mode, raw bool) (broker.Publisher, error) {
	switch m {
	case Queue:
		var opts []queue.PublisherOption
		if raw {
			opts = append(opts, queue.WithRaw())
		}
		return queue.NewPublisher(c, opts...)
	case PubSub:
		var opts []pubsub.Option
		if raw {
			opts = append(opts, pubsub.WithRaw())
		}
		return pubsub.NewPublisher(c, opts...)
	default:
		return stream.NewPublisher(c)
	}
}

// SubscriberConfig configures NewSubscriber.
type SubscriberConfig struct {
	Group       string // stream consumer group
	Concurrency int
	Simple      bool // queue: at-most-once BLPOP mode
	MaxAttempts int  // queue and stream; 0 = the package default
	// StartID is where a stream group that does not exist yet starts: "0"
	// (the whole stream, the default here, so messages published before the
	// first consumer came up are handled, as with the queue) or "$".
	StartID string
	Logger  *slog.Logger
}

// NewSubscriber builds the subscriber of pattern m.
func NewSubscriber(c redis.UniversalClient, m Mode, cfg SubscriberConfig) (broker.Subscriber, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch m {
	case Queue:
		opts := []queue.SubscriberOption{queue.WithLogger(cfg.Logger)}
		if cfg.Simple {
			opts = append(opts, queue.WithSimple())
		}
		if cfg.Concurrency > 0 {
			opts = append(opts, queue.WithConcurrency(cfg.Concurrency))
		}
		if cfg.MaxAttempts > 0 {
			opts = append(opts, queue.WithMaxAttempts(cfg.MaxAttempts))
		}
		return queue.NewSubscriber(c, opts...)
	case PubSub:
		opts := []pubsub.Option{pubsub.WithLogger(cfg.Logger)}
		if cfg.Concurrency > 0 {
			opts = append(opts, pubsub.WithConcurrency(cfg.Concurrency))
		}
		return pubsub.NewSubscriber(c, opts...)
	default:
		group := cfg.Group
		if group == "" {
			group = DefaultGroup
		}
		start := cfg.StartID
		if start == "" {
			start = "0"
		}
		opts := []stream.Option{stream.WithLogger(cfg.Logger), stream.WithGroup(group), stream.WithStartID(start)}
		if cfg.Concurrency > 0 {
			opts = append(opts, stream.WithConcurrency(cfg.Concurrency))
		}
		if cfg.MaxAttempts > 0 {
			opts = append(opts, stream.WithMaxAttempts(cfg.MaxAttempts))
		}
		return stream.NewSubscriber(c, opts...)
	}
}
