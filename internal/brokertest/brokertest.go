// Package brokertest is the conformance suite every pattern package (queue, stream, pubsub) runs:
// the same cases, on every test server, with the guarantees each implementation declares in
// Features.
//
// A package wires it in from a test (this is ExampleRun, which the package's tests compile):
//
//	func TestConformance(t *testing.T) {
//		features := brokertest.Features{
//			Persistent: true, Redelivery: true, DeadLetters: true, CompetingConsumers: true,
//			KnowsAttempt: true, HandsBackUnstarted: true,
//		}
//		brokertest.Run(t, features, func(t *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
//			pub, err := queue.NewPublisher(c)
//			if err != nil {
//				t.Fatal(err)
//			}
//			sub, err := queue.NewSubscriber(c, queue.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
//			if err != nil {
//				t.Fatal(err)
//			}
//			return pub, sub
//		})
//	}
//
// The Discard case checks that the discarded message is never delivered again; whether it reached
// the dead letters is the package's own test to check, because the shared contract has no way to
// read them (each pattern keeps them in its own form).
//
// Run needs the test binary's TestMain to be redistest.Main (it uses the shared servers), and it
// must not be called from a parallel test: one case checks for leaked goroutines and relies on
// nothing else running beside it.
//
// Cases that need a feature the implementation lacks are skipped with the reason; some cases assert
// the opposite behaviour instead (without Redelivery, a failed message must not come back).
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
)

// Features declares what an implementation guarantees. Cases that need an absent feature are
// skipped with the reason; some assert the opposite behaviour when it is absent.
type Features struct {
	// Persistent: messages published before Subscribe are delivered (queue, stream); false for
	// pubsub.
	Persistent bool
	// Redelivery: a handler error (or panic, or a handler interrupted by the hard stop) leads to
	// redelivery with Attempt+1 (reliable queue, stream). Without it, a failed message is never
	// delivered again.
	Redelivery bool
	// DeadLetters: a handler error wrapping broker.ErrDiscard is never redelivered (it goes to the
	// dead letters, or is dropped where the pattern has none). True for every pattern.
	DeadLetters bool
	// CompetingConsumers: two subscriptions on one topic split the messages, each message going to
	// exactly one of them (queue; stream with one group).
	CompetingConsumers bool
	// FanOut: every subscription on a topic receives every message (pubsub).
	FanOut bool
	// KnowsAttempt: Attempt is 1 on the first delivery (queue, stream). Without it, Attempt may be
	// 0 (pubsub).
	KnowsAttempt bool
	// HandsBackUnstarted: Shutdown returns messages that were fetched but not started, so that
	// another subscription gets them.
	HandsBackUnstarted bool
}

// Constructor builds a publisher and a subscriber on the client. It is called once per case, and
// once per subscriber in the cases that start several (competing consumers, fan-out, a second
// subscription after Shutdown), each time with a client of its own. It should use test-friendly
// options: short retry backoffs, short leases and visibility timeouts, a blocking pub/sub buffer
// policy, and a handler concurrency below 20.
//
// The client belongs to the suite: the constructed values must not close it.
type Constructor func(t *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber)

// Timeouts. Waits for something that must happen are generous (they only matter when a case
// fails, and -race on a loaded machine is slow); negative checks use quietWindow.
const (
	// waitTimeout bounds a wait for a delivery, a redelivery or a stop.
	waitTimeout = 10 * time.Second
	// opTimeout bounds one Publish, Subscribe or Shutdown that must succeed.
	opTimeout = 10 * time.Second
	// quietWindow is how long a negative check ("nothing more arrives", "Shutdown has not
	// returned yet") watches.
	quietWindow = 300 * time.Millisecond
	// reconnectTimeout bounds recovery after a server restart.
	reconnectTimeout = 5 * time.Second
	// tick is the polling interval of require.Eventually.
	tick = 5 * time.Millisecond
)

// Run runs every case against every shared server (redistest.Servers) as subtests named
// "<server.Name>/<CaseName>". The cases run in parallel, each on its own topic (redistest.Topic)
// and its own clients, except NoGoroutineLeak, which runs first on each server, alone. Cases that
// restart a server start a private one of the same kind.
func Run(t *testing.T, f Features, newPubSub Constructor) {
	t.Helper()
	run(t, f, newPubSub, nil)
}

