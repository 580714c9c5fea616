//go:build linux

package redistest_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

// TestSharedServerDiesWithBinary kills a test binary that holds a shared redis-server and checks
// that the server goes too (Pdeathsig).
func TestSharedServerDiesWithBinary(t *testing.T) {
	t.Parallel()
	if _, ok := redistest.Available(); !ok {
		t.Skip("redis-server not on PATH")
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestHelperHang$", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), helperEnv+"=hang")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	pid := 0
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "redis-pid="); ok {
			pid, err = strconv.Atoi(v)
			require.NoError(t, err)
			break
		}
	}
	require.NotZero(t, pid, "helper printed no pid")
	require.True(t, alive(pid))

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	assert.Eventually(t, func() bool { return !alive(pid) }, 10*time.Second, 20*time.Millisecond,
		"redis-server %d outlived its killed test binary", pid)
}

// TestHelperHang runs only when re-executed by TestSharedServerDiesWithBinary: it starts the shared
// servers, prints the real server's pid and waits to be killed.
func TestHelperHang(t *testing.T) {
	if os.Getenv(helperEnv) != "hang" {
		t.Skip("helper for TestSharedServerDiesWithBinary")
	}
	s := redistest.Servers(t)[1]
	info := s.Do(t, "INFO", "server").(string)
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "process_id:"); ok {
			fmt.Printf("redis-pid=%s\n", v)
		}
	}
	select {}
}

// alive reports whether pid runs (a zombie counts as dead: it waits only to be reaped).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestDoRefusesServerNotOurs: Do sends nothing to a stopped server, nor to another redis-server
// that took the port after ours died behind the package's back: a fault injector never reaches a
// server the test did not start.
func TestDoRefusesServerNotOurs(t *testing.T) {
	t.Parallel()
	setPolicy := func(s *redistest.Server) func(testing.TB) {
		return func(tb testing.TB) { s.Do(tb, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru") }
	}

	stopped := redistest.NewReal(t)
	stopped.Stop(t)
	msg, fatal := catchFatal(t, setPolicy(stopped))
	require.True(t, fatal)
	assert.Contains(t, msg, "not running")

	// Ours dies without the package knowing (killed by someone else), and an impostor, which
	// this test starts and may therefore talk to, takes the port.
	s := redistest.NewReal(t)
	info := s.Do(t, "INFO", "server").(string)
	_, rest, _ := strings.Cut(info, "process_id:")
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]))
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return !alive(pid) }, 10*time.Second, 10*time.Millisecond)

	bin, err := exec.LookPath("redis-server")
	require.NoError(t, err)
	_, port, _ := strings.Cut(s.Addr, ":")
	impostor := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir())
	impostor.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, impostor.Start())
	t.Cleanup(func() { _ = impostor.Process.Kill(); _ = impostor.Wait() })
	c := redis.NewClient(&redis.Options{Addr: s.Addr, DisableIdentity: true, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	require.Eventually(t, func() bool { return c.Ping(context.Background()).Err() == nil }, 10*time.Second, 20*time.Millisecond)

	msg, fatal = catchFatal(t, setPolicy(s))
	require.True(t, fatal)
	assert.Contains(t, msg, "not ours")
	policy, err := c.ConfigGet(context.Background(), "maxmemory-policy").Result()
	require.NoError(t, err)
	assert.Equal(t, "noeviction", policy["maxmemory-policy"], "Do reached the impostor")
}
