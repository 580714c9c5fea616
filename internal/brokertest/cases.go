package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
)

// cases is the suite, in the order the cases are started.
var cases = []testCase{
	{name: "NoGoroutineLeak", serial: true, needs: always, run: testNoGoroutineLeak},
	{name: "RoundTrip", needs: always, run: testRoundTrip},
	{name: "LiveAfterSubscribe", needs: always, run: testLiveAfterSubscribe},
	{name: "PersistBeforeSubscribe", needs: needPersistent, run: testPersistBeforeSubscribe},
	{name: "RedeliveryOnError", needs: always, run: testRedeliveryOnError},
	{name: "Discard", needs: needDeadLetters, run: testDiscard},
	{name: "PanicIsError", needs: always, run: testPanicIsError},
	{name: "CompetingConsumers", needs: needCompeting, run: testCompetingConsumers},
	{name: "FanOut", needs: needFanOut, run: testFanOut},
	{name: "ShutdownWaitsForInFlight", needs: always, run: testShutdownWaitsForInFlight},
	{name: "ShutdownDeadline", needs: always, run: testShutdownDeadline},
	{name: "HandBackUnstarted", needs: needHandsBack, run: testHandBackUnstarted},
	{name: "CancelIsHardStop", needs: always, run: testCancelIsHardStop},
	{name: "ConcurrentPublish", needs: always, run: testConcurrentPublish},
	{name: "ClosedClient", needs: always, run: testClosedClient},
	{name: "ReconnectAfterRestart", needs: always, run: testReconnectAfterRestart},
	{name: "InvalidArgs", needs: always, run: testInvalidArgs},
}

func needPersistent(f Features) string {
	if !f.Persistent {
		return "not Persistent: messages published before Subscribe are not delivered"
	}
	return ""
}

func needDeadLetters(f Features) string {
	if !f.DeadLetters {
		return "no DeadLetters: ErrDiscard is not guaranteed to stop redelivery"
	}
	return ""
}

func needCompeting(f Features) string {
	if !f.CompetingConsumers {
		return "no CompetingConsumers: subscriptions on one topic do not split the messages"
	}
	return ""
}

func needFanOut(f Features) string {
	if !f.FanOut {
		return "no FanOut: subscriptions on one topic do not each get every message"
	}
	return ""
}

func needHandsBack(f Features) string {
	if !f.HandsBackUnstarted {
		return "not HandsBackUnstarted: Shutdown does not return fetched but unstarted messages"
	}
	return ""
}

// testNoGoroutineLeak runs alone: a graceful Shutdown, a hard stop and a Subscribe on a closed
// client leave no goroutine behind once the client is closed.
func testNoGoroutineLeak(t *testing.T, e *env) {
	before := goleak.IgnoreCurrent()
	c := e.srv.Client(t)
	pub, sub := e.pubSubOn(c)

	rec := NewRecorder(nil)
	s1, err := subscribeWithin(context.Background(), sub, e.topic, rec)
	require.NoError(t, err)
	msgs := messages("leak", 3)
	e.publish(pub, e.topic, msgs...)
	rec.WaitFor(t, len(msgs), waitTimeout)
	require.NoError(t, shutdown(s1, opTimeout), "Shutdown")
	closedWithin(t, s1.Done(), waitTimeout, "Done after Shutdown")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec2 := NewRecorder(nil)
	topic2 := e.topic + "-cancel"
	s2, err := subscribeWithin(ctx, sub, topic2, rec2)
	require.NoError(t, err)
	e.publish(pub, topic2, broker.NewMessage([]byte("x")))
	rec2.WaitFor(t, 1, waitTimeout)
	cancel()
	closedWithin(t, s2.Done(), waitTimeout, "Done after cancelling the Subscribe context")

	closed := e.srv.Client(t)
	_, sub3 := e.pubSubOn(closed)
	require.NoError(t, closed.Close())
	s3, err := subscribeWithin(context.Background(), sub3, e.topic+"-closed", NewRecorder(nil))
	assert.Error(t, err, "Subscribe on a closed client")
	if s3 != nil {
		assert.True(t, shutdownOK(shutdown(s3, opTimeout)))
	}

	require.NoError(t, c.Close())
	goleak.VerifyNone(t, before)
}