// testCase is one conformance case.
type testCase struct {
	name string
	// serial cases run alone, before the parallel ones.
	serial bool
	// needs returns why the case is skipped under f, or "" to run it.
	needs func(f Features) string
	run   func(t *testing.T, e *env)
}

// always is the needs of a case that runs for every implementation.
func always(Features) string { return "" }

// run is Run with a hook called when each case ends, telling whether it was skipped (for the
// suite's own tests).
func run(t *testing.T, f Features, newPubSub Constructor, ended func(server, name string, skipped bool)) {
	t.Helper()
	require.NotNil(t, newPubSub, "brokertest: nil Constructor")
	for _, s := range redistest.Servers(t) {
		t.Run(s.Name, func(t *testing.T) {
			for _, serial := range []bool{true, false} {
				for _, c := range cases {
					if c.serial != serial {
						continue
					}
					t.Run(c.name, func(t *testing.T) {
						if ended != nil {
							t.Cleanup(func() { ended(s.Name, c.name, t.Skipped()) })
						}
						if reason := c.needs(f); reason != "" {
							t.Skip(reason)
						}
						if !c.serial {
							t.Parallel()
						}
						c.run(t, newEnv(t, s, f, newPubSub))
					})
				}
			}
		})
	}
}

// env is one case's view of the suite: its server, topic and subscriptions.
type env struct {
	t     *testing.T
	srv   *redistest.Server
	f     Features
	newPS Constructor
	topic string

	mu   sync.Mutex
	subs []*trackedSub
}

type trackedSub struct {
	broker.Subscription
	topic string
	down  bool // shut down by the cleanup
}

func newEnv(t *testing.T, s *redistest.Server, f Features, newPS Constructor) *env {
	return &env{t: t, srv: s, f: f, newPS: newPS, topic: redistest.Topic(t)}
}

// pubSub calls the constructor with a new client of the case's server.
func (e *env) pubSub() (broker.Publisher, broker.Subscriber) {
	e.t.Helper()
	return e.pubSubOn(e.srv.Client(e.t))
}

// pubSubOn calls the constructor with c.
func (e *env) pubSubOn(c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
	e.t.Helper()
	pub, sub := e.newPS(e.t, c)
	require.NotNil(e.t, pub, "Constructor returned a nil Publisher")
	require.NotNil(e.t, sub, "Constructor returned a nil Subscriber")
	return pub, sub
}

// subscribe subscribes with a background context; the subscription is shut down at cleanup.
func (e *env) subscribe(sub broker.Subscriber, topic string, h broker.Handler) broker.Subscription {
	e.t.Helper()
	return e.subscribeCtx(context.Background(), sub, topic, h)
}

// subscribeCtx subscribes with ctx and shuts the subscription down at cleanup, checking the
// error. Every subscription of the case is shut down concurrently, before any client created
// before the subscription is closed (cleanups run last-registered first).
func (e *env) subscribeCtx(ctx context.Context, sub broker.Subscriber, topic string, h broker.Handler) broker.Subscription {
	e.t.Helper()
	s, err := subscribeWithin(ctx, sub, topic, h)
	require.NoError(e.t, err, "Subscribe %s", topic)
	require.NotNil(e.t, s, "Subscribe returned a nil Subscription and no error")
	e.mu.Lock()
	e.subs = append(e.subs, &trackedSub{Subscription: s, topic: topic})
	e.mu.Unlock()
	e.t.Cleanup(e.shutdownAll)
	return s
}

// subscribeWithin calls Subscribe and fails if it does not return within opTimeout. ctx stays
// the subscription's context, so it cannot carry the timeout itself.
func subscribeWithin(ctx context.Context, sub broker.Subscriber, topic string, h broker.Handler) (broker.Subscription, error) {
	type result struct {
		s   broker.Subscription
		err error
	}
	res := make(chan result, 1)
	go func() {
		s, err := sub.Subscribe(ctx, topic, h)
		res <- result{s, err}
	}()
	select {
	case r := <-res:
		return r.s, r.err
	case <-time.After(opTimeout):
		return nil, fmt.Errorf("brokertest: Subscribe %s did not return within %v", topic, opTimeout)
	}
}

