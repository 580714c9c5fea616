package redistest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/goleak"
)

// shared holds the servers shared by all tests of one test binary: one miniredis and, when
// redis-server is on PATH, one real server. Each starts on first use (Servers) and stops in Main.
// This is the package's only mutable package-level state; it is test-binary scoped by design.
var shared struct {
	mu      sync.Mutex
	mini    *Server
	real    *Server
	realErr error  // a failed spawn is reported to every later caller, not retried
	dir     string // the real server's dir, removed by Main
}

// Servers returns the shared servers, starting them on first use: the miniredis one, plus the
// real one when redis-server is on PATH. Tests share them, so they isolate themselves by key prefix
// (see Topic), never FLUSHALL, and leave Stop/Start/Restart/Kill to servers of their own.
//
// Without redis-server on PATH it fails the test when BROKER_TEST_REDIS=require; otherwise it logs
// that the real-Redis leg is skipped and returns only miniredis.
//
// A test binary that calls Servers must use Main in its TestMain, which stops the servers.
func Servers(t testing.TB) []*Server {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.mini == nil {
		m := miniredis.NewMiniRedis()
		if err := m.Start(); err != nil {
			t.Fatalf("redistest: start shared miniredis: %v", err)
		}
		shared.mini = newMiniServer(m)
		shared.mini.shared = true
	}
	servers := []*Server{shared.mini}
	if shared.real != nil {
		return append(servers, shared.real)
	}
	if shared.realErr != nil {
		t.Fatalf("redistest: shared redis-server: %v", shared.realErr)
	}
	bin, version, err := lookup()
	if errors.Is(err, exec.ErrNotFound) {
		if os.Getenv(EnvRequire) == "require" {
			t.Fatal(requireMessage)
		}
		t.Log(skipMessage)
		return servers
	}
	if err == nil {
		err = startSharedReal(bin, version)
	}
	if err != nil {
		shared.realErr = err
		t.Fatalf("redistest: shared redis-server: %v", err)
	}
	return append(servers, shared.real)
}

// startSharedReal spawns the shared real server; shared.mu is held.
func startSharedReal(bin, version string) error {
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return err
	}
	s, err := spawn(bin, version, dir, config{})
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	s.shared = true
	shared.real, shared.dir = s, dir
	return nil
}

// stopShared stops the shared servers and waits for their goroutines and processes.
func stopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.mini != nil {
		shared.mini.Mini.Close()
		shared.mini = nil
	}
	if shared.real != nil {
		shared.real.mu.Lock()
		if p := shared.real.proc; p != nil {
			p.stop(stopGrace)
			shared.real.proc = nil
		}
		shared.real.mu.Unlock()
		shared.real = nil
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
		shared.dir = ""
	}
	shared.realErr = nil
}

// Main runs the tests, stops the shared servers, then checks for leaked goroutines and exits.
// Use it as the whole TestMain:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// The shared servers' goroutines (miniredis's accept and connection loops, the goroutine reaping
// redis-server) live until Main stops them after m.Run returns, so the leak check (goleak.Find,
// which ignores nothing of ours) sees only what the tests themselves left behind: clients from
// Server.Client are closed at each test's cleanup, and every Subscriber must be shut down. When the
// tests passed but goroutines leaked, the binary fails. Tests of a package using Main must not call
// goleak.VerifyTestMain themselves.
func Main(m *testing.M) {
	code := m.Run()
	stopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "redistest: goroutines leaked after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// ForEach runs fn as a subtest per shared server, named after it ("miniredis", "redis-7.0.15").
func ForEach(t *testing.T, fn func(t *testing.T, s *Server)) {
	t.Helper()
	for _, s := range Servers(t) {
		t.Run(s.Name, func(t *testing.T) { fn(t, s) })
	}
}
