// Package redistest provides Redis servers for tests: an in-process miniredis, always, and a
// spawned redis-server on a free 127.0.0.1 port whenever one is on PATH.
//
// Most tests use the shared servers through ForEach (or Servers) and isolate themselves by key
// prefix, using Topic for a unique topic name; they never FLUSHALL. Fault tests that stop, restart
// or kill a server start their own with NewMiniredis or NewReal.
//
// Environment: BROKER_TEST_REDIS=require turns a missing redis-server into a test failure (CI sets
// it); otherwise the real-Redis leg is skipped with a logged message.
//
// The package never connects to a server it did not start.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Client settings. PoolSize leaves room for many blocked workers (each holds a connection).
const (
	clientPoolSize   = 64
	clientMaxRetries = 1
	// doReadTimeout bounds one Do command, long enough for DEBUG SLEEP of a few seconds.
	doReadTimeout = 30 * time.Second
)

// Server is one Redis server for tests.
type Server struct {
	// Name is the subtest name: "miniredis" or "redis-<version>", e.g. "redis-7.0.15".
	Name string
	// Addr is host:port, 127.0.0.1:<port>.
	Addr string
	// Mini is the miniredis instance, nil for a real server.
	Mini *miniredis.Miniredis

	// shared servers belong to Main: Stop, Start, Restart and Kill refuse them.
	shared bool

	port int // of Addr, kept for Start

	// Real servers only.
	bin string // absolute path of redis-server, resolved once so a changed PATH does not matter
	dir string // --dir and the log file
	cfg config

	mu   sync.Mutex
	proc *process // nil while stopped
}

// Real reports whether s is a spawned redis-server (false for miniredis).
func (s *Server) Real() bool { return s.Mini == nil }

// URL returns "redis://" + Addr.
func (s *Server) URL() string { return "redis://" + s.Addr }

// options returns client options for a clean handshake: only HELLO 3 is sent on connect (no CLIENT
// SETINFO, no CLIENT MAINT_NOTIFICATIONS, which Redis 7.0 and miniredis reject; see REDIS-NOTES).
func (s *Server) options() *redis.UniversalOptions {
	return &redis.UniversalOptions{
		Addrs:           []string{s.Addr},
		Protocol:        3,
		DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
		PoolSize:   clientPoolSize,
		MaxRetries: clientMaxRetries,
	}
}

// Client returns a new go-redis client for the server, closed at t.Cleanup. It uses RESP3, a clean
// handshake (DisableIdentity, maintnotifications disabled), PoolSize 64 and MaxRetries 1.
func (s *Server) Client(t testing.TB) redis.UniversalClient {
	t.Helper()
	c := redis.NewUniversalClient(s.options())
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Do runs a command on a fresh connection that is closed afterwards, without retries, and returns
// its reply (nil for a nil reply). Any other error fails the test, so call it from the test's
// goroutine. Meant for fault injection: CLIENT KILL, CONFIG SET, ACL SETUSER, DEBUG SLEEP (needs
// WithDebugCommand; one command may take up to 30s).
//
// On a real server Do first checks, on that same connection, that INFO server reports the pid of
// the process this package started, and fails the test otherwise (the server is stopped, or the
// port now belongs to another process), so a fault injector never reaches a server the test did
// not start.
func (s *Server) Do(t testing.TB, args ...any) any {
	t.Helper()
	opts := s.options().Simple()
	opts.PoolSize = 1
	opts.MaxRetries = -1 // never run a fault injector twice
	opts.ReadTimeout = doReadTimeout
	c := redis.NewClient(opts)
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), doReadTimeout+5*time.Second)
	defer cancel()
	conn := c.Conn()
	defer func() { _ = conn.Close() }()
	if s.Real() {
		s.checkPid(t, ctx, conn, args)
	}
	v, err := conn.Do(ctx, args...).Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		t.Fatalf("redistest: %s: %v: %v", s.Name, args, err)
	}
	return v
}

// checkPid fails t unless the server answering conn is the process s started.
func (s *Server) checkPid(t testing.TB, ctx context.Context, conn *redis.Conn, args []any) {
	t.Helper()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		t.Fatalf("redistest: %s: %v: the server is not running; refusing to send it to whatever holds %s", s.Name, args, s.Addr)
	}
	info, err := conn.Info(ctx, "server").Result()
	if err != nil {
		t.Fatalf("redistest: %s: %v: INFO server: %v", s.Name, args, err)
	}
	if pid, ok := infoPid(info); !ok || pid != p.cmd.Process.Pid {
		t.Fatalf("redistest: %s: %v: %s is answered by pid %d, not ours (%d); refusing", s.Name, args, s.Addr, pid, p.cmd.Process.Pid)
	}
}