// testRoundTrip checks every field of a delivered message.
func testRoundTrip(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	rec := NewRecorder(nil)
	e.subscribe(sub, e.topic, rec)

	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	customTime := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	custom := &broker.Message{ID: "custom-" + e.topic, Payload: []byte("caller-set ID and Time"), Time: customTime}
	singles := []*broker.Message{
		{Payload: binary},
		{Payload: []byte{}},
		{Payload: []byte("with metadata"), Metadata: map[string]string{
			"key": "value", "empty": "", "utf8": "héllo wörld ✓", "spaced key": "a=b; c\n\x00d",
		}},
		custom,
	}
	start := time.Now()
	for _, m := range singles {
		e.publish(pub, e.topic, m)
	}
	multi := messages("multi", 3)
	e.publish(pub, e.topic, multi[0], multi[1], multi[2])

	all := append(append([]*broker.Message(nil), singles...), multi...)
	want := ids(t, all)
	assert.Equal(t, "custom-"+e.topic, custom.ID, "Publish replaced a caller-set ID")
	for _, m := range all {
		require.False(t, m.Time.IsZero(), "Publish left Time zero on message %s", m.ID)
		if m != custom {
			assert.WithinDuration(t, start, m.Time, 5*time.Second, "Time filled by Publish")
		}
	}
	assert.True(t, custom.Time.Equal(customTime), "Publish replaced a caller-set Time: %v", custom.Time)

	rec.WaitFor(t, len(all), waitTimeout)
	quiet(t, "RoundTrip", rec)
	exactlyOnce(t, want, rec)
	for _, m := range all {
		got := rec.Received(m.ID)
		if !assert.Len(t, got, 1, "deliveries of %s", m.ID) {
			continue
		}
		g := got[0]
		assert.Equal(t, m.ID, g.ID)
		assert.Equal(t, e.topic, g.Topic, "Topic of %s", m.ID)
		if len(m.Payload) == 0 {
			assert.Empty(t, g.Payload, "Payload of %s", m.ID)
		} else {
			assert.Equal(t, m.Payload, g.Payload, "Payload of %s", m.ID)
		}
		if len(m.Metadata) == 0 {
			assert.Empty(t, g.Metadata, "Metadata of %s", m.ID)
		} else {
			assert.Equal(t, m.Metadata, g.Metadata, "Metadata of %s", m.ID)
		}
		assert.WithinDuration(t, m.Time, g.Time, time.Millisecond, "Time of %s (published %v, delivered %v)", m.ID, m.Time, g.Time)
		if m != custom {
			assert.WithinDuration(t, time.Now(), g.Time, time.Minute, "Time of %s", m.ID)
		}
		if e.f.KnowsAttempt {
			assert.Equal(t, 1, g.Attempt, "Attempt of %s", m.ID)
		} else {
			assert.Contains(t, []int{0, 1}, g.Attempt, "Attempt of %s", m.ID)
		}
	}
}

// testLiveAfterSubscribe: a message published right after Subscribe returns is delivered. Five
// rounds on fresh topics, to catch a Subscribe that returns before it is live.
func testLiveAfterSubscribe(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	for i := range 5 {
		topic := fmt.Sprintf("%s-%d", e.topic, i)
		rec := NewRecorder(nil)
		e.subscribe(sub, topic, rec)
		m := broker.NewMessage([]byte("live"))
		e.publish(pub, topic, m)
		rec.WaitFor(t, 1, waitTimeout)
		assert.Equal(t, 1, rec.Count(m.ID), "round %d", i)
	}
}

// testPersistBeforeSubscribe: messages published before Subscribe are delivered after it.
func testPersistBeforeSubscribe(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	msgs := messages("before", 10)
	e.publish(pub, e.topic, msgs[0])
	e.publish(pub, e.topic, msgs[1:]...)
	rec := NewRecorder(nil)
	e.subscribe(sub, e.topic, rec)
	rec.WaitFor(t, len(msgs), waitTimeout)
	quiet(t, "PersistBeforeSubscribe", rec)
	exactlyOnce(t, ids(t, msgs), rec)
}

