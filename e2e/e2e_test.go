package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

// TestHTTPReconciles sends 1,000 concurrent requests to each endpoint and
// checks that every 202 was consumed: once for queue and stream, once per
// live subscriber for pubsub.
func TestHTTPReconciles(t *testing.T) {
	_, redis := redisArgs(t)
	addr := freeAddr(t)
	base := "http://" + addr
	start(t, bin(t, "producer"), nil, append(redis, "-addr", addr)...)
	waitHTTP(t, base+"/healthz")

	consumer := func(args ...string) *proc {
		return start(t, bin(t, "consumer"), nil, append(append(redis, "-quiet", "-concurrency", "8"), args...)...)
	}
	queue := consumer("-mode", "queue")
	strm := consumer("-mode", "stream")
	sub1 := consumer("-mode", "pubsub")
	sub2 := consumer("-mode", "pubsub")
	require.Eventually(t, func() bool { return getStats(t, base).PubSub.Subscribers == 2 }, 10*time.Second, 10*time.Millisecond)

	const requests = 1000
	accepted := map[string]int{}
	for _, ep := range []string{"queue", "pubsub", "stream"} {
		accepted[ep] = hammer(t, base+"/"+ep, requests)
		assert.Equal(t, requests, accepted[ep], "every /%s request accepted", ep)
	}
	// Every delivery is reported to /stats within a fraction of a second;
	// pub/sub has no backlog to watch, so this is how to know its
	// subscribers are done.
	want := map[string]int{"queue": accepted["queue"], "stream": accepted["stream"], "pubsub": 2 * accepted["pubsub"]}
	require.Eventually(t, func() bool {
		s := getStats(t, base)
		return s.drained() && s.consumed("queue") == want["queue"] && s.consumed("stream") == want["stream"] && s.consumed("pubsub") == want["pubsub"]
	}, 60*time.Second, 20*time.Millisecond, "consumed counts never reached %v", want)
	for _, p := range []*proc{queue, strm, sub1, sub2} {
		p.stop(t)
	}
	assert.Equal(t, accepted["queue"], acked(t, queue), "queue: accepted == consumed")
	assert.Equal(t, accepted["stream"], acked(t, strm), "stream: accepted == consumed")
	assert.Equal(t, 2*accepted["pubsub"], acked(t, sub1)+acked(t, sub2), "pubsub: accepted x 2 subscribers == deliveries")
}

// hammer sends n GET requests at once (one connection each, released
// together) and returns how many got 202.
func hammer(t *testing.T, url string, n int) int {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n}}
	defer client.CloseIdleConnections()
	var ok atomic.Int64
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-ready
			resp, err := client.Get(url)
			if err != nil {
				t.Errorf("GET %s: %v", url, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				ok.Add(1)
			}
		})
	}
	close(ready)
	wg.Wait()
	return int(ok.Load())
}

// TestSIGTERMLosesNothing stops a consumer with SIGTERM in the middle of a
// backlog and checks that a second consumer handles everything the first did
// not: no message lost, none handled twice (a graceful stop hands back what
// it fetched but did not start).
func TestSIGTERMLosesNothing(t *testing.T) {
	for _, mode := range []string{"queue", "stream"} {
		t.Run(mode, func(t *testing.T) {
			_, redis := redisArgs(t)
			const n = 8000
			load := start(t, bin(t, "producer"), nil, append(redis, "-n", fmt.Sprint(n), "-batch", "100", "-mode", mode)...)
			<-load.done
			require.Contains(t, load.output(), fmt.Sprintf("published=%d errors=0", n))

			args := append(redis, "-mode", mode, "-concurrency", "4")
			first := start(t, bin(t, "consumer"), nil, args...)
			require.Eventually(t, func() bool { return len(ids(first.output())) >= 300 }, 20*time.Second, 5*time.Millisecond)
			first.stop(t)
			got1 := ids(first.output())
			require.Less(t, len(got1), n, "the first consumer must be stopped mid-run")

			second := start(t, bin(t, "consumer"), nil, append(args, "-n", fmt.Sprint(n-acked(t, first)))...)
			select {
			case <-second.done:
			case <-time.After(60 * time.Second):
				t.Fatalf("second consumer did not finish:\n%s", second.output())
			}
			got2 := ids(second.output())
			all := map[string]int{}
			for id, c := range got1 {
				all[id] += c
			}
			for id, c := range got2 {
				all[id] += c
			}
			assert.Len(t, all, n, "every message handled")
			for id, c := range all {
				if c != 1 {
					t.Errorf("message %s handled %d times", id, c)
				}
			}
		})
	}
}