// infoPid reads process_id from an INFO server reply.
func infoPid(info string) (int, bool) {
	for l := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			return pid, err == nil
		}
	}
	return 0, false
}

// NewMiniredis starts a miniredis for this test only, closed at t.Cleanup. Its Restart keeps the
// data (miniredis keeps it across Close), unlike a real server without AOF.
func NewMiniredis(t testing.TB) *Server {
	t.Helper()
	m := miniredis.NewMiniRedis()
	if _, err := onFreePort(func(port int) error {
		return m.StartAddr(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	}); err != nil {
		t.Fatalf("redistest: start miniredis: %v", err)
	}
	t.Cleanup(m.Close)
	return newMiniServer(m)
}

func newMiniServer(m *miniredis.Miniredis) *Server {
	return &Server{Name: "miniredis", Addr: m.Addr(), Mini: m, port: m.Server().Addr().Port}
}

// Restart stops the server and starts it again on the same port and dir, and returns once it
// answers PING. A real server keeps its data only with WithAOF (it comes back empty otherwise);
// miniredis always keeps it. Clients reconnect by themselves.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.Start(t)
}

// Stop stops the server: SIGTERM and wait, SIGKILL after 5s (miniredis: Close). Use Start to
// bring it back.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.checkOwned(t, "Stop")
	if !s.Real() {
		s.Mini.Close()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		t.Fatalf("redistest: %s: Stop: not running", s.Name)
	}
	if s.proc.stop(stopGrace) {
		t.Logf("redistest: %s: Stop: no exit %v after SIGTERM; killed", s.Name, stopGrace)
	}
	s.proc = nil
}

// Start starts a stopped (or killed) server again on the same port and returns once it answers
// PING (miniredis: Restart).
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.checkOwned(t, "Start")
	if !s.Real() {
		s.waitPort(t)
		// miniredis v2.40 cancels m.Ctx in Close and never renews it, so after a
		// plain Restart every blocking command (BLPOP, BLMOVE, XREAD BLOCK)
		// returns no reply and the client hangs until its read timeout. The
		// server is stopped here, so replacing the context is race-free.
		s.Mini.Ctx, s.Mini.CtxCancel = context.WithCancel(context.Background())
		if err := s.Mini.Restart(); err != nil {
			t.Fatalf("redistest: miniredis: Start: %v", err)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		t.Fatalf("redistest: %s: Start: already running", s.Name)
	}
	s.waitPort(t)
	p, err := s.startProcess(s.port)
	if err != nil {
		t.Fatalf("redistest: %s: Start: %v", s.Name, err)
	}
	s.proc = p
}

// waitPort waits until the stopped server's port is free again (see waitBindable).
func (s *Server) waitPort(t testing.TB) {
	t.Helper()
	if err := waitBindable(s.port, readyTimeout); err != nil {
		t.Fatalf("redistest: %s: Start: port %d: %v", s.Name, s.port, err)
	}
}

// Kill sends SIGKILL, simulating a crash, and waits for the process to exit. Real servers only:
// on miniredis it fails the test (check Real first). Start brings the server back on the same
// port; with WithAOF("always") it comes back with every acknowledged write.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.checkOwned(t, "Kill")
	if !s.Real() {
		t.Fatalf("redistest: Kill needs a real server; miniredis cannot crash (check s.Real())")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		t.Fatalf("redistest: %s: Kill: not running", s.Name)
	}
	s.proc.kill()
	s.proc = nil
}

// checkOwned refuses fault operations on a shared server: other tests run against it in parallel.
func (s *Server) checkOwned(t testing.TB, op string) {
	t.Helper()
	if s.shared {
		t.Fatalf("redistest: %s: %s on a shared server would disturb other tests; use NewMiniredis or NewReal", s.Name, op)
	}
}

// topicNameMax bounds the t.Name() part of a topic so keys stay short.
const topicNameMax = 80

// Topic returns a unique topic name for a test: t.Name() with every character other than ASCII
// letters, digits, '_', '-' and '.' replaced by '_', plus '-' and 8 random hex digits, e.g.
// "TestFoo_bar-3f9a1c07". It has no hash-tag braces, no ':' and no glob characters.
func Topic(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	for _, r := range t.Name() {
		if b.Len() >= topicNameMax {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:]) // crypto/rand.Read never fails
	b.WriteByte('-')
	b.WriteString(hex.EncodeToString(suffix[:]))
	return b.String()
}