// testRedeliveryOnError: with Redelivery, a message whose handler fails twice comes back with
// Attempt 2, then 3, and never again once acked. Without, it never comes back. Other messages
// flow either way.
func testRedeliveryOnError(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	failing := broker.NewMessage([]byte("fails twice"))
	var rec *Recorder
	rec = NewRecorder(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if m.ID == failing.ID && rec.Count(m.ID) <= 2 {
			return errors.New("brokertest: transient failure")
		}
		return nil
	}))
	e.subscribe(sub, e.topic, rec)
	e.publish(pub, e.topic, failing)
	ok := broker.NewMessage([]byte("fine"))
	e.publish(pub, e.topic, ok)

	rec.WaitFor(t, 2, waitTimeout)
	if e.f.Redelivery {
		rec.WaitCount(t, failing.ID, 3, waitTimeout)
		quiet(t, "after the ack", rec)
		assert.Equal(t, 3, rec.Count(failing.ID), "deliveries of the failing message")
		if e.f.KnowsAttempt {
			assert.Equal(t, []int{1, 2, 3}, rec.Attempts(failing.ID), "attempts")
		}
	} else {
		quiet(t, "without Redelivery", rec)
		assert.Equal(t, 1, rec.Count(failing.ID), "a failed message was redelivered without Redelivery")
	}
	assert.Equal(t, 1, rec.Count(ok.ID), "deliveries of the good message")
}

// testDiscard: a handler error wrapping ErrDiscard is never redelivered; other messages flow.
func testDiscard(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	bad := broker.NewMessage([]byte("discard me"))
	rec := NewRecorder(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if m.ID == bad.ID {
			return fmt.Errorf("bad: %w", broker.ErrDiscard)
		}
		return nil
	}))
	e.subscribe(sub, e.topic, rec)
	e.publish(pub, e.topic, bad)
	good := messages("good", 3)
	e.publish(pub, e.topic, good...)
	rec.WaitFor(t, 1+len(good), waitTimeout)
	quiet(t, "after ErrDiscard", rec)
	exactlyOnce(t, append(ids(t, good), bad.ID), rec)
}

// testPanicIsError: a panicking handler does not kill the subscription; with Redelivery the
// message comes back with Attempt 2.
func testPanicIsError(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	boom := broker.NewMessage([]byte("panics once"))
	var rec *Recorder
	rec = NewRecorder(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if m.ID == boom.ID && rec.Count(m.ID) == 1 {
			panic("brokertest: deliberate panic in a handler")
		}
		return nil
	}))
	s := e.subscribe(sub, e.topic, rec)
	e.publish(pub, e.topic, boom)
	rec.WaitCount(t, boom.ID, 1, waitTimeout)

	later := messages("after-panic", 3)
	e.publish(pub, e.topic, later...)
	rec.WaitFor(t, 1+len(later), waitTimeout)
	if e.f.Redelivery {
		rec.WaitCount(t, boom.ID, 2, waitTimeout)
		if e.f.KnowsAttempt {
			assert.Equal(t, []int{1, 2}, rec.Attempts(boom.ID)[:2], "attempts of the panicked message")
		}
	}
	quiet(t, "after the panic", rec)
	want := 1
	if e.f.Redelivery {
		want = 2
	}
	assert.Equal(t, want, rec.Count(boom.ID), "deliveries of the panicked message")
	for _, m := range later {
		assert.Equal(t, 1, rec.Count(m.ID), "deliveries of %s", m.ID)
	}
	select {
	case <-s.Done():
		t.Fatal("the subscription stopped after a handler panicked")
	default:
	}
}

