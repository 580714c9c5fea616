package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/pubsub"
)

// exampleRedis starts an in-memory Redis for an example and returns a
// client and a function that stops both.
func exampleRedis() (*redis.Client, func()) {
	m, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	c := redis.NewClient(&redis.Options{
		Addr:                     m.Addr(),
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	return c, func() { _ = c.Close(); m.Close() }
}

// waitUntil polls cond, so that an example prints only after the handlers
// have run.
func waitUntil(cond func() bool) {
	for deadline := time.Now().Add(5 * time.Second); !cond() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}

// Every subscriber of a channel gets every message published after its
// Subscribe returned.
func Example() {
	c, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	sub, _ := pubsub.NewSubscriber(c)
	done := make(chan struct{})
	s, err := sub.Subscribe(ctx, "news", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		fmt.Printf("%s: %s\n", m.Topic, m.Payload)
		if string(m.Payload) == "bye" {
			close(done)
		}
		return nil
	}))
	if err != nil {
		panic(err)
	}
	defer s.Shutdown(ctx)

	pub, _ := pubsub.NewPublisher(c)
	// Subscribe returned, so the subscription is live: nothing is missed.
	counts, _ := pub.PublishCount(ctx, "news", broker.NewMessage([]byte("hello")), broker.NewMessage([]byte("bye")))
	<-done
	fmt.Println("receivers per message:", counts)
	// Output:
	// news: hello
	// news: bye
	// receivers per message: [1 1]
}

// A pattern subscription receives every matching channel; Topic is the
// channel the message was published to.
func ExampleWithPattern() {
	c, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	sub, _ := pubsub.NewSubscriber(c, pubsub.WithPattern())
	got := make(chan string, 3)
	s, err := sub.Subscribe(ctx, "orders.*", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		got <- m.Topic + " " + string(m.Payload)
		return nil
	}))
	if err != nil {
		panic(err)
	}
	defer s.Shutdown(ctx)

	pub, _ := pubsub.NewPublisher(c)
	_ = pub.Publish(ctx, "orders.eu", broker.NewMessage([]byte("1")))
	_ = pub.Publish(ctx, "invoices", broker.NewMessage([]byte("2")))
	_ = pub.Publish(ctx, "orders.us", broker.NewMessage([]byte("3")))
	fmt.Println(<-got)
	fmt.Println(<-got)
	// Output:
	// orders.eu 1
	// orders.us 3
}

// With a buffer of 2 and DropNewest, a subscriber whose handler is stuck
// keeps the first messages and counts every one it drops.
func ExampleWithOverflow() {
	c, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	sub, _ := pubsub.NewSubscriber(c, pubsub.WithBuffer(2), pubsub.WithOverflow(pubsub.DropNewest))
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	var handled []string
	s, err := sub.Listen(ctx, "ticks", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		handled = append(handled, string(m.Payload))
		return nil
	}))
	if err != nil {
		panic(err)
	}

	pub, _ := pubsub.NewPublisher(c)
	_ = pub.Publish(ctx, "ticks", broker.NewMessage([]byte("0")))
	<-started // message 0 is in the handler, the buffer is empty
	for i := 1; i < 6; i++ {
		_ = pub.Publish(ctx, "ticks", broker.NewMessage(fmt.Append(nil, i)))
	}
	// One message in the handler, two buffered, three dropped: wait until all
	// six are accounted for (Received counts a message before it is placed).
	waitUntil(func() bool {
		st := s.Stats()
		return st.Received == 6 && 1+uint64(st.Buffered)+st.DroppedOverflow == 6
	})
	close(release)
	waitUntil(func() bool { return s.Stats().Delivered == 3 })
	_ = s.Shutdown(ctx)

	st := s.Stats()
	fmt.Println("handled:", handled)
	fmt.Println("dropped (overflow):", st.DroppedOverflow)
	fmt.Println("buffer high water:", st.BufferHighWater, "of", st.BufferCapacity)
	// Output:
	// handled: [0 1 2]
	// dropped (overflow): 3
	// buffer high water: 2 of 2
}

// Stats tells what was lost and why. Here a handler fails once and a
// foreign client publishes a value that claims to be an envelope but is not.
func ExampleSubscription_Stats() {
	c, stop := exampleRedis()
	defer stop()
	ctx := context.Background()

	sub, _ := pubsub.NewSubscriber(c)
	s, err := sub.Listen(ctx, "jobs", broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if string(m.Payload) == "bad" {
			return errors.New("cannot handle")
		}
		return nil
	}))
	if err != nil {
		panic(err)
	}

	pub, _ := pubsub.NewPublisher(c)
	_ = pub.Publish(ctx, "jobs", broker.NewMessage([]byte("good")), broker.NewMessage([]byte("bad")))
	_ = c.Publish(ctx, "jobs", "\xffBK\x01truncated").Err()
	// A foreign value without the envelope prefix is delivered as payload.
	_ = c.Publish(ctx, "jobs", "plain text").Err()

	waitUntil(func() bool { st := s.Stats(); return st.Delivered+st.HandlerErrors == 3 })
	_ = s.Shutdown(ctx)

	st := s.Stats()
	fmt.Println("received:", st.Received)
	fmt.Println("delivered:", st.Delivered)
	fmt.Println("handler errors:", st.HandlerErrors)
	fmt.Println("dropped malformed:", st.DroppedMalformed)
	fmt.Println("gaps:", st.Gaps, "reconnects:", st.Reconnects)
	fmt.Println("lost in total:", st.Lost())
	// Output:
	// received: 4
	// delivered: 2
	// handler errors: 1
	// dropped malformed: 1
	// gaps: 0 reconnects: 0
	// lost in total: 2
}
