package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
	"github.com/redisbroker/broker/queue"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// newTestProducer returns a producer on a miniredis of its own.
func newTestProducer(t *testing.T, cfg ProducerConfig) (*Producer, *redistest.Server, redis.UniversalClient) {
	t.Helper()
	srv := redistest.NewMiniredis(t)
	c := srv.Client(t)
	p, err := NewProducer(c, cfg)
	require.NoError(t, err)
	return p, srv, c
}

// do runs one request through the producer's routes.
func do(t *testing.T, h http.Handler, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, target, nil)
	} else {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func decode(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var v map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &v), "body %q", w.Body.String())
	return v
}

// TestPublishAccepted: 202 with exactly {id, topic, mode} (plus receivers for
// pubsub), answered once the message is in Redis: it is there when the
// reply arrives, with the ID of the reply.
func TestPublishAccepted(t *testing.T) {
	p, _, c := newTestProducer(t, ProducerConfig{})
	h := p.Handler()
	ctx := context.Background()

	w := do(t, h, http.MethodPost, "/queue", "hello body")
	require.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
	assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	v := decode(t, w)
	assert.Len(t, v, 3, "id, topic, mode: %v", v)
	assert.Equal(t, DefaultQueueTopic, v["topic"])
	assert.Equal(t, "queue", v["mode"])
	n, err := c.LLen(ctx, DefaultQueueTopic).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the message is in Redis when the 202 arrives")

	// The stored message is the one the reply names, with the body as payload.
	got := make(chan *broker.Message, 1)
	sb, err := queue.NewSubscriber(c)
	require.NoError(t, err)
	sub, err := sb.Subscribe(ctx, DefaultQueueTopic, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		got <- m
		return nil
	}))
	require.NoError(t, err)
	var m *broker.Message
	select {
	case m = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("message never delivered")
	}
	require.NoError(t, sub.Shutdown(ctx))
	assert.Equal(t, v["id"], m.ID)
	assert.Equal(t, "hello body", string(m.Payload))

	// ?msg= and the random default.
	w = do(t, h, http.MethodGet, "/stream?a=1&msg=hello+query", "")
	require.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
	v = decode(t, w)
	assert.Equal(t, map[string]any{"id": v["id"], "topic": DefaultStreamTopic, "mode": "stream"}, v)
	entries, err := c.XRange(ctx, DefaultStreamTopic, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Contains(t, fmt.Sprint(entries[0].Values), "hello query")

	// pubsub adds the number of receivers: nobody listens here.
	w = do(t, h, http.MethodGet, "/pubsub", "")
	require.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
	v = decode(t, w)
	assert.Equal(t, map[string]any{"id": v["id"], "topic": DefaultPubSubTopic, "mode": "pubsub", "receivers": 0.0}, v)

	var s Snapshot
	w = do(t, h, http.MethodGet, "/stats", "")
	require.Equal(t, http.StatusOK, w.Code)
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &s))
	assert.EqualValues(t, 1, s.Queue.Published)
	assert.EqualValues(t, 1, s.Stream.Published)
	assert.EqualValues(t, 1, s.PubSub.Published)
}

// TestPublishOutlivesTheClient: a client that hangs up while its message is
// on its way to Redis does not turn the publish into a failure. A cancelled
// publish may have reached Redis already, so /stats would count fewer
// published messages than the consumers handle.
func TestPublishOutlivesTheClient(t *testing.T) {
	p, _, _ := newTestProducer(t, ProducerConfig{})
	started, release := make(chan struct{}), make(chan struct{})
	p.pubs[Queue.index()] = publisherFunc(func(ctx context.Context, _ string, _ ...*broker.Message) error {
		close(started)
		<-release
		return ctx.Err()
	})
	ctx, hangUp := context.WithCancel(context.Background())
	r := httptest.NewRequest(http.MethodGet, "/queue?msg=x", nil).WithContext(ctx)
	w := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Handler().ServeHTTP(w, r)
	}()
	<-started
	hangUp()
	close(release)
	<-done
	assert.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
	assert.EqualValues(t, 1, p.published[Queue.index()].Load(), "published")
	assert.Zero(t, p.failed[Queue.index()].Load(), "failed")
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*broker.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	return f(ctx, topic, msgs...)
}

