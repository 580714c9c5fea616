package broker_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/brokertest"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/pubsub"
	"github.com/redisbroker/broker/queue"
	"github.com/redisbroker/broker/stream"
)

// TestMain is the only TestMain of the root package (internal and external tests share one test
// binary): it stops the shared test servers and fails the binary on leaked goroutines.
func TestMain(m *testing.M) { redistest.Main(m) }

// TestConformance runs the conformance suite (internal/brokertest) against every pattern with
// the guarantees it declares, on miniredis and, when installed, a real redis-server. Package
// owners add their line; constructors use test-friendly options (short backoffs and leases).
func TestConformance(t *testing.T) {
	t.Run("queue-reliable", func(t *testing.T) {
		brokertest.Run(t, brokertest.Features{
			Persistent: true, Redelivery: true, DeadLetters: true, CompetingConsumers: true,
			KnowsAttempt: true, HandsBackUnstarted: true,
		}, newQueue(false))
	})
	t.Run("queue-simple", func(t *testing.T) {
		brokertest.Run(t, brokertest.Features{
			Persistent: true, DeadLetters: true, CompetingConsumers: true,
			KnowsAttempt: true, HandsBackUnstarted: true,
		}, newQueue(true))
	})
	t.Run("stream", func(t *testing.T) {
		brokertest.Run(t, brokertest.Features{
			Persistent: true, Redelivery: true, DeadLetters: true, CompetingConsumers: true,
			KnowsAttempt: true, HandsBackUnstarted: true,
		}, newStream)
	})
	t.Run("pubsub", func(t *testing.T) {
		brokertest.Run(t, brokertest.Features{DeadLetters: true, FanOut: true}, newPubSub)
	})
}

func newQueue(simple bool) brokertest.Constructor {
	return func(t *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
		pub, err := queue.NewPublisher(c)
		if err != nil {
			t.Fatal(err)
		}
		opts := []queue.SubscriberOption{
			queue.WithConcurrency(4),
			queue.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
			queue.WithBlock(time.Second),
			queue.WithLease(2 * time.Second),
			queue.WithPollInterval(100 * time.Millisecond),
		}
		if simple {
			opts = append(opts, queue.WithSimple())
		}
		sub, err := queue.NewSubscriber(c, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return pub, sub
	}
}

func newStream(t *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
	pub, err := stream.NewPublisher(c)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := stream.NewSubscriber(c,
		stream.WithStartID("0"),
		stream.WithConcurrency(4),
		stream.WithBlock(100*time.Millisecond),
		// Long enough that a lease renewal delayed by a loaded CI machine
		// never lets another consumer claim a running entry; retries
		// have their own short backoff.
		stream.WithVisibilityTimeout(2*time.Second),
		stream.WithRetryBackoff(10*time.Millisecond, 50*time.Millisecond),
		stream.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
	)
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}

func newPubSub(t *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
	pub, err := pubsub.NewPublisher(c)
	if err != nil {
		t.Fatal(err)
	}
	// Block: the suite counts every message, so nothing may be dropped locally.
	sub, err := pubsub.NewSubscriber(c, pubsub.WithConcurrency(4), pubsub.WithOverflow(pubsub.Block))
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}