// shutdownAll shuts down, concurrently, every subscription not shut down yet.
func (e *env) shutdownAll() {
	e.mu.Lock()
	var todo []*trackedSub
	for _, s := range e.subs {
		if !s.down {
			s.down = true
			todo = append(todo, s)
		}
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range todo {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			err := s.Shutdown(ctx)
			if !shutdownOK(err) {
				e.t.Errorf("cleanup: Shutdown of the subscription to %s: %v", s.topic, err)
				return
			}
			select {
			case <-s.Done():
			case <-time.After(waitTimeout):
				e.t.Errorf("cleanup: Done of the subscription to %s not closed %v after Shutdown returned", s.topic, waitTimeout)
			}
		})
	}
	wg.Wait()
}

// shutdownOK reports whether err is an acceptable result of Shutdown on a subscription that may
// have stopped already: nil, or ErrClosed ("use of a stopped subscription").
func shutdownOK(err error) bool { return err == nil || errors.Is(err, broker.ErrClosed) }

// publish publishes msgs and requires success.
func (e *env) publish(pub broker.Publisher, topic string, msgs ...*broker.Message) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	require.NoError(e.t, pub.Publish(ctx, topic, msgs...), "Publish %d messages to %s", len(msgs), topic)
}

// messages returns n new messages with payloads "<prefix>-<i>".
func messages(prefix string, n int) []*broker.Message {
	out := make([]*broker.Message, n)
	for i := range out {
		out[i] = broker.NewMessage(fmt.Appendf(nil, "%s-%d", prefix, i))
	}
	return out
}

// ids returns the IDs of msgs, requiring each to be set and unique.
func ids(t *testing.T, msgs []*broker.Message) []string {
	t.Helper()
	seen := make(map[string]bool, len(msgs))
	out := make([]string, len(msgs))
	for i, m := range msgs {
		require.NotEmpty(t, m.ID, "Publish left message %d without an ID", i)
		require.False(t, seen[m.ID], "Publish assigned ID %s twice", m.ID)
		seen[m.ID] = true
		out[i] = m.ID
	}
	return out
}

// quiet watches rec for quietWindow and fails if its delivery count changes: nothing more may
// arrive (no duplicate, no redelivery).
func quiet(t *testing.T, what string, recs ...*Recorder) {
	t.Helper()
	total := func() int {
		n := 0
		for _, r := range recs {
			n += r.Deliveries()
		}
		return n
	}
	before := total()
	assert.Never(t, func() bool { return total() != before }, quietWindow, tick,
		"%s: a delivery arrived after the expected ones (duplicate or redelivery)", what)
}

// exactlyOnce asserts that every ID was delivered exactly once in total over recs, and nothing
// else was delivered.
func exactlyOnce(t *testing.T, want []string, recs ...*Recorder) {
	t.Helper()
	total := make(map[string]int)
	for _, r := range recs {
		for id, n := range r.Counts() {
			total[id] += n
		}
	}
	wanted := make(map[string]bool, len(want))
	for _, id := range want {
		wanted[id] = true
		if n := total[id]; n != 1 {
			t.Errorf("message %s delivered %d times, want exactly once", id, n)
		}
	}
	for id, n := range total {
		if !wanted[id] {
			t.Errorf("unknown message %s delivered %d times", id, n)
		}
	}
}

// gate blocks handlers until opened. It is opened at cleanup at the latest, so a failing case
// never leaves a handler blocked (and its Shutdown hanging).
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open()                 { g.once.Do(func() { close(g.ch) }) }
func (g *gate) wait() <-chan struct{} { return g.ch }

// signal sends on ch without blocking (ch is buffered; extra signals are dropped).
func signal[T any](ch chan T, v T) {
	select {
	case ch <- v:
	default:
	}
}

// receive waits for a value on ch and fails the test after timeout.
func receive[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		var zero T
		t.Fatalf("%s: nothing within %v", what, timeout)
		return zero
	}
}

// closedWithin waits for done and fails the test after timeout.
func closedWithin(t *testing.T, done <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("%s: not closed within %v", what, timeout)
	}
}

// shutdown calls Shutdown with a deadline of d and returns its error.
func shutdown(s broker.Subscription, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.Shutdown(ctx)
}

// shutdownAsync calls Shutdown (deadline opTimeout) in a goroutine and returns its result channel.
func shutdownAsync(s broker.Subscription) <-chan error {
	res := make(chan error, 1)
	go func() { res <- shutdown(s, opTimeout) }()
	return res
}
