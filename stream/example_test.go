package stream_test

import (
	"context"
	"fmt"
	"log"
	"slices"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/stream"
)

// exampleRedis starts an in-memory Redis and a client for it. Real programs
// use broker.Open(url) instead.
func exampleRedis() (redis.UniversalClient, func()) {
	m, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{
		Addr:                     m.Addr(),
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	return c, func() { _ = c.Close(); m.Close() }
}

func Example_publish() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, err := stream.NewPublisher(c, stream.WithMaxLen(10_000))
	if err != nil {
		log.Fatal(err)
	}
	// Three messages, one round trip.
	msgs := []*broker.Message{
		broker.NewMessage([]byte("order 1")),
		broker.NewMessage([]byte("order 2")),
		{Payload: []byte("order 3"), Metadata: map[string]string{"priority": "high"}},
	}
	if err := pub.Publish(ctx, "orders", msgs...); err != nil {
		log.Fatal(err)
	}
	n, _ := stream.NewInspector(c).Len(ctx, "orders")
	fmt.Println("entries:", n, "IDs filled:", msgs[0].ID != "" && msgs[2].ID != "")
	// Output: entries: 3 IDs filled: true
}

func Example_consumerGroup() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, _ := stream.NewPublisher(c)
	// Start the group at "0" to get the entries published before it exists.
	sub, err := stream.NewSubscriber(c, stream.WithGroup("billing"), stream.WithStartID("0"))
	if err != nil {
		log.Fatal(err)
	}
	_ = pub.Publish(ctx, "orders",
		broker.NewMessage([]byte("a")), broker.NewMessage([]byte("b")), broker.NewMessage([]byte("c")))

	got := make(chan string, 3)
	s, err := sub.Subscribe(ctx, "orders", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		got <- fmt.Sprintf("%s (attempt %d)", m.Payload, m.Attempt)
		return nil // acks the entry
	}))
	if err != nil {
		log.Fatal(err)
	}
	for range 3 {
		fmt.Println(<-got)
	}
	_ = s.Shutdown(ctx)
	// Output:
	// a (attempt 1)
	// b (attempt 1)
	// c (attempt 1)
}

func Example_twoGroups() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	var (
		mu  sync.Mutex
		got []string
		wg  sync.WaitGroup
	)
	wg.Add(4) // 2 messages x 2 groups
	var subs []broker.Subscription
	for _, group := range []string{"billing", "shipping"} {
		sub, _ := stream.NewSubscriber(c, stream.WithGroup(group))
		s, err := sub.Subscribe(ctx, "orders", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			mu.Lock()
			got = append(got, group+" got "+string(m.Payload))
			mu.Unlock()
			wg.Done()
			return nil
		}))
		if err != nil {
			log.Fatal(err)
		}
		subs = append(subs, s)
	}
	pub, _ := stream.NewPublisher(c)
	_ = pub.Publish(ctx, "orders", broker.NewMessage([]byte("order 1")), broker.NewMessage([]byte("order 2")))
	wg.Wait()
	for _, s := range subs {
		_ = s.Shutdown(ctx)
	}
	slices.Sort(got)
	for _, line := range got {
		fmt.Println(line)
	}
	// Output:
	// billing got order 1
	// billing got order 2
	// shipping got order 1
	// shipping got order 2
}

func Example_deadLetters() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	sub, _ := stream.NewSubscriber(c,
		stream.WithMaxAttempts(3),
		// The retry delay of a stream is the visibility timeout.
		stream.WithVisibilityTimeout(50*time.Millisecond))
	s, _ := sub.Subscribe(ctx, "orders", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if string(m.Payload) == "invalid" {
			return fmt.Errorf("attempt %d: cannot parse order", m.Attempt)
		}
		return nil
	}))
	pub, _ := stream.NewPublisher(c)
	_ = pub.Publish(ctx, "orders", broker.NewMessage([]byte("invalid")))

	in := stream.NewInspector(c)
	var dead []*broker.Message
	for deadline := time.Now().Add(10 * time.Second); len(dead) == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		dead, _ = in.DeadLetters(ctx, "orders", 10)
	}
	_ = s.Shutdown(ctx)
	for _, m := range dead {
		fmt.Printf("%s: %s (after %s attempts)\n", m.Payload, m.Metadata[stream.DeadReason], m.Metadata[stream.DeadAttempts])
	}
	// Output: invalid: attempt 3 of 3 failed: attempt 3: cannot parse order (after 3 attempts)
}

func Example_replay() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, _ := stream.NewPublisher(c)
	for _, p := range []string{"first", "second", "third"} {
		_ = pub.Publish(ctx, "events", broker.NewMessage([]byte(p)))
	}
	all, err := stream.Replay(ctx, c, "events", "", "", 0)
	if err != nil {
		log.Fatal(err)
	}
	// Replay from the second entry (inclusive), by its entry ID.
	from, _ := stream.Replay(ctx, c, "events", all[1].ID, "+", 10)
	for _, e := range from {
		fmt.Println(string(e.Message.Payload))
	}
	// Or iterate over a stream of any length, a page at a time.
	n := 0
	for _, err := range stream.ReplayAll(ctx, c, "events", "") {
		if err != nil {
			log.Fatal(err)
		}
		n++
	}
	fmt.Println("total:", n)
	// Output:
	// second
	// third
	// total: 3
}
