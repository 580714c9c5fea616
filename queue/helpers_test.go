package queue_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
	"github.com/redisbroker/broker/queue"
)

// fast are subscriber options that keep tests quick: short backoff, block
// and lease.
func fast(extra ...queue.SubscriberOption) []queue.SubscriberOption {
	return append([]queue.SubscriberOption{
		queue.WithBackoff(10*time.Millisecond, 50*time.Millisecond),
		queue.WithBlock(time.Second),
		queue.WithLease(2 * time.Second),
		queue.WithPollInterval(100 * time.Millisecond),
	}, extra...)
}

// modeOpts is fast(extra...), plus WithSimple when mode is "simple": the
// options of tests that run in both modes.
func modeOpts(mode string, extra ...queue.SubscriberOption) []queue.SubscriberOption {
	opts := fast(extra...)
	if mode == "simple" {
		opts = append(opts, queue.WithSimple())
	}
	return opts
}

// recorder collects delivered messages.
type recorder struct {
	mu   sync.Mutex
	msgs []*broker.Message
	ids  map[string]int
}

func newRecorder() *recorder { return &recorder{ids: make(map[string]int)} }

func (r *recorder) add(m *broker.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp := *m
	cp.Payload = append([]byte(nil), m.Payload...)
	r.msgs = append(r.msgs, &cp)
	r.ids[m.ID]++
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) all() []*broker.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*broker.Message(nil), r.msgs...)
}

func (r *recorder) payloads() []string {
	var out []string
	for _, m := range r.all() {
		out = append(out, string(m.Payload))
	}
	return out
}

func subscribe(t *testing.T, c redis.UniversalClient, topic string, h broker.HandlerFunc, opts ...queue.SubscriberOption) broker.Subscription {
	t.Helper()
	s, err := queue.NewSubscriber(c, opts...)
	require.NoError(t, err)
	sub, err := s.Subscribe(context.Background(), topic, h)
	require.NoError(t, err)
	t.Cleanup(func() { shutdown(t, sub) })
	return sub
}

// subscribeRecorder subscribes a handler that records and acks every
// message, and returns the recorder.
func subscribeRecorder(t *testing.T, c redis.UniversalClient, topic string, opts ...queue.SubscriberOption) *recorder {
	t.Helper()
	rec := newRecorder()
	subscribe(t, c, topic, func(_ context.Context, m *broker.Message) error {
		rec.add(m)
		return nil
	}, opts...)
	return rec
}

func shutdown(t *testing.T, sub broker.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, sub.Shutdown(ctx))
}

func publisher(t *testing.T, c redis.UniversalClient, opts ...queue.PublisherOption) *queue.Publisher {
	t.Helper()
	p, err := queue.NewPublisher(c, opts...)
	require.NoError(t, err)
	return p
}

func msgs(prefix string, n int) []*broker.Message {
	out := make([]*broker.Message, n)
	for i := range out {
		out[i] = broker.NewMessage([]byte(prefix + itoa(i)))
	}
	return out
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}

func stats(t *testing.T, c redis.UniversalClient, topic string) queue.Stats {
	t.Helper()
	st, err := queue.NewInspector(c).Stats(context.Background(), topic)
	require.NoError(t, err)
	return st
}

const waitFor = 10 * time.Second
const tick = 5 * time.Millisecond

func decode(t *testing.T, v string) *broker.Message {
	t.Helper()
	m, err := wire.Decode([]byte(v))
	require.NoError(t, err)
	return m
}

// hook is a go-redis hook built from functions; nil fields pass through.
type hook struct {
	process  func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error
	pipeline func(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error
}

func (h *hook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	if h.process == nil {
		return next
	}
	return func(ctx context.Context, cmd redis.Cmder) error { return h.process(ctx, cmd, next) }
}

func (h *hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	if h.pipeline == nil {
		return next
	}
	return func(ctx context.Context, cmds []redis.Cmder) error { return h.pipeline(ctx, cmds, next) }
}

// holdScans makes every SCAN sent through c wait until the returned
// release is called, so that no sweep for orphaned processing lists
// interferes with what a test sets up. Defer release in the test function:
// deferred calls run before cleanups, and a subscription's Shutdown waits
// for its sweep.
func holdScans(c redis.UniversalClient) (release func()) {
	ch := make(chan struct{})
	c.AddHook(&hook{process: func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if cmd.Name() == "scan" {
			<-ch
		}
		return next(ctx, cmd)
	}})
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}
