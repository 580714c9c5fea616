package broker_test

// The examples in this file back the Go snippets of README.md and
// docs/patterns.md line for line (TestDocSnippetsAreCompiled checks it), and
// run on miniredis so they need no server.

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/pubsub"
	"github.com/redisbroker/broker/queue"
	"github.com/redisbroker/broker/stream"
)

// eventually polls cond until it holds or 5 s pass.
func eventually(cond func() bool) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	log.Fatal("condition not met in 5s")
}

// queueDrained reports whether nothing waits or is in flight in topic.
func queueDrained(ctx context.Context, in *queue.Inspector, topic string) func() bool {
	return func() bool {
		st, err := in.Stats(ctx, topic)
		return err == nil && st.Ready == 0 && st.Processing == 0 && st.Delayed == 0
	}
}

// This is the README's snippet.
func Example() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	url := "redis://" + mr.Addr()
	ctx := context.Background()

	client, err := broker.Open(url) // redis://host:6379, rediss://, unix://, several hosts = Cluster, redis+sentinel://
	if err != nil {
		log.Fatal(err)
	}
	pub, err := queue.NewPublisher(client)
	if err != nil {
		log.Fatal(err)
	}
	if err := pub.Publish(ctx, "orders", broker.NewMessage([]byte("hello"))); err != nil {
		log.Fatal(err)
	}

	sub, err := queue.NewSubscriber(client, queue.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}
	s, err := sub.Subscribe(ctx, "orders", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Println(m.Attempt, string(m.Payload))
		return nil // nil acks; an error retries; broker.ErrDiscard dead-letters
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Shutdown(context.Background()) // drains in-flight handlers, hands back the rest

	eventually(queueDrained(ctx, queue.NewInspector(client), "orders"))
	// Output:
	// 1 hello
}

// The work queue of docs/patterns.md.
func Example_queue() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	client, err := broker.Open("redis://" + mr.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	pub, err := queue.NewPublisher(client)
	if err != nil {
		log.Fatal(err)
	}
	err = pub.Publish(ctx, "jobs", broker.NewMessage([]byte("resize photo 1")), broker.NewMessage([]byte("resize photo 2")))
	if err != nil {
		log.Fatal(err)
	}

	sub, err := queue.NewSubscriber(client, queue.WithConcurrency(4))
	if err != nil {
		log.Fatal(err)
	}
	s, err := sub.Subscribe(ctx, "jobs", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("handling %s (attempt %d)\n", m.Payload, m.Attempt)
		return nil // ack
	}))
	if err != nil {
		log.Fatal(err)
	}
	eventually(queueDrained(ctx, queue.NewInspector(client), "jobs"))
	if err := s.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	// Unordered output:
	// handling resize photo 1 (attempt 1)
	// handling resize photo 2 (attempt 1)
}

// The pub/sub fan-out of docs/patterns.md.
func Example_pubsub() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	client, err := broker.Open("redis://" + mr.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	sub, err := pubsub.NewSubscriber(client)
	if err != nil {
		log.Fatal(err)
	}
	s, err := sub.Subscribe(ctx, "prices", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		fmt.Printf("price update: %s\n", m.Payload)
		return nil
	}))
	if err != nil {
		log.Fatal(err)
	}
	pub, err := pubsub.NewPublisher(client)
	if err != nil {
		log.Fatal(err)
	}
	receivers, err := pub.PublishCount(ctx, "prices", broker.NewMessage([]byte("EURUSD 1.0842")))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("received by", receivers[0], "subscriber(s)")

	eventually(func() bool { return s.(*pubsub.Subscription).Stats().Delivered == 1 })
	if err := s.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	// Unordered output:
	// received by 1 subscriber(s)
	// price update: EURUSD 1.0842
}

// Two consumer groups on one stream, from docs/patterns.md: each group gets
// every message.
func Example_stream() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	client, err := broker.Open("redis://" + mr.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	pub, err := stream.NewPublisher(client)
	if err != nil {
		log.Fatal(err)
	}
	for _, group := range []string{"billing", "shipping"} {
		sub, err := stream.NewSubscriber(client, stream.WithGroup(group), stream.WithStartID("0"))
		if err != nil {
			log.Fatal(err)
		}
		s, err := sub.Subscribe(ctx, "orders", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			fmt.Printf("%s got %s\n", group, m.Payload)
			return nil // XACK
		}))
		if err != nil {
			log.Fatal(err)
		}
		defer s.Shutdown(context.Background())
	}
	err = pub.Publish(ctx, "orders", broker.NewMessage([]byte("order 42 placed")))
	if err != nil {
		log.Fatal(err)
	}

	in := stream.NewInspector(client)
	eventually(func() bool {
		groups, err := in.Groups(ctx, "orders")
		if err != nil || len(groups) != 2 {
			return false
		}
		last, err := client.XRevRangeN(ctx, "orders", "+", "-", 1).Result()
		if err != nil || len(last) != 1 {
			return false
		}
		// Delivered and acked by both groups. (Lag would do on Redis; miniredis
		// reports the stream length as every group's lag, and a new group's
		// last-delivered ID as given, "0", where Redis says "0-0".)
		for _, g := range groups {
			if g.Pending != 0 || g.LastDeliveredID != last[0].ID {
				return false
			}
		}
		return true
	})
	// Unordered output:
	// billing got order 42 placed
	// shipping got order 42 placed
}