func TestPublishReceivers(t *testing.T) {
	p, srv, c := newTestProducer(t, ProducerConfig{})
	ps := c.Subscribe(context.Background(), DefaultPubSubTopic)
	defer ps.Close()
	_, err := ps.Receive(context.Background()) // the subscription confirmation
	require.NoError(t, err)
	_ = srv
	w := do(t, p.Handler(), http.MethodPost, "/pubsub", "x")
	require.Equal(t, http.StatusAccepted, w.Code)
	assert.Equal(t, 1.0, decode(t, w)["receivers"])
}

// TestMethods: 405 with Allow for anything but GET and POST. HEAD in
// particular must not publish (a "GET /queue" pattern would match it).
func TestMethods(t *testing.T) {
	p, _, c := newTestProducer(t, ProducerConfig{})
	ts := httptest.NewServer(p.Handler())
	defer ts.Close()
	for _, m := range Modes {
		for _, method := range []string{http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
			req, err := http.NewRequest(method, ts.URL+"/"+string(m), nil)
			require.NoError(t, err)
			resp, err := ts.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s /%s", method, m)
			assert.Equal(t, "GET, POST", resp.Header.Get("Allow"), "%s /%s", method, m)
		}
	}
	ctx := context.Background()
	assert.Zero(t, c.LLen(ctx, DefaultQueueTopic).Val(), "nothing published")
	assert.Zero(t, c.XLen(ctx, DefaultStreamTopic).Val(), "nothing published")
	assert.Zero(t, p.published[PubSub.index()].Load(), "nothing published")
}

// TestTooLarge: 413 over the limit, by body (known length or chunked) and by
// ?msg=; nothing is published.
func TestTooLarge(t *testing.T) {
	p, _, c := newTestProducer(t, ProducerConfig{MaxBody: 10})
	h := p.Handler()
	w := do(t, h, http.MethodPost, "/queue", "01234567890")
	assert.Equal(t, http.StatusRequestEntityTooLarge, w.Code)
	assert.Contains(t, decode(t, w)["error"], "10 bytes")

	r := httptest.NewRequest(http.MethodPost, "/queue", strings.NewReader("01234567890"))
	r.ContentLength = -1 // chunked: only the read finds out
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	assert.Equal(t, http.StatusRequestEntityTooLarge, w.Code)

	w = do(t, h, http.MethodGet, "/stream?msg=01234567890", "")
	assert.Equal(t, http.StatusRequestEntityTooLarge, w.Code)

	w = do(t, h, http.MethodPost, "/queue", "0123456789")
	assert.Equal(t, http.StatusAccepted, w.Code, "exactly the limit is fine")
	assert.EqualValues(t, 1, c.LLen(context.Background(), DefaultQueueTopic).Val())
	assert.Zero(t, c.XLen(context.Background(), DefaultStreamTopic).Val())
}

// TestRedisDown: 503 with Retry-After from the publish endpoints, /healthz
// and /stats once Redis is gone, and no internal detail in the body.
func TestRedisDown(t *testing.T) {
	p, srv, _ := newTestProducer(t, ProducerConfig{})
	h := p.Handler()
	require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/healthz", "").Code)
	srv.Stop(t)
	for _, target := range []string{"/queue", "/pubsub", "/stream?msg=x", "/healthz", "/stats"} {
		w := do(t, h, http.MethodGet, target, "")
		assert.Equal(t, http.StatusServiceUnavailable, w.Code, target)
		assert.Equal(t, "1", w.Header().Get("Retry-After"), target)
		assert.Equal(t, map[string]any{"error": "redis unavailable"}, decode(t, w), target)
		assert.NotContains(t, w.Body.String(), "127.0.0.1", target)
	}
	assert.EqualValues(t, 1, p.failed[Queue.index()].Load())
}

// TestWrongType: a key of the wrong type is not an outage: 500, every time,
// without the Redis error's text.
func TestWrongType(t *testing.T) {
	p, _, c := newTestProducer(t, ProducerConfig{})
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, DefaultQueueTopic, "not a list", 0).Err())
	require.NoError(t, c.Set(ctx, DefaultStreamTopic, "not a stream", 0).Err())
	for range 2 {
		for _, target := range []string{"/queue", "/stream"} {
			w := do(t, p.Handler(), http.MethodGet, target, "")
			assert.Equal(t, http.StatusInternalServerError, w.Code, target)
			assert.Empty(t, w.Header().Get("Retry-After"), target)
			assert.NotContains(t, w.Body.String(), "WRONGTYPE", target)
		}
	}
}

