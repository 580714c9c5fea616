package redistest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// helperEnv selects a mode of TestHelperProcess when the test binary re-executes itself.
const helperEnv = "REDISTEST_HELPER"

func TestMiniredis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.NewMiniredis(t)
	assert.False(t, s.Real())
	assert.Equal(t, "miniredis", s.Name)
	assert.Equal(t, "redis://"+s.Addr, s.URL())
	require.NotNil(t, s.Mini)

	c := s.Client(t)
	require.NoError(t, c.Ping(ctx).Err())
	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	assert.Equal(t, "PONG", s.Do(t, "PING"))
	assert.Nil(t, s.Do(t, "GET", "missing"))

	s.Restart(t) // miniredis keeps its data across Close/Restart
	got, err := c.Get(ctx, "k").Result()
	require.NoError(t, err)
	assert.Equal(t, "v", got)

	s.Stop(t)
	require.Error(t, c.Ping(ctx).Err())
	s.Start(t)
	require.NoError(t, c.Ping(ctx).Err())
}

func TestRealLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.NewReal(t)
	version, ok := redistest.Available()
	require.True(t, ok)
	assert.True(t, s.Real())
	assert.Nil(t, s.Mini)
	assert.Equal(t, "redis-"+version, s.Name)
	assert.Regexp(t, `^127\.0\.0\.1:\d+$`, s.Addr)
	assert.NotEqual(t, "127.0.0.1:6379", s.Addr)

	c := s.Client(t)
	require.NoError(t, c.Ping(ctx).Err())
	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	assert.Equal(t, "no", configGet(t, s, "appendonly"))
	assert.Equal(t, "", configGet(t, s, "save"))

	s.Stop(t)
	require.Error(t, c.Ping(ctx).Err())
	s.Start(t)
	require.NoError(t, c.Ping(ctx).Err())
	assert.ErrorIs(t, c.Get(ctx, "k").Err(), redis.Nil, "without AOF a restarted server is empty")

	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	s.Restart(t)
	assert.ErrorIs(t, c.Get(ctx, "k").Err(), redis.Nil, "without AOF a restarted server is empty")

	s.Kill(t)
	require.Error(t, c.Ping(ctx).Err())
	s.Start(t)
	require.NoError(t, c.Ping(ctx).Err())
}

func TestRealAOFKeepsData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.NewReal(t, redistest.WithAOF("always"))
	c := s.Client(t)
	assert.Equal(t, "yes", configGet(t, s, "appendonly"))
	assert.Equal(t, "always", configGet(t, s, "appendfsync"))

	require.NoError(t, c.Set(ctx, "restart", "1", 0).Err())
	s.Restart(t)
	got, err := c.Get(ctx, "restart").Result()
	require.NoError(t, err, "AOF keeps data across Restart")
	assert.Equal(t, "1", got)

	require.NoError(t, c.Set(ctx, "crash", "2", 0).Err())
	s.Kill(t)
	s.Start(t)
	got, err = c.Get(ctx, "crash").Result()
	require.NoError(t, err, "appendfsync always keeps acknowledged writes across a crash")
	assert.Equal(t, "2", got)
}

func TestRealOptions(t *testing.T) {
	t.Parallel()
	s := redistest.NewReal(t, redistest.WithDebugCommand(), redistest.WithArgs("--maxmemory-policy", "allkeys-lru"))
	assert.Equal(t, "OK", s.Do(t, "DEBUG", "SLEEP", "0"))
	assert.Equal(t, "allkeys-lru", configGet(t, s, "maxmemory-policy"))
}

// TestHandshakeClean checks that a client's connection handshake leaves no error on Redis 7.0:
// go-redis's defaults send CLIENT SETINFO and CLIENT MAINT_NOTIFICATIONS, which it rejects.
func TestHandshakeClean(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.NewReal(t)
	c := s.Client(t)
	for range 3 {
		require.NoError(t, c.Ping(ctx).Err())
	}
	assert.Equal(t, "PONG", s.Do(t, "PING"))
	stats := s.Do(t, "INFO", "errorstats").(string)
	assert.NotContains(t, stats, "errorstat_", "the handshake caused errors:\n%s", stats)

	// Control: the same server does count errors from go-redis's default handshake, so the check
	// above can fail.
	d := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer d.Close()
	require.NoError(t, d.Ping(ctx).Err())
	stats = s.Do(t, "INFO", "errorstats").(string)
	assert.Contains(t, stats, "errorstat_", "default handshake left no error; the check proves nothing")
}

func TestNewRealSkipsWithoutRedis(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv(redistest.EnvRequire, "")
	var inner *testing.T
	t.Run("real", func(t *testing.T) {
		inner = t
		redistest.NewReal(t)
		t.Error("NewReal returned without redis-server on PATH")
	})
	assert.True(t, inner.Skipped(), "NewReal must skip without redis-server")
	assert.False(t, inner.Failed())
	_, ok := redistest.Available()
	assert.False(t, ok)
}

