package stream_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// cmdHook is a go-redis hook that counts the commands a client sends, by
// lower-case name (except the HELLO of each new connection), and the
// pipelines; hold, when set, can stop a command
// until the returned channel is closed.
type cmdHook struct {
	mu        sync.Mutex
	counts    map[string]int
	pipelines int
	single    int   // commands sent on their own, not in a pipeline
	sizes     []int // commands per pipeline
	seen      []redis.Cmder
	keep      func(redis.Cmder) bool // which commands to keep in seen
	hold      func(redis.Cmder) <-chan struct{}
	fail      func(redis.Cmder) error // a non-nil error fails the command unsent
}

func newHook(c redis.UniversalClient) *cmdHook {
	h := &cmdHook{counts: make(map[string]int)}
	c.AddHook(h)
	return h
}

func (h *cmdHook) record(cmd redis.Cmder) (<-chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[cmdName(cmd)]++
	if h.keep != nil && h.keep(cmd) {
		h.seen = append(h.seen, cmd)
	}
	var hold <-chan struct{}
	if h.hold != nil {
		hold = h.hold(cmd)
	}
	var err error
	if h.fail != nil {
		err = h.fail(cmd)
	}
	return hold, err
}

func cmdName(cmd redis.Cmder) string { return strings.ToLower(cmd.Name()) }

// count returns how many commands named name were sent.
func (h *cmdHook) count(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[name]
}

// roundTrips returns the pipelines and the single commands sent.
func (h *cmdHook) roundTrips() (pipelines, single int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pipelines, h.single
}

func (h *cmdHook) pipelineSizes() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.sizes...)
}

func (h *cmdHook) kept() []redis.Cmder {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]redis.Cmder(nil), h.seen...)
}

// set changes the hook's callbacks under its lock.
func (h *cmdHook) set(fn func(h *cmdHook)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn(h)
}

func (h *cmdHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cmdHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmdName(cmd) == "hello" {
			return next(ctx, cmd) // connection setup, not a command of ours
		}
		h.mu.Lock()
		h.single++
		h.mu.Unlock()
		hold, err := h.record(cmd)
		if err != nil {
			cmd.SetErr(err)
			return err
		}
		if hold != nil {
			<-hold
		}
		return next(ctx, cmd)
	}
}

func (h *cmdHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		h.pipelines++
		h.sizes = append(h.sizes, len(cmds))
		h.mu.Unlock()
		var holds []<-chan struct{}
		var failed error
		for _, cmd := range cmds {
			hold, err := h.record(cmd)
			if hold != nil {
				holds = append(holds, hold)
			}
			if err != nil {
				failed = err
			}
		}
		for _, hold := range holds {
			<-hold
		}
		if failed != nil {
			for _, cmd := range cmds {
				cmd.SetErr(failed)
			}
			return failed
		}
		return next(ctx, cmds)
	}
}

// argsContain reports whether cmd has an argument equal to s.
func argsContain(cmd redis.Cmder, s string) bool {
	for _, a := range cmd.Args() {
		if fmt.Sprint(a) == s {
			return true
		}
	}
	return false
}

// logRecorder is a slog handler that keeps every record's message and
// attributes, for tests of what is logged.
type logRecorder struct {
	mu      sync.Mutex
	records []loggedRecord
}

type loggedRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newLogRecorder() *logRecorder { return &logRecorder{} }

func (r *logRecorder) logger() *slog.Logger { return slog.New(&recordingHandler{r: r}) }

// matching returns the records whose message contains substr.
func (r *logRecorder) matching(substr string) []loggedRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []loggedRecord
	for _, rec := range r.records {
		if strings.Contains(rec.msg, substr) {
			out = append(out, rec)
		}
	}
	return out
}

type recordingHandler struct {
	r     *logRecorder
	attrs []slog.Attr
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordingHandler) Handle(_ context.Context, rec slog.Record) error {
	attrs := make(map[string]string)
	for _, a := range h.attrs {
		attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	h.r.mu.Lock()
	h.r.records = append(h.r.records, loggedRecord{rec.Level, rec.Message, attrs})
	h.r.mu.Unlock()
	return nil
}

func (h *recordingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &recordingHandler{r: h.r, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *recordingHandler) WithGroup(string) slog.Handler { return h }
