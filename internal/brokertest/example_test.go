package brokertest_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/brokertest"
	"github.com/redisbroker/broker/queue"
)

// ExampleRun is the wiring of the package doc, compiled so that the doc cannot drift from the
// constructors' signatures. It has no output and is not run: Run needs a *testing.T.
func ExampleRun() {
	conformance := func(t *testing.T) {
		features := brokertest.Features{
			Persistent: true, Redelivery: true, DeadLetters: true, CompetingConsumers: true,
			KnowsAttempt: true, HandsBackUnstarted: true,
		}
		brokertest.Run(t, features, func(t *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
			pub, err := queue.NewPublisher(c)
			if err != nil {
				t.Fatal(err)
			}
			sub, err := queue.NewSubscriber(c, queue.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			return pub, sub
		})
	}
	_ = conformance // in a real test file: func TestConformance(t *testing.T) { ... }
}