// TestWithoutRedisSubprocess re-executes the test binary with an empty PATH, so the shared servers
// of this process are not involved.
func TestWithoutRedisSubprocess(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	require.NoError(t, err)
	tests := []struct {
		mode     string
		require  string
		wantFail bool
		wantOut  string
	}{
		{mode: "newreal", require: "require", wantFail: true, wantOut: "BROKER_TEST_REDIS=require: install redis-server"},
		{mode: "servers", require: "require", wantFail: true, wantOut: "BROKER_TEST_REDIS=require: install redis-server"},
		{mode: "newreal", wantOut: "redis-server not on PATH; real-Redis leg skipped"},
		{mode: "servers", wantOut: "redis-server not on PATH; real-Redis leg skipped"},
	}
	for _, tt := range tests {
		t.Run(tt.mode+"_"+tt.require, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(),
				"PATH="+t.TempDir(),
				redistest.EnvRequire+"="+tt.require,
				helperEnv+"="+tt.mode,
			)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if tt.wantFail {
				require.ErrorAs(t, err, &exit, "want a failing exit:\n%s", out)
				assert.NotZero(t, exit.ExitCode())
			} else {
				require.NoError(t, err, "%s", out)
			}
			assert.Contains(t, string(out), tt.wantOut)
			if tt.mode == "servers" && !tt.wantFail {
				assert.Contains(t, string(out), "servers: [miniredis]")
			}
		})
	}
}

// TestHelperProcess runs only when re-executed by TestWithoutRedisSubprocess.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		t.Skip("helper for TestWithoutRedisSubprocess")
	case "newreal":
		redistest.NewReal(t)
		t.Fatal("NewReal returned without redis-server on PATH")
	case "servers":
		var names []string
		for _, s := range redistest.Servers(t) {
			names = append(names, s.Name)
		}
		t.Logf("servers: %v", names)
	}
}

func TestServers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	servers := redistest.Servers(t)
	want := []string{"miniredis"}
	if version, ok := redistest.Available(); ok {
		want = append(want, "redis-"+version)
	}
	var names []string
	for _, s := range servers {
		names = append(names, s.Name)
		require.NoError(t, s.Client(t).Ping(ctx).Err(), s.Name)
	}
	assert.Equal(t, want, names)
	assert.Equal(t, servers, redistest.Servers(t), "the same servers on every call")

	for _, s := range servers {
		for name, op := range map[string]func(testing.TB){"Stop": s.Stop, "Start": s.Start, "Restart": s.Restart, "Kill": s.Kill} {
			msg, fatal := catchFatal(t, op)
			assert.True(t, fatal, "%s on shared %s must fail", name, s.Name)
			assert.Contains(t, msg, "shared server")
		}
		require.NoError(t, s.Client(t).Ping(ctx).Err(), "%s still up", s.Name)
	}
}

func TestKillMiniredisFails(t *testing.T) {
	t.Parallel()
	s := redistest.NewMiniredis(t)
	msg, fatal := catchFatal(t, s.Kill)
	assert.True(t, fatal)
	assert.Contains(t, msg, "real server")
}

func TestForEach(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var names []string
	redistest.ForEach(t, func(t *testing.T, s *redistest.Server) {
		t.Parallel()
		assert.Contains(t, t.Name(), "/"+s.Name)
		topic := redistest.Topic(t)
		c := s.Client(t)
		require.NoError(t, c.Set(context.Background(), topic, s.Name, 0).Err())
		mu.Lock()
		names = append(names, s.Name)
		mu.Unlock()
	})
	t.Cleanup(func() {
		assert.Len(t, names, len(redistest.Servers(t)))
	})
}

func TestTopic(t *testing.T) {
	t.Parallel()
	legal := regexp.MustCompile(`^[A-Za-z0-9_.-]+-[0-9a-f]{8}$`)
	t.Run("sub test {tag}/x:y*", func(t *testing.T) {
		seen := map[string]bool{}
		for range 1000 {
			topic := redistest.Topic(t)
			assert.Regexp(t, legal, topic)
			assert.NotContains(t, topic, "{")
			assert.NotContains(t, topic, "}")
			assert.True(t, strings.HasPrefix(topic, "TestTopic_sub_test__tag__x_y_-"), topic)
			assert.False(t, seen[topic], "duplicate %s", topic)
			seen[topic] = true
		}
	})
	t.Run(strings.Repeat("long", 50), func(t *testing.T) {
		assert.Less(t, len(redistest.Topic(t)), 100)
	})
}

// configGet returns one CONFIG GET value from a real server.
func configGet(t *testing.T, s *redistest.Server, name string) string {
	t.Helper()
	v := s.Do(t, "CONFIG", "GET", name)
	// RESP3 replies with a map; RESP2 with a flat array.
	switch v := v.(type) {
	case map[any]any:
		return v[name].(string)
	case []any:
		require.Len(t, v, 2)
		return v[1].(string)
	}
	t.Fatalf("CONFIG GET %s: unexpected reply %#v", name, v)
	return ""
}

// fatalRecorder is a testing.TB whose Fatal records the message and ends only its own goroutine.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatal(args ...any) {
	r.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// catchFatal runs op with a fatalRecorder in a goroutine and reports whether op called Fatal.
func catchFatal(t *testing.T, op func(testing.TB)) (msg string, fatal bool) {
	r := &fatalRecorder{TB: t}
	done := make(chan bool)
	go func() {
		returned := false
		defer func() { done <- !returned }()
		op(r)
		returned = true
	}()
	fatal = <-done
	return r.msg, fatal
}
