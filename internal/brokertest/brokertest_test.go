package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/internal/runner"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// TestSuiteOnListDouble runs the whole suite against listDouble (persistent, competing).
func TestSuiteOnListDouble(t *testing.T) {
	runDouble(t, listFeatures, newListDouble, "FanOut")
}

// TestSuiteOnPubSubDouble runs the whole suite against pubsubDouble (live only, fan-out).
func TestSuiteOnPubSubDouble(t *testing.T) {
	runDouble(t, pubsubFeatures, newPubSubDouble, "CompetingConsumers", "HandBackUnstarted", "PersistBeforeSubscribe")
}

// runDouble runs the suite and checks that exactly the cases wantSkipped were skipped, on every
// server (only among the cases that ran, so -run filters still work).
func runDouble(t *testing.T, f Features, ctor Constructor, wantSkipped ...string) {
	var mu sync.Mutex
	skipped := make(map[string]bool) // "<server>/<case>" -> skipped
	run(t, f, ctor, func(server, name string, skip bool) {
		mu.Lock()
		defer mu.Unlock()
		skipped[server+"/"+name] = skip
	})
	require.NotEmpty(t, skipped)
	for name, skip := range skipped {
		_, c, _ := strings.Cut(name, "/")
		assert.Equal(t, slices.Contains(wantSkipped, c), skip, "%s skipped", name)
	}
}

// TestSkips checks which cases each feature gates.
func TestSkips(t *testing.T) {
	skippedUnder := func(f Features) []string {
		var out []string
		for _, c := range cases {
			if c.needs(f) != "" {
				out = append(out, c.name)
			}
		}
		return out
	}
	all := Features{
		Persistent: true, Redelivery: true, DeadLetters: true, CompetingConsumers: true,
		FanOut: true, KnowsAttempt: true, HandsBackUnstarted: true,
	}
	assert.Empty(t, skippedUnder(all))
	assert.Equal(t,
		[]string{"PersistBeforeSubscribe", "Discard", "CompetingConsumers", "FanOut", "HandBackUnstarted"},
		skippedUnder(Features{}))
	// What pubsub declares.
	assert.Equal(t,
		[]string{"PersistBeforeSubscribe", "CompetingConsumers", "HandBackUnstarted"},
		skippedUnder(Features{DeadLetters: true, FanOut: true}))

	names := make(map[string]bool)
	for _, c := range cases {
		assert.False(t, names[c.name], "duplicate case %s", c.name)
		names[c.name] = true
		assert.NotNil(t, c.needs, c.name)
		assert.NotNil(t, c.run, c.name)
	}
}

func TestRecorder(t *testing.T) {
	t.Parallel()
	var next []string
	var mu sync.Mutex
	r := NewRecorder(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		next = append(next, m.ID)
		if m.ID == "b" {
			return errors.New("fail")
		}
		return nil
	}))
	ctx := context.Background()
	payload := []byte("p")
	md := map[string]string{"k": "v"}
	require.NoError(t, r.Handle(ctx, &broker.Message{ID: "a", Payload: payload, Metadata: md, Attempt: 1}))
	payload[0], md["k"] = 'X', "changed" // the handler does not own the message afterwards
	require.Error(t, r.Handle(ctx, &broker.Message{ID: "b", Attempt: 1}))
	require.Error(t, r.Handle(ctx, &broker.Message{ID: "b", Attempt: 2}))

	assert.Equal(t, []string{"a", "b", "b"}, next)
	assert.Equal(t, 2, r.Len())
	assert.Equal(t, 3, r.Deliveries())
	assert.Equal(t, 2, r.Count("b"))
	assert.Equal(t, 0, r.Count("c"))
	assert.Equal(t, map[string]int{"a": 1, "b": 2}, r.Counts())
	assert.Equal(t, []int{1, 2}, r.Attempts("b"))
	got := r.Received("a")
	require.Len(t, got, 1)
	assert.Equal(t, []byte("p"), got[0].Payload)
	assert.Equal(t, map[string]string{"k": "v"}, got[0].Metadata)
	assert.Len(t, r.Messages(), 3)

	// WaitFor and WaitCount return as soon as the deliveries happen.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			_ = r.Handle(ctx, &broker.Message{ID: fmt.Sprint("c", i%10)})
		}
	}()
	r.WaitFor(t, 12, 5*time.Second)
	r.WaitCount(t, "c9", 5, 5*time.Second)
	<-done
	assert.Equal(t, 53, r.Deliveries())

	// Timeouts fail the test.
	ft := &fakeTB{TB: t}
	ft.run(func() { r.WaitFor(ft, 13, 10*time.Millisecond) })
	assert.True(t, ft.failed)
	ft = &fakeTB{TB: t}
	ft.run(func() { r.WaitCount(ft, "a", 2, 10*time.Millisecond) })
	assert.True(t, ft.failed)
}