// testCompetingConsumers: two subscriptions on one topic share 200 messages, each delivered
// exactly once in total. The first subscription's handlers hold their messages until the second
// got one: with fast handlers one subscription may legitimately take every batch, but one whose
// handlers are busy must not stop the other from taking the rest (200 is more than any
// subscription prefetches).
func testCompetingConsumers(t *testing.T, e *env) {
	pub, sub1 := e.pubSub()
	_, sub2 := e.pubSub()
	secondGotOne := make(chan struct{})
	var once sync.Once
	r2 := NewRecorder(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		once.Do(func() { close(secondGotOne) })
		return nil
	}))
	r1 := NewRecorder(broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
		select {
		case <-secondGotOne:
		case <-ctx.Done():
		case <-time.After(waitTimeout):
		}
		return nil
	}))
	e.subscribe(sub1, e.topic, r1)
	e.subscribe(sub2, e.topic, r2)

	var msgs []*broker.Message
	for i := range 40 {
		batch := messages(fmt.Sprintf("compete-%d", i), 5)
		e.publish(pub, e.topic, batch...)
		msgs = append(msgs, batch...)
	}
	want := ids(t, msgs)
	require.Eventually(t, func() bool { return union(r1, r2) >= len(want) }, waitTimeout, tick,
		"distinct messages delivered over both subscriptions")
	quiet(t, "CompetingConsumers", r1, r2)
	exactlyOnce(t, want, r1, r2)
	t.Logf("split: %d / %d", r1.Deliveries(), r2.Deliveries())
	assert.Positive(t, r1.Deliveries(), "the first subscription got nothing")
	assert.Positive(t, r2.Deliveries(), "the second subscription got nothing")
}

// union returns the number of distinct IDs delivered over recs.
func union(recs ...*Recorder) int {
	seen := make(map[string]bool)
	for _, r := range recs {
		for id := range r.Counts() {
			seen[id] = true
		}
	}
	return len(seen)
}

// testFanOut: three subscriptions on one topic each get all 100 messages exactly once.
func testFanOut(t *testing.T, e *env) {
	var pub broker.Publisher
	recs := make([]*Recorder, 3)
	for i := range recs {
		p, sub := e.pubSub()
		if pub == nil {
			pub = p
		}
		recs[i] = NewRecorder(nil)
		e.subscribe(sub, e.topic, recs[i])
	}
	var msgs []*broker.Message
	for i := range 10 {
		batch := messages(fmt.Sprintf("fan-%d", i), 10)
		e.publish(pub, e.topic, batch...)
		msgs = append(msgs, batch...)
	}
	want := ids(t, msgs)
	for _, r := range recs {
		r.WaitFor(t, len(want), waitTimeout)
	}
	quiet(t, "FanOut", recs...)
	for i, r := range recs {
		t.Run(fmt.Sprint("subscription-", i), func(t *testing.T) { exactlyOnce(t, want, r) })
	}
}

// testShutdownWaitsForInFlight: Shutdown waits for a running handler, without cancelling its
// context, then returns nil; the message finished during Shutdown is acked.
func testShutdownWaitsForInFlight(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	started := make(chan struct{}, 1)
	ctxErr := make(chan error, 1)
	release := newGate(t)
	s := e.subscribe(sub, e.topic, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
		signal(started, struct{}{})
		<-release.wait()
		signal(ctxErr, ctx.Err())
		return nil
	}))
	m := broker.NewMessage([]byte("in flight"))
	e.publish(pub, e.topic, m)
	receive(t, started, waitTimeout, "handler start")

	res := shutdownAsync(s)
	select {
	case err := <-res:
		t.Fatalf("Shutdown returned (%v) while a handler was still running", err)
	case <-s.Done():
		t.Fatal("Done closed while a handler was still running")
	case <-time.After(quietWindow):
	}
	release.open()
	require.NoError(t, receive(t, res, waitTimeout, "Shutdown after the handler returned"))
	closedWithin(t, s.Done(), time.Second, "Done after Shutdown returned nil")
	assert.NoError(t, receive(t, ctxErr, waitTimeout, "handler end"), "the handler's context was cancelled by a graceful Shutdown")
	assert.True(t, shutdownOK(shutdown(s, time.Second)), "a second Shutdown")

	if e.f.Persistent {
		// The message finished during Shutdown was acked: a new subscription does not get it.
		_, sub2 := e.pubSub()
		rec := NewRecorder(nil)
		e.subscribe(sub2, e.topic, rec)
		assert.Never(t, func() bool { return rec.Deliveries() > 0 }, quietWindow, tick,
			"a message handled during Shutdown was delivered again")
	}
}

