package app

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
)

// DefaultMaxBody caps request bodies of the producer: the pattern packages'
// default payload limit (1 MiB).
const DefaultMaxBody = 1 << 20

// Producer serves the demo HTTP API: one message per request.
type Producer struct {
	client  redis.UniversalClient
	topics  Topics
	pubs    [numModes]broker.Publisher
	maxBody int64
	log     *slog.Logger
	stats   *Stats

	published [numModes]atomic.Int64
	failed    [numModes]atomic.Int64
	lastWarn  atomic.Int64 // unix nanoseconds of the last "publish failed" log line
}

// ProducerConfig configures NewProducer.
type ProducerConfig struct {
	Topics Topics
	// Raw writes queue and pubsub payloads as-is, for consumers that are not
	// ours. Stream entries are field maps any client can read, so it does
	// not apply to them.
	Raw     bool
	MaxBody int64 // default DefaultMaxBody
	Logger  *slog.Logger
}

// NewProducer builds the publishers for every pattern. It reads the
// consumers' counters once (see Stats) so /stats counts what was consumed
// since this producer started.
func NewProducer(c redis.UniversalClient, cfg ProducerConfig) (*Producer, error) {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Producer{
		client:  c,
		topics:  cfg.Topics.withDefaults(),
		maxBody: cfg.MaxBody,
		log:     cfg.Logger,
	}
	for _, m := range Modes {
		pub, err := NewPublisher(c, m, cfg.Raw && m != Stream)
		if err != nil {
			return nil, err
		}
		p.pubs[m.index()] = pub
	}
	p.stats = NewStats(c, p.topics)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p.stats.Baseline(ctx)
	return p, nil
}

// Handler returns the HTTP routes.
func (p *Producer) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, m := range Modes {
		// No method in the pattern: a "GET /queue" pattern also matches
		// HEAD, and a HEAD must not publish. The handler answers 405 itself.
		mux.Handle("/"+string(m), p.publishHandler(m))
	}
	mux.HandleFunc("GET /stats", p.serveStats)
	mux.HandleFunc("GET /healthz", p.serveHealth)
	mux.Handle("GET /{$}", indexHandler())
	return mux
}

// PublishTimeout bounds one request's publish, whether or not its client
// is still there (see publishHandler).
const PublishTimeout = 5 * time.Second

// Server timeouts of NewHTTPServer.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 15 * time.Second
	WriteTimeout      = 15 * time.Second
	IdleTimeout       = 60 * time.Second
	MaxHeaderBytes    = 16 << 10
)

// NewHTTPServer returns a server with every timeout set, so a slow or idle
// client cannot hold a connection or goroutine for long.
func NewHTTPServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// Header values shared by every response; net/http only reads them.
var (
	headerJSON    = []string{"application/json"}
	headerNoStore = []string{"no-store"}
	headerRetry   = []string{"1"}
	headerAllow   = []string{"GET, POST"}
)

// replyPool holds the buffers the 202 replies are built in.
var replyPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// errTooLarge is a request over the size limit.
var errTooLarge = errors.New("request over the size limit")

// publishHandler publishes one message per GET or POST. Its cost per request
// is kept close to a bare net/http handler's (the siege benchmark compares
// them): no body read when there is none, no query map, no extra context
// (the Redis client's dial, read, write and pool timeouts bound a publish,
// and the request's context ends it when the client goes away), and a reply
// built without reflection in a pooled buffer.
func (p *Producer) publishHandler(m Mode) http.Handler {
	topic := p.topics.For(m)
	i := m.index()
	pub := p.pubs[i]
	counter, _ := pub.(receiverCounter)
	// Everything after the ID is the same for every reply.
	tail := appendJSONString([]byte(`,"topic":`), topic)
	tail = append(tail, `,"mode":`...)
	tail = appendJSONString(tail, string(m))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			w.Header()["Allow"] = headerAllow
			writeError(w, http.StatusMethodNotAllowed, "method not allowed: use GET or POST")
			return
		}
		payload, err := p.payload(w, r)
		if err != nil {
			if errors.Is(err, errTooLarge) {
				writeError(w, http.StatusRequestEntityTooLarge, "message over "+strconv.FormatInt(p.maxBody, 10)+" bytes")
				return
			}
			writeError(w, http.StatusBadRequest, "could not read the request body")
			return
		}
		msg := broker.NewMessage(payload)
		// The publish outlives the client. A client that hangs up (siege at
		// its -t deadline, a killed curl) cancels r.Context(), and a publish
		// cancelled in flight may still have reached Redis: it would then be
		// counted as failed while a consumer handles it, and /stats would
		// stop reconciling. PublishTimeout bounds it instead.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), PublishTimeout)
		defer cancel()
		receivers := int64(-1)
		if counter != nil {
			var n []int64
			if n, err = counter.PublishCount(ctx, topic, msg); err == nil {
				receivers = n[0]
			}
		} else {
			err = pub.Publish(ctx, topic, msg)
		}
		if err != nil {
			p.failed[i].Add(1)
			p.writePublishError(w, m, err)
			return
		}
		p.published[i].Add(1)

		bp := replyPool.Get().(*[]byte)
		b := append((*bp)[:0], `{"id":`...)
		b = appendJSONString(b, msg.ID)
		b = append(b, tail...)
		if receivers >= 0 {
			b = append(b, `,"receivers":`...)
			b = strconv.AppendInt(b, receivers, 10)
		}
		b = append(b, "}\n"...)
		h := w.Header()
		h["Content-Type"] = headerJSON
		h["Cache-Control"] = headerNoStore
		w.WriteHeader(http.StatusAccepted)
		w.Write(b)
		*bp = b
		replyPool.Put(bp)
	})
}

