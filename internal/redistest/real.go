package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvRequire names the environment variable that, set to "require", turns a missing redis-server
// into a test failure instead of a skip.
const EnvRequire = "BROKER_TEST_REDIS"

// requireMessage fails a test when redis-server is missing and BROKER_TEST_REDIS=require.
const requireMessage = "redistest: redis-server not on PATH and BROKER_TEST_REDIS=require: install redis-server (or unset BROKER_TEST_REDIS to skip the real-Redis leg)"

// skipMessage is logged (or given to t.Skip) when redis-server is not on PATH.
const skipMessage = "redistest: redis-server not on PATH; real-Redis leg skipped (set BROKER_TEST_REDIS=require to fail instead)"

const (
	readyTimeout = 10 * time.Second       // a server must answer PING this soon after spawn
	stopGrace    = 5 * time.Second        // SIGTERM to SIGKILL
	pollInterval = 10 * time.Millisecond  // readiness polling
	dialTimeout  = 500 * time.Millisecond // one readiness probe
	spawnTries   = 5                      // fresh ports tried when another process takes ours
	logName      = "redis.log"
)

type config struct {
	aof      bool
	fsync    string
	debugCmd bool
	args     []string
}

// Option configures NewReal.
type Option func(*config)

// WithAOF enables the append-only file: --appendonly yes --appendfsync <fsync> ("always",
// "everysec" or "no"). With it, Restart and Kill-then-Start keep the data ("always" keeps every
// acknowledged write across Kill).
func WithAOF(fsync string) Option {
	return func(c *config) { c.aof, c.fsync = true, fsync }
}

// WithDebugCommand enables DEBUG (--enable-debug-command local), e.g. for Do(t, "DEBUG", "SLEEP", "1").
func WithDebugCommand() Option {
	return func(c *config) { c.debugCmd = true }
}

// WithArgs appends redis-server arguments, e.g. WithArgs("--maxmemory-policy", "allkeys-lru").
// They come last, so they override the defaults.
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

var versions sync.Map // absolute redis-server path -> version string

// Available reports whether redis-server is on PATH, and its version ("7.0.15"). PATH is looked
// up on every call; the version is cached per binary.
func Available() (version string, ok bool) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", false
	}
	v, err := binVersion(bin)
	if err != nil {
		return "", false
	}
	return v, true
}

func lookup() (bin, version string, err error) {
	bin, err = exec.LookPath("redis-server")
	if err != nil {
		return "", "", err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return "", "", err
	}
	version, err = binVersion(bin)
	return bin, version, err
}

// binVersion parses `redis-server --version`: "Redis server v=7.0.15 sha=... bits=64 ...".
func binVersion(bin string) (string, error) {
	if v, ok := versions.Load(bin); ok {
		return v.(string), nil
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "v="); ok && v != "" {
			versions.Store(bin, v)
			return v, nil
		}
	}
	return "", fmt.Errorf("%s --version: no version in %q", bin, out)
}

// missing handles a redis-server that is not on PATH: t.Fatal when required, t.Skip otherwise.
func missing(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvRequire) == "require" {
		t.Fatal(requireMessage)
	}
	t.Skip(skipMessage)
}

// NewReal spawns redis-server for this test only, on a free 127.0.0.1 port with t.TempDir() as
// its dir (--save "" and --appendonly no unless WithAOF, --bind 127.0.0.1, --protected-mode no,
// --daemonize no, log file in the dir), waits until it answers PING (10s at most), and stops it at
// t.Cleanup (SIGTERM, SIGKILL after 5s, the process always reaped).
//
// Without redis-server on PATH it calls t.Skip with a message saying so, or t.Fatal when
// BROKER_TEST_REDIS=require.
func NewReal(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin, version, err := lookup()
	if errors.Is(err, exec.ErrNotFound) {
		missing(t)
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	s, err := spawn(bin, version, t.TempDir(), cfg)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.proc != nil {
			if s.proc.stop(stopGrace) {
				t.Logf("redistest: %s: no exit %v after SIGTERM; killed", s.Name, stopGrace)
			}
			s.proc = nil
		}
	})
	return s
}

// spawn starts a server on a free port, trying fresh ports when another process takes the port
// between our probe and redis-server's bind.
func spawn(bin, version, dir string, cfg config) (*Server, error) {
	s := &Server{Name: "redis-" + version, bin: bin, dir: dir, cfg: cfg}
	port, err := onFreePort(func(port int) (err error) {
		s.proc, err = s.startProcess(port)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.port, s.Addr = port, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return s, nil
}

func (s *Server) args(port int) []string {
	a := []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, logName),
		"--daemonize", "no",
		"--protected-mode", "no",
		"--save", "",
	}
	if s.cfg.aof {
		a = append(a, "--appendonly", "yes", "--appendfsync", s.cfg.fsync)
	} else {
		a = append(a, "--appendonly", "no")
	}
	if s.cfg.debugCmd {
		a = append(a, "--enable-debug-command", "local")
	}
	return append(a, s.cfg.args...)
}

// process is one running redis-server. A goroutine waits for it and closes done, so the process
// is always reaped; that goroutine ends with the process.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, set before done is closed
}

// startProcess runs redis-server on port and waits until that very process answers PING.
func (s *Server) startProcess(port int) (*process, error) {
	cmd := exec.Command(s.bin, s.args(port)...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	// Stdout and stderr stay nil (/dev/null): the server logs to its log file.
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := p.waitReady(addr, readyTimeout); err != nil {
		p.kill()
		return nil, fmt.Errorf("redis-server on %s: %w%s", addr, err, s.logTail())
	}
	return p, nil
}

// waitReady polls until the server at addr answers PING and reports our process's pid, so a
// server another test started on the same port is never mistaken for ours.
func (p *process) waitReady(addr string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		pid, err := probe(addr)
		if err == nil && pid == p.cmd.Process.Pid {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("port answered by pid %d, not ours (%d)", pid, p.cmd.Process.Pid)
		}
		last = err
		select {
		case <-p.done:
			return fmt.Errorf("exited before answering: %v", p.err)
		case <-deadline.C:
			return fmt.Errorf("no answer within %v: %w", timeout, last)
		case <-tick.C:
		}
	}
}

// probe sends PING and INFO server over a raw RESP2 connection and returns the server's
// process_id. It fails while the server is still loading (PING then answers -LOADING).
func probe(addr string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, dialTimeout)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(dialTimeout))
	if _, err := conn.Write([]byte("PING\r\nINFO server\r\n")); err != nil {
		return 0, err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "+PONG\r\n" {
		return 0, fmt.Errorf("PING: %q", strings.TrimSpace(line))
	}
	line, err = r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
	if !strings.HasPrefix(line, "$") || err != nil {
		return 0, fmt.Errorf("INFO server: %q", strings.TrimSpace(line))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	if pid, ok := infoPid(string(body)); ok {
		return pid, nil
	}
	return 0, errors.New("INFO server: no process_id")
}

// stop sends SIGTERM and waits; after grace it sends SIGKILL and reports that it had to (a
// server busy in DEBUG SLEEP or a long script does so legitimately). It always reaps the process.
func (p *process) stop(grace time.Duration) (killed bool) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return false
	case <-timer.C:
		p.kill()
		return true
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail returns the end of the server's log file for error messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, logName))
	if err != nil || len(b) == 0 {
		return ""
	}
	const maxTail = 2000
	if len(b) > maxTail {
		b = b[len(b)-maxTail:]
	}
	return "\nlog tail:\n" + string(b)
}