// testShutdownDeadline: when Shutdown's deadline passes first it cancels the handlers' context
// and returns context.DeadlineExceeded; with Redelivery the interrupted message is delivered to
// a later subscription.
func testShutdownDeadline(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	s := e.subscribe(sub, e.topic, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
		signal(started, struct{}{})
		<-ctx.Done()
		signal(cancelled, struct{}{})
		return ctx.Err()
	}))
	m := broker.NewMessage([]byte("stuck"))
	e.publish(pub, e.topic, m)
	receive(t, started, waitTimeout, "handler start")

	err := shutdown(s, 100*time.Millisecond)
	require.ErrorIs(t, err, context.DeadlineExceeded, "Shutdown past its deadline")
	receive(t, cancelled, waitTimeout, "handler context cancellation")
	closedWithin(t, s.Done(), waitTimeout, "Done after Shutdown's deadline")

	if e.f.Redelivery && e.f.Persistent {
		_, sub2 := e.pubSub()
		rec := NewRecorder(nil)
		e.subscribe(sub2, e.topic, rec)
		rec.WaitCount(t, m.ID, 1, waitTimeout)
		if e.f.KnowsAttempt {
			assert.GreaterOrEqual(t, rec.Attempts(m.ID)[0], 2, "Attempt of the redelivered interrupted message")
		}
	}
}

// testHandBackUnstarted: messages fetched but not started when Shutdown is called go to the next
// subscription; all 20 are handled exactly once over both.
func testHandBackUnstarted(t *testing.T, e *env) {
	pub, subA := e.pubSub()
	started := make(chan struct{}, 20)
	release := newGate(t)
	recA := NewRecorder(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		signal(started, struct{}{})
		<-release.wait()
		return nil
	}))
	sA := e.subscribe(subA, e.topic, recA)
	msgs := messages("handback", 20)
	e.publish(pub, e.topic, msgs...)
	receive(t, started, waitTimeout, "first handler start")

	res := shutdownAsync(sA)
	select {
	case err := <-res:
		t.Fatalf("Shutdown returned (%v) while a handler was still running", err)
	case <-time.After(quietWindow):
	}
	release.open()
	require.NoError(t, receive(t, res, waitTimeout, "Shutdown"))
	handledA := recA.Len()

	_, subB := e.pubSub()
	recB := NewRecorder(nil)
	e.subscribe(subB, e.topic, recB)
	want := ids(t, msgs)
	require.Eventually(t, func() bool { return union(recA, recB) >= len(want) }, waitTimeout, tick,
		"distinct messages handled over both subscriptions (first: %d)", handledA)
	quiet(t, "HandBackUnstarted", recA, recB)
	exactlyOnce(t, want, recA, recB)
	t.Logf("handled before Shutdown: %d, after: %d", handledA, recB.Len())
}

// testCancelIsHardStop: cancelling the Subscribe context cancels the running handler's context
// and closes Done; a later Shutdown is harmless.
func testCancelIsHardStop(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	s := e.subscribeCtx(ctx, sub, e.topic, broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
		signal(started, struct{}{})
		<-ctx.Done()
		signal(cancelled, struct{}{})
		return ctx.Err()
	}))
	e.publish(pub, e.topic, broker.NewMessage([]byte("x")))
	receive(t, started, waitTimeout, "handler start")
	cancel()
	receive(t, cancelled, waitTimeout, "handler context cancellation")
	closedWithin(t, s.Done(), waitTimeout, "Done after cancelling the Subscribe context")
	err := shutdown(s, time.Second)
	assert.True(t, shutdownOK(err), "Shutdown after the hard stop: %v", err)
}