func TestHTTPStatus(t *testing.T) {
	redisErr := func(s string) error { return fmt.Errorf("queue x: publish: %w", proto(s)) }
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 200},
		{fmt.Errorf("x: %w", broker.ErrTooLarge), 413},
		{fmt.Errorf("x: %w", broker.ErrInvalidOption), 400},
		{fmt.Errorf("x: %w", broker.ErrClosed), 503},
		{redis.ErrClosed, 503},
		{fmt.Errorf("x: %w", redis.ErrPoolTimeout), 503},
		{context.DeadlineExceeded, 503},
		{&netTimeout{}, 503},
		{fmt.Errorf("x: %w", &url.Error{Op: "dial", Err: errors.New("connection refused")}), 503},
		{redisErr("LOADING Redis is loading the dataset in memory"), 503},
		{redisErr("READONLY You can't write against a read only replica."), 503},
		{redisErr("OOM command not allowed when used memory > 'maxmemory'."), 503},
		{redisErr("MASTERDOWN Link with MASTER is down"), 503},
		{redisErr("CLUSTERDOWN The cluster is down"), 503},
		{redisErr("TRYAGAIN Multiple keys request during rehashing of slot"), 503},
		{redisErr("ERR max number of clients reached"), 503},
		{redisErr("WRONGTYPE Operation against a key holding the wrong kind of value"), 500},
		{redisErr("ERR unknown command"), 500},
		{redisErr("NOSCRIPT No matching script"), 500},
		{errors.New("something else"), 500},
	} {
		assert.Equal(t, tc.want, HTTPStatus(tc.err), "%v", tc.err)
	}
}

// proto is a Redis error reply, as go-redis returns it.
type proto string

func (e proto) Error() string { return string(e) }
func (proto) RedisError()     {}

type netTimeout struct{}

func (*netTimeout) Error() string   { return "i/o timeout" }
func (*netTimeout) Timeout() bool   { return true }
func (*netTimeout) Temporary() bool { return true }

// TestServerTimeouts: every timeout of the binaries' server is set.
func TestServerTimeouts(t *testing.T) {
	s := NewHTTPServer(":0", http.NotFoundHandler())
	assert.Positive(t, s.ReadHeaderTimeout)
	assert.Positive(t, s.ReadTimeout)
	assert.Positive(t, s.WriteTimeout)
	assert.Positive(t, s.IdleTimeout)
	assert.Positive(t, s.MaxHeaderBytes)
}

// TestBinariesUseNewHTTPServer: no binary builds an http.Server of its own,
// which would miss a timeout.
func TestBinariesUseNewHTTPServer(t *testing.T) {
	var files []string
	for _, dir := range []string{"../../cmd", "../../testdata/siege"} {
		require.NoError(t, filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(path, ".go") {
				files = append(files, path)
			}
			return err
		}))
	}
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, bad := range []string{"http.Server{", "http.ListenAndServe(", "http.Serve("} {
			assert.NotContains(t, string(b), bad, "%s: use app.NewHTTPServer", f)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "tab\tnl\ncr\r", "\x00\x01\x1f\x7f", "héllo ✓", "bad \xff utf8", "<&>", "\u2028"} {
		b := appendJSONString(nil, s)
		var got string
		require.NoError(t, json.Unmarshal(b, &got), "%q -> %s", s, b)
		want, _ := json.Marshal(s)
		var wantS string
		require.NoError(t, json.Unmarshal(want, &wantS))
		assert.Equal(t, wantS, got, "%q", s)
	}
}

func TestQueryValue(t *testing.T) {
	for _, q := range []string{
		"msg=hi", "a=1&msg=hi", "msg=a+b%21", "msg=", "msg", "x=1", "msg=1&msg=2", "ms%67=enc",
		"msg=%zz&msg=ok", "a;b=1&msg=semi", "msg=x;y", "",
	} {
		want := ""
		if v, err := url.ParseQuery(q); err == nil || v != nil {
			want = v.Get("msg")
		}
		got, _ := queryValue(q, "msg")
		assert.Equal(t, want, got, "%q", q)
	}
}

// BenchmarkPublishHandler is the producer's cost per request without the
// network: the handler alone, on miniredis.
func BenchmarkPublishHandler(b *testing.B) {
	srv := redistest.NewMiniredis(b)
	c := srv.Client(b)
	p, err := NewProducer(c, ProducerConfig{})
	require.NoError(b, err)
	h := p.Handler()
	r := httptest.NewRequest(http.MethodGet, "/queue", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusAccepted {
			b.Fatal(w.Code)
		}
	}
}