// fakeTB records Fatalf instead of failing the real test.
type fakeTB struct {
	testing.TB
	failed bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(string, ...any) {
	f.failed = true
	panic(f)
}

func (f *fakeTB) run(fn func()) {
	defer func() {
		if v := recover(); v != nil && v != any(f) {
			panic(v)
		}
	}()
	fn()
}

// --- TEST DOUBLES, not pattern implementations ------------------------------------------------
//
// The two doubles are the smallest brokers that pass the suite, so the suite can be exercised
// before (and independently of) the real packages, and both branches of its feature logic run:
//
//   - listDouble: RPUSH of a JSON envelope to publish, a BLPOP loop (1 s block) on
//     internal/runner to consume. Persistent, competing consumers, at most once: a handler error,
//     panic or ErrDiscard drops the message. Shutdown pushes fetched-but-unstarted values back
//     to the head of the list.
//   - pubsubDouble: PUBLISH (pipelined) and SUBSCRIBE. Live subscribers only, fan-out, at most
//     once; Shutdown drops what was received but not started.

type envelope struct {
	ID       string            `json:"id"`
	Payload  []byte            `json:"payload"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Time     time.Time         `json:"time"`
}

var listFeatures = Features{
	Persistent:         true,
	DeadLetters:        true, // ErrDiscard is dropped like every other error
	CompetingConsumers: true,
	HandsBackUnstarted: true,
}

func newListDouble(_ *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
	return &listPublisher{c: c}, &listSubscriber{c: c}
}

func doubleErr(op string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("double: %s: %w: %w", op, broker.ErrClosed, err)
	}
	return fmt.Errorf("double: %s: %w", op, err)
}

// encode fills ID and Time like Publish must, and returns the JSON envelope.
func encode(m *broker.Message, now time.Time) ([]byte, error) {
	if m.ID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		m.ID = hex.EncodeToString(b[:])
	}
	if m.Time.IsZero() {
		m.Time = now
	}
	return json.Marshal(envelope{ID: m.ID, Payload: m.Payload, Metadata: m.Metadata, Time: m.Time})
}

// decode returns the delivered message, or nil for a value that does not decode (dropped: the
// doubles have no dead letters).
func decode(topic string, raw []byte) *broker.Message {
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil
	}
	return &broker.Message{ID: env.ID, Topic: topic, Payload: env.Payload, Metadata: maps.Clone(env.Metadata), Time: env.Time}
}

// validate checks Subscribe's arguments like every implementation must.
func validate(topic string, h broker.Handler) error {
	if topic == "" || h == nil {
		return fmt.Errorf("double: %w: empty topic or nil handler", broker.ErrInvalidOption)
	}
	return nil
}

type listPublisher struct{ c redis.UniversalClient }

func (p *listPublisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	if topic == "" {
		return fmt.Errorf("double: %w: empty topic", broker.ErrInvalidOption)
	}
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now()
	vals := make([]any, len(msgs))
	for i, m := range msgs {
		v, err := encode(m, now)
		if err != nil {
			return fmt.Errorf("double: encode: %w", err)
		}
		vals[i] = v
	}
	if err := p.c.RPush(ctx, topic, vals...).Err(); err != nil {
		return doubleErr("RPUSH", err)
	}
	return nil
}

type listSubscriber struct{ c redis.UniversalClient }

func (s *listSubscriber) Subscribe(ctx context.Context, topic string, h broker.Handler) (broker.Subscription, error) {
	if err := validate(topic, h); err != nil {
		return nil, err
	}
	if err := s.c.Ping(ctx).Err(); err != nil {
		return nil, doubleErr("PING", err)
	}
	r := runner.New(ctx, runner.Options[string]{
		Concurrency: 2,
		Prefetch:    8,
		Work: func(ctx context.Context, raw string) {
			if m := decode(topic, []byte(raw)); m != nil {
				_ = runner.Call(ctx, h, m)
			}
		},
		OnStop: func(ctx context.Context, unstarted []string) {
			if len(unstarted) == 0 {
				return
			}
			vals := make([]any, len(unstarted))
			for i, v := range unstarted {
				vals[len(vals)-1-i] = v // LPUSH reverses: the first unstarted ends at the head
			}
			_ = s.c.LPush(ctx, topic, vals...).Err()
		},
	})
	r.Go(func() { s.fetch(r, topic) })
	return r, nil
}

func (s *listSubscriber) fetch(r *runner.Runner[string], topic string) {
	backoff := runner.Backoff{Min: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	failures := 0
	for {
		// Acquire does not prefer Stopping over a free slot, so check it first: a BLPOP started
		// after Shutdown would delay it by up to a second.
		select {
		case <-r.Stopping():
			return
		default:
		}
		if r.Acquire(1) == 0 {
			return
		}
		res, err := s.c.BLPop(r.Context(), time.Second, topic).Result()
		switch {
		case err == nil:
			failures = 0
			r.Push(res[1])
		case errors.Is(err, redis.Nil):
			r.Release(1)
		default:
			r.Release(1)
			failures++
			if !runner.Sleep(r.Stopping(), backoff.Delay(failures)) {
				return
			}
		}
	}
}

var pubsubFeatures = Features{
	DeadLetters: true, // ErrDiscard is dropped like every other error
	FanOut:      true,
}

func newPubSubDouble(_ *testing.T, c redis.UniversalClient) (broker.Publisher, broker.Subscriber) {
	return &pubsubPublisher{c: c}, &pubsubSubscriber{c: c}
}

type pubsubPublisher struct{ c redis.UniversalClient }

func (p *pubsubPublisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	if topic == "" {
		return fmt.Errorf("double: %w: empty topic", broker.ErrInvalidOption)
	}
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now()
	pipe := p.c.Pipeline()
	for _, m := range msgs {
		v, err := encode(m, now)
		if err != nil {
			return fmt.Errorf("double: encode: %w", err)
		}
		pipe.Publish(ctx, topic, v)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return doubleErr("PUBLISH", err)
	}
	return nil
}

type pubsubSubscriber struct{ c redis.UniversalClient }

func (s *pubsubSubscriber) Subscribe(ctx context.Context, topic string, h broker.Handler) (broker.Subscription, error) {
	if err := validate(topic, h); err != nil {
		return nil, err
	}
	ps := s.c.Subscribe(ctx, topic)
	if _, err := ps.Receive(ctx); err != nil { // the subscription is confirmed: live from here
		_ = ps.Close()
		return nil, doubleErr("SUBSCRIBE", err)
	}
	r := runner.New(ctx, runner.Options[string]{
		Concurrency: 2,
		Work: func(ctx context.Context, raw string) {
			if m := decode(topic, []byte(raw)); m != nil {
				_ = runner.Call(ctx, h, m)
			}
		},
	})
	ch := ps.Channel()
	r.Go(func() {
		defer func() { _ = ps.Close() }()
		for r.Acquire(1) == 1 {
			select {
			case <-r.Stopping():
				r.Release(1)
				return
			case msg := <-ch:
				r.Push(msg.Payload)
			}
		}
	})
	return r, nil
}