// testConcurrentPublish: 32 goroutines publishing 50 messages each, one per call, through one
// publisher: every message arrives (exactly once, or at least once with Redelivery), in each
// subscription for fan-out.
func testConcurrentPublish(t *testing.T, e *env) {
	const goroutines, perGoroutine = 32, 50
	pub, sub := e.pubSub()
	nsubs := 1
	if e.f.FanOut {
		nsubs = 2
	}
	recs := make([]*Recorder, nsubs)
	for i := range recs {
		if i > 0 {
			_, sub = e.pubSub()
		}
		recs[i] = NewRecorder(nil)
		e.subscribe(sub, e.topic, recs[i])
	}

	published := make([][]*broker.Message, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*opTimeout)
			defer cancel()
			for i := range perGoroutine {
				m := broker.NewMessage(fmt.Appendf(nil, "g%d-%d", g, i))
				if err := pub.Publish(ctx, e.topic, m); err != nil {
					t.Errorf("goroutine %d: Publish %d: %v", g, i, err)
					return
				}
				published[g] = append(published[g], m)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var msgs []*broker.Message
	for _, p := range published {
		msgs = append(msgs, p...)
	}
	want := ids(t, msgs)
	require.Len(t, want, goroutines*perGoroutine)
	for _, r := range recs {
		r.WaitFor(t, len(want), 2*waitTimeout)
	}
	quiet(t, "ConcurrentPublish", recs...)
	for i, r := range recs {
		t.Run(fmt.Sprint("subscription-", i), func(t *testing.T) {
			if !e.f.Redelivery {
				exactlyOnce(t, want, r)
				return
			}
			wanted := make(map[string]bool, len(want))
			for _, id := range want {
				wanted[id] = true
			}
			for id := range r.Counts() {
				assert.True(t, wanted[id], "unknown message %s delivered", id)
			}
		})
	}
}

// testClosedClient: on a closed client, Publish fails with ErrClosed and Subscribe fails.
func testClosedClient(t *testing.T, e *env) {
	c := e.srv.Client(t)
	pub, sub := e.pubSubOn(c)
	require.NoError(t, c.Close())
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := pub.Publish(ctx, e.topic, broker.NewMessage([]byte("x")))
	assert.ErrorIs(t, err, broker.ErrClosed, "Publish on a closed client")
	s, err := subscribeWithin(context.Background(), sub, e.topic, NewRecorder(nil))
	assert.Error(t, err, "Subscribe on a closed client")
	if s != nil {
		assert.True(t, shutdownOK(shutdown(s, opTimeout)), "Shutdown of a subscription on a closed client")
	}
}

// testReconnectAfterRestart: a subscription survives a restart of its server and delivers what
// is published afterwards, without being re-created.
func testReconnectAfterRestart(t *testing.T, e *env) {
	var srv *redistest.Server
	if e.srv.Real() {
		srv = redistest.NewReal(t)
	} else {
		srv = redistest.NewMiniredis(t)
	}
	pub, sub := e.pubSubOn(srv.Client(t))
	rec := NewRecorder(nil)
	s := e.subscribe(sub, e.topic, rec)
	first := broker.NewMessage([]byte("before restart"))
	e.publish(pub, e.topic, first)
	rec.WaitCount(t, first.ID, 1, waitTimeout)

	srv.Restart(t)

	tryPublish := func(m *broker.Message) bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return pub.Publish(ctx, e.topic, m) == nil
	}
	if e.f.Persistent {
		// The first Publish after the restart may fail; once one succeeds the message is stored
		// and must reach the subscription.
		after := broker.NewMessage([]byte("after restart"))
		require.Eventually(t, func() bool { return tryPublish(after) }, reconnectTimeout, 50*time.Millisecond,
			"Publish after the restart")
		rec.WaitCount(t, after.ID, 1, reconnectTimeout)
	} else {
		// What is published before the subscription is back is lost: publish until one arrives.
		require.Eventually(t, func() bool {
			tryPublish(broker.NewMessage([]byte("after restart")))
			return rec.Len() > 1
		}, 2*reconnectTimeout, 100*time.Millisecond, "a delivery after the restart")
	}
	select {
	case <-s.Done():
		t.Fatal("the subscription stopped after the server restarted")
	default:
	}
}

// testInvalidArgs: an empty topic or a nil handler is rejected with ErrInvalidOption; publishing
// no message is a no-op.
func testInvalidArgs(t *testing.T, e *env) {
	pub, sub := e.pubSub()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	assert.ErrorIs(t, pub.Publish(ctx, "", broker.NewMessage([]byte("x"))), broker.ErrInvalidOption, "Publish to an empty topic")
	assert.NoError(t, pub.Publish(ctx, e.topic), "Publish of no message")

	for _, tc := range []struct {
		name  string
		topic string
		h     broker.Handler
	}{
		{"empty topic", "", NewRecorder(nil)},
		{"nil handler", e.topic, nil},
	} {
		s, err := subscribeWithin(context.Background(), sub, tc.topic, tc.h)
		assert.ErrorIs(t, err, broker.ErrInvalidOption, "Subscribe with %s", tc.name)
		if s != nil {
			t.Errorf("Subscribe with %s returned a Subscription", tc.name)
			assert.True(t, shutdownOK(shutdown(s, opTimeout)))
		}
	}
}
