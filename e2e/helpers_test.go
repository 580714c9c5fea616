// Package e2e builds the demo binaries and runs them as a user would:
// separate processes, a spawned redis-server on a free port, real HTTP.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// bin returns the path of a binary built from ./cmd/<name> (or a path
// relative to the module root), built once per test run.
func bin(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "broker-e2e-")
		if buildErr != nil {
			return
		}
		for pkg, out := range map[string]string{
			"./cmd/producer": "producer", "./cmd/consumer": "consumer", "./cmd/demo": "demo", "./testdata/siege/bare": "bare",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, out), pkg)
			cmd.Dir = ".."
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	require.NoError(t, buildErr)
	return filepath.Join(binDir, name)
}

// proc is a running binary whose output is collected.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// start runs a binary; it is killed at cleanup if still running.
func start(t *testing.T, path string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(path, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = lockedWriter{p}
	p.cmd.Stderr = lockedWriter{p}
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// stop sends SIGTERM, waits for the process to exit and checks it exited 0.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	require.Equal(t, 0, p.signal(t, syscall.SIGTERM), "exit status after SIGTERM:\n%s", p.output())
}

// signal sends sig and returns the exit status.
func (p *proc) signal(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
	p.wait(t, 30*time.Second)
	return p.cmd.ProcessState.ExitCode()
}

// wait waits for the process to exit.
func (p *proc) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit:\n%s", filepath.Base(p.cmd.Path), p.output())
	}
}

func (p *proc) waitOutput(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	require.Eventually(t, func() bool {
		m = re.FindStringSubmatch(p.output())
		return m != nil
	}, timeout, 10*time.Millisecond, "output never matched %s", re)
	return m
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond, "%s never answered", url)
}

// stats is the part of GET /stats the tests read.
type stats struct {
	Queue struct {
		Published, Consumed, Ready, Processing, Delayed, Dead, Consumers int64
	} `json:"queue"`
	PubSub struct {
		Published   int64 `json:"published"`
		Consumed    int64 `json:"consumed"`
		Subscribers int64 `json:"subscribers"`
	} `json:"pubsub"`
	Stream struct {
		Published int64 `json:"published"`
		Consumed  int64 `json:"consumed"`
		Length    int64 `json:"length"`
		Groups    []struct {
			Name         string
			Pending, Lag int64
		} `json:"groups"`
	} `json:"stream"`
}

func getStats(t *testing.T, base string) stats {
	t.Helper()
	resp, err := http.Get(base + "/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var s stats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
	return s
}

// published returns the messages the producer got accepted by Redis (and
// answered 202 for) on endpoint ep.
func (s stats) published(ep string) int {
	switch ep {
	case "queue":
		return int(s.Queue.Published)
	case "pubsub":
		return int(s.PubSub.Published)
	default:
		return int(s.Stream.Published)
	}
}

// consumed returns what the consumers reported as acked on endpoint ep
// (summed over subscribers for pubsub, over groups for stream); they report
// a few times a second.
func (s stats) consumed(ep string) int {
	switch ep {
	case "queue":
		return int(s.Queue.Consumed)
	case "pubsub":
		return int(s.PubSub.Consumed)
	default:
		return int(s.Stream.Consumed)
	}
}

// drained reports whether nothing is waiting or in flight in the queue and
// the stream group.
func (s stats) drained() bool {
	if s.Queue.Ready+s.Queue.Processing+s.Queue.Delayed != 0 {
		return false
	}
	for _, g := range s.Stream.Groups {
		if g.Pending != 0 || g.Lag > 0 {
			return false
		}
	}
	return true
}

var summaryRE = regexp.MustCompile(`summary: received=(\d+) acked=(\d+) failed=(\d+) dead-lettered=(\d+)`)

// acked returns the acked count of a stopped consumer's summary line.
func acked(t *testing.T, p *proc) int {
	t.Helper()
	m := summaryRE.FindStringSubmatch(p.output())
	require.NotNil(t, m, "no summary line in:\n%s", p.output())
	n, err := strconv.Atoi(m[2])
	require.NoError(t, err)
	return n
}

var lineRE = regexp.MustCompile(`(?m)^(queue|stream|pubsub) id=(\S+) attempt=(\d+) payload=`)

// lines counts the message lines of pattern mode in out.
func lines(out, mode string) int {
	n := 0
	for _, m := range lineRE.FindAllStringSubmatch(out, -1) {
		if m[1] == mode {
			n++
		}
	}
	return n
}

// ids counts the message IDs a consumer printed.
func ids(out string) map[string]int {
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewBufferString(out))
	for sc.Scan() {
		if m := lineRE.FindStringSubmatch(sc.Text()); m != nil {
			seen[m[2]]++
		}
	}
	return seen
}

// redisArgs returns a spawned redis-server's URL flag.
func redisArgs(t *testing.T) (*redistest.Server, []string) {
	t.Helper()
	s := redistest.NewReal(t)
	return s, []string{"-redis", s.URL()}
}
