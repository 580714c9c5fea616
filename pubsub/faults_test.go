package pubsub_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// dialFaults is a go-redis hook that injects connection faults into one
// client, on miniredis and real Redis alike: it can refuse new connections,
// break the open ones, and deliver a subscribe command late.
type dialFaults struct {
	mu      sync.Mutex
	refuse  bool
	conns   []net.Conn
	delay   time.Duration // for the next write of a subscribe command
	delayed atomic.Int64  // subscribe writes held back so far
}

var errRefused = errors.New("dialFaults: dial refused")

func (f *dialFaults) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.mu.Lock()
		refuse := f.refuse
		f.mu.Unlock()
		if refuse {
			return nil, errRefused
		}
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		fc := &faultConn{Conn: c, f: f}
		f.mu.Lock()
		f.conns = append(f.conns, fc)
		f.mu.Unlock()
		return fc, nil
	}
}

func (f *dialFaults) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (f *dialFaults) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// setRefuse makes new dials fail (true) or succeed again.
func (f *dialFaults) setRefuse(v bool) {
	f.mu.Lock()
	f.refuse = v
	f.mu.Unlock()
}

// breakAll closes every connection the client opened so far, as a network
// failure would.
func (f *dialFaults) breakAll() {
	f.mu.Lock()
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// delaySubscribe makes the next subscribe command reach Redis d after
// go-redis wrote it (the write itself returns at once), like a slow link.
func (f *dialFaults) delaySubscribe(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

type faultConn struct {
	net.Conn
	f       *dialFaults
	mu      sync.Mutex
	pending chan struct{} // closed when a held-back write went out
}

func (c *faultConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending != nil {
		<-c.pending // keep the order of writes
		c.pending = nil
	}
	c.f.mu.Lock()
	d := c.f.delay
	hold := d > 0 && bytes.Contains(bytes.ToLower(b), []byte("subscribe"))
	if hold {
		c.f.delay = 0
	}
	c.f.mu.Unlock()
	if !hold {
		return c.Conn.Write(b)
	}
	c.f.delayed.Add(1)
	held := bytes.Clone(b)
	done := make(chan struct{})
	c.pending = done
	time.AfterFunc(d, func() {
		defer close(done)
		_, _ = c.Conn.Write(held)
	})
	return len(b), nil
}

// logRecorder is a slog.Handler that keeps the messages logged.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}

// count returns how many messages containing s were logged.
func (l *logRecorder) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

// pipelineCounter is a go-redis hook counting pipelines and the commands in
// each. The first pipeline waits for release when hold is set.
type pipelineCounter struct {
	mu      sync.Mutex
	sizes   []int
	hold    chan struct{} // closed by the test to let the first pipeline go
	entered chan struct{} // closed when the first pipeline is held
}

func (h *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		h.sizes = append(h.sizes, len(cmds))
		first := len(h.sizes) == 1
		h.mu.Unlock()
		if first && h.hold != nil {
			close(h.entered)
			<-h.hold
		}
		return next(ctx, cmds)
	}
}

func (h *pipelineCounter) pipelines() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.sizes...)
}

// goroutinesWaitingIn counts goroutines blocked on channels with frame in
// their stack, leaving out the one held in a pipelineCounter.
func goroutinesWaitingIn(frame string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		blocked := strings.Contains(header, "[select") || strings.Contains(header, "[chan receive")
		if blocked && strings.Contains(g, frame) && !strings.Contains(g, "pipelineCounter") {
			n++
		}
	}
	return n
}
