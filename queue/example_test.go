package queue_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/queue"
)

// exampleRedis starts an in-memory Redis and a client for it. Real code
// gets its client from broker.Open.
func exampleRedis() (redis.UniversalClient, func()) {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		panic(err)
	}
	c := redis.NewClient(&redis.Options{
		Addr:                     m.Addr(),
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	return c, func() { _ = c.Close(); m.Close() }
}

func ExamplePublisher_Publish() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, err := queue.NewPublisher(c)
	if err != nil {
		panic(err)
	}
	// Several messages: one RPUSH, one round trip.
	err = pub.Publish(ctx, "emails",
		broker.NewMessage([]byte("welcome alice")),
		&broker.Message{Payload: []byte("welcome bob"), Metadata: map[string]string{"lang": "fr"}},
	)
	if err != nil {
		panic(err)
	}
	st, err := queue.NewInspector(c).Stats(ctx, "emails")
	if err != nil {
		panic(err)
	}
	fmt.Println("ready:", st.Ready)
	// Output:
	// ready: 2
}

func Example_simple() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, _ := queue.NewPublisher(c)
	_ = pub.Publish(ctx, "jobs", broker.NewMessage([]byte("one")), broker.NewMessage([]byte("two")), broker.NewMessage([]byte("three")))

	// Simple mode: at most once. One worker keeps the FIFO order visible.
	sub, _ := queue.NewSubscriber(c, queue.WithSimple(), queue.WithConcurrency(1), queue.WithBlock(time.Second))
	got := make(chan string)
	s, err := sub.Subscribe(ctx, "jobs", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		got <- string(m.Payload)
		return nil
	}))
	if err != nil {
		panic(err)
	}
	for range 3 {
		fmt.Println(<-got)
	}
	_ = s.Shutdown(ctx)
	// Output:
	// one
	// two
	// three
}

func Example_reliableRetry() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, _ := queue.NewPublisher(c)
	_ = pub.Publish(ctx, "payments", broker.NewMessage([]byte("charge 42")))

	// Reliable mode (the default): a failed delivery comes back after a
	// backoff, with Attempt counting deliveries.
	sub, _ := queue.NewSubscriber(c, queue.WithBackoff(10*time.Millisecond, 100*time.Millisecond), queue.WithBlock(time.Second))
	handled := make(chan struct{})
	s, err := sub.Subscribe(ctx, "payments", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if m.Attempt == 1 {
			fmt.Printf("attempt %d: %s failed\n", m.Attempt, m.Payload)
			return errors.New("card processor unavailable")
		}
		fmt.Printf("attempt %d: %s done\n", m.Attempt, m.Payload)
		close(handled)
		return nil
	}))
	if err != nil {
		panic(err)
	}
	<-handled
	_ = s.Shutdown(ctx)
	// Output:
	// attempt 1: charge 42 failed
	// attempt 2: charge 42 done
}

func ExamplePublisher_PublishAt() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()

	pub, _ := queue.NewPublisher(c)
	sub, _ := queue.NewSubscriber(c, queue.WithPollInterval(50*time.Millisecond), queue.WithBlock(time.Second))
	delivered := make(chan time.Time, 1)
	s, err := sub.Subscribe(ctx, "reminders", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		delivered <- time.Now()
		return nil
	}))
	if err != nil {
		panic(err)
	}
	at := time.Now().Add(200 * time.Millisecond)
	_ = pub.PublishAt(ctx, "reminders", at, broker.NewMessage([]byte("stand up")))
	fmt.Println("delivered on time or later:", !(<-delivered).Before(at.Truncate(time.Millisecond)))
	_ = s.Shutdown(ctx)
	// Output:
	// delivered on time or later: true
}

func ExampleInspector_Requeue() {
	c, done := exampleRedis()
	defer done()
	ctx := context.Background()
	in := queue.NewInspector(c)

	pub, _ := queue.NewPublisher(c)
	_ = pub.Publish(ctx, "imports", broker.NewMessage([]byte("file.csv")))

	// The first handler rejects the message for good: it goes to the dead letters.
	sub, _ := queue.NewSubscriber(c, queue.WithBlock(time.Second))
	s, _ := sub.Subscribe(ctx, "imports", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		return fmt.Errorf("parser missing: %w", broker.ErrDiscard)
	}))
	for {
		if st, _ := in.Stats(ctx, "imports"); st.Dead == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = s.Shutdown(ctx)
	dead, _ := in.DeadLetters(ctx, "imports", 0, 10)
	fmt.Printf("dead: %s after %d attempt: %s\n", dead[0].Message.Payload, dead[0].Attempts, dead[0].Reason)

	// After the fix, requeue it and a new handler succeeds.
	n, _ := in.Requeue(ctx, "imports", 10)
	fmt.Println("requeued:", n)
	handled := make(chan string)
	s, _ = sub.Subscribe(ctx, "imports", broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		handled <- fmt.Sprintf("handled %s, attempt %d", m.Payload, m.Attempt)
		return nil
	}))
	fmt.Println(<-handled)
	_ = s.Shutdown(ctx)
	// Output:
	// dead: file.csv after 1 attempt: parser missing: broker: discard message
	// requeued: 1
	// handled file.csv, attempt 1
}