// TestEmbeddedDefault: with no -redis, no REDIS_URL and nothing listening on
// the default address, the producer starts an embedded Redis there, says so,
// and a consumer pointed at the same default address finds it.
func TestEmbeddedDefault(t *testing.T) {
	redisAddr := freeAddr(t) // never 6379
	httpAddr := freeAddr(t)
	env := []string{"REDIS_URL="}
	prod := start(t, bin(t, "producer"), env, "-default-redis", redisAddr, "-addr", httpAddr)
	prod.waitOutput(t, regexp.MustCompile(`started an embedded in-memory Redis`), 10*time.Second)
	waitHTTP(t, "http://"+httpAddr+"/healthz")

	cons := start(t, bin(t, "consumer"), env, "-default-redis", redisAddr, "-mode", "queue", "-n", "1")
	cons.waitOutput(t, regexp.MustCompile(`consumer: queue on`), 10*time.Second)
	assert.NotContains(t, cons.output(), "embedded", "the consumer uses the producer's embedded Redis")

	resp, err := http.Post("http://"+httpAddr+"/queue", "text/plain", strings.NewReader("hello embedded"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	select {
	case <-cons.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("consumer did not exit after one message:\n%s", cons.output())
	}
	assert.Regexp(t, `queue id=\S+ attempt=1 payload=hello embedded`, cons.output())
}

// TestHelp: -h prints the usage and exits 0.
func TestHelp(t *testing.T) {
	for _, name := range []string{"producer", "consumer", "demo"} {
		p := start(t, bin(t, name), nil, "-h")
		p.wait(t, 10*time.Second)
		assert.Equal(t, 0, p.cmd.ProcessState.ExitCode(), "%s -h:\n%s", name, p.output())
		assert.Contains(t, p.output(), "Usage of "+name, name)
	}
}

// TestLoadInterrupted: Ctrl-C during the producer's CLI mode prints the
// summary of what was done and exits 130, not a "context canceled" error.
func TestLoadInterrupted(t *testing.T) {
	_, redis := redisArgs(t)
	load := start(t, bin(t, "producer"), nil, append(redis, "-n", "100000000", "-rate", "500", "-mode", "stream")...)
	load.waitOutput(t, regexp.MustCompile(`published \d+/100000000`), 10*time.Second)
	assert.Equal(t, 130, load.signal(t, syscall.SIGINT), load.output())
	out := load.output()
	assert.Regexp(t, `summary: published=\d+ errors=0`, out)
	assert.Contains(t, out, "producer: published")
	assert.NotContains(t, out, "context canceled")
}

// TestCredentialsNeverPrinted runs every binary with a password in the
// Redis URL, with verbose logs, against a server that accepts it, one that
// rejects it and none at all, and checks the password appears in no line
// they print.
func TestCredentialsNeverPrinted(t *testing.T) {
	srv := redistest.NewReal(t, redistest.WithArgs("--user", "u", "on", ">s3cretpw", "~*", "&*", "+@all"))
	closed := freeAddr(t)
	for _, tc := range []struct{ name, url, secret string }{
		{"accepted", "redis://u:s3cretpw@" + srv.Addr, "s3cretpw"},
		{"rejected", "redis://u:wr0ngpw@" + srv.Addr, "wr0ngpw"},
		{"unreachable", "redis://u:s3cretpw@" + closed, "s3cretpw"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// run waits until ready shows in the output or the process
			// exits (a rejected password can end it), stops it if still
			// running, and checks what it printed.
			run := func(p *proc, ready string) {
				t.Helper()
				re := regexp.MustCompile(ready)
				require.Eventually(t, func() bool {
					select {
					case <-p.done:
						return true
					default:
						return re.MatchString(p.output())
					}
				}, 30*time.Second, 10*time.Millisecond, "%s never printed %q:\n%s", filepath.Base(p.cmd.Path), ready, p.output())
				select {
				case <-p.done:
				default:
					p.signal(t, syscall.SIGTERM)
				}
				assert.NotContains(t, p.output(), tc.secret, "%s printed the password:\n%s", filepath.Base(p.cmd.Path), p.output())
				t.Logf("%s:\n%s", filepath.Base(p.cmd.Path), p.output())
			}
			addr := freeAddr(t)
			prod := start(t, bin(t, "producer"), nil, "-redis", tc.url, "-addr", addr, "-v")
			prod.waitOutput(t, regexp.MustCompile(`producer: listening`), 10*time.Second)
			for _, ep := range []string{"/queue", "/pubsub", "/stream", "/healthz", "/stats"} {
				resp, err := http.Get("http://" + addr + ep)
				require.NoError(t, err)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			run(prod, `producer: listening`)
			assert.Contains(t, prod.output(), "u:xxxxx@", "the redacted URL is shown")

			// REDIS_URL, the CLI mode, the consumer and the demo.
			run(start(t, bin(t, "producer"), []string{"REDIS_URL=" + tc.url}, "-n", "3", "-v"), `summary:`)
			run(start(t, bin(t, "consumer"), nil, "-redis", tc.url, "-v", "-n", "3", "-mode", "queue"), `summary:`)
			run(start(t, bin(t, "consumer"), nil, "-redis", tc.url, "-v", "-mode", "stream"), `consumer: stream on`)
			run(start(t, bin(t, "demo"), nil, "-redis", tc.url, "-addr", freeAddr(t)), `demo: open`)
		})
	}
}