// writePublishError answers a failed publish. The body never carries the
// error's text, which can name internal addresses; the log does.
func (p *Producer) writePublishError(w http.ResponseWriter, m Mode, err error) {
	switch status := HTTPStatus(err); status {
	case http.StatusServiceUnavailable:
		// Rate-limited: an outage under load would otherwise log every request.
		now := time.Now().UnixNano()
		if last := p.lastWarn.Load(); now-last > int64(time.Second) && p.lastWarn.CompareAndSwap(last, now) {
			p.log.Warn("publish failed: redis unavailable (logged at most once a second)", "mode", m, "err", err)
		}
		w.Header()["Retry-After"] = headerRetry
		writeError(w, status, "redis unavailable")
	case http.StatusRequestEntityTooLarge:
		writeError(w, status, "message over the size limit")
	case http.StatusBadRequest:
		writeError(w, status, "message rejected by the publisher")
	default:
		p.log.Error("publish failed", "mode", m, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error: see the producer's log")
	}
}

// payload returns the request body, else ?msg=, else a random number (as the
// classic Flask demo does).
func (p *Producer) payload(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		if r.ContentLength > p.maxBody {
			return nil, errTooLarge
		}
		body := http.MaxBytesReader(w, r.Body, p.maxBody)
		var b []byte
		var err error
		if r.ContentLength > 0 {
			b = make([]byte, r.ContentLength)
			_, err = io.ReadFull(body, b)
		} else { // chunked
			b, err = io.ReadAll(body)
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, errTooLarge
			}
			return nil, err
		}
		if len(b) > 0 {
			return b, nil
		}
	}
	if r.URL.RawQuery != "" {
		if msg, ok := queryValue(r.URL.RawQuery, "msg"); ok && msg != "" {
			if int64(len(msg)) > p.maxBody {
				return nil, errTooLarge
			}
			return []byte(msg), nil
		}
	}
	return strconv.AppendInt(make([]byte, 0, 8), rand.Int64N(1_000_000), 10), nil
}

// queryValue returns the first value of key in a raw query, as
// url.Values.Get would, without building the map.
func queryValue(rawQuery, key string) (string, bool) {
	for rawQuery != "" {
		var kv string
		kv, rawQuery, _ = strings.Cut(rawQuery, "&")
		if strings.Contains(kv, ";") {
			continue // url.ParseQuery rejects these pairs
		}
		k, v, _ := strings.Cut(kv, "=")
		if k != key {
			if !strings.ContainsAny(k, "%+") {
				continue
			}
			if uk, err := url.QueryUnescape(k); err != nil || uk != key {
				continue
			}
		}
		if !strings.ContainsAny(v, "%+") {
			return v, true
		}
		uv, err := url.QueryUnescape(v)
		if err != nil {
			continue
		}
		return uv, true
	}
	return "", false
}

func (p *Producer) serveHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := p.client.Ping(ctx).Err(); err != nil {
		p.log.Warn("health check failed", "err", err)
		w.Header()["Retry-After"] = headerRetry
		writeError(w, http.StatusServiceUnavailable, "redis unavailable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (p *Producer) serveStats(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var published, failed [numModes]int64
	for _, m := range Modes {
		published[m.index()] = p.published[m.index()].Load()
		failed[m.index()] = p.failed[m.index()].Load()
	}
	snap, err := p.stats.Snapshot(ctx, published, failed)
	if err != nil {
		if HTTPStatus(err) == http.StatusServiceUnavailable {
			w.Header()["Retry-After"] = headerRetry
			writeError(w, http.StatusServiceUnavailable, "redis unavailable")
			return
		}
		p.log.Error("stats failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal error: see the producer's log")
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

type errorReply struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorReply{msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h["Content-Type"] = headerJSON
	h["Cache-Control"] = headerNoStore
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as with encoding/json.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// DisplayAddr turns a listener address into one a browser can open: an
// unspecified host (":8080") becomes 127.0.0.1.
func DisplayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
