package redistest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Test servers listen below the kernel's ephemeral port range where they can. A port inside that
// range is handed to outgoing connections: while a test's server is stopped, any connect (even a
// client redialling that very server, which then connects to itself, a TCP self-connect) can take
// it, and Start on the same port fails with "address already in use". Seen in CI as a flake.
const (
	lowestPort = 20000 // below: well-known and registered service ports are more crowded
	portTries  = 50    // random probes below the ephemeral range before falling back to :0
)

// ephemeralRangeFile is where Linux keeps its ephemeral range ("32768\t60999").
const ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// freePort returns a port that was free a moment ago, below the ephemeral range when it can find
// one there, else any port the kernel picks.
func freePort() (int, error) {
	if low, ok := ephemeralLow(); ok && low > lowestPort {
		for range portTries {
			port := lowestPort + rand.IntN(low-lowestPort)
			if bindable(port) == nil {
				return port, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// onFreePort calls start with free ports until it succeeds, spawnTries times at most: another
// process can take a port between our probe and the server's own listen. It returns the port
// start succeeded on, or the last error.
func onFreePort(start func(port int) error) (int, error) {
	var err error
	for range spawnTries {
		var port int
		if port, err = freePort(); err != nil {
			return 0, err
		}
		if err = start(port); err == nil {
			return port, nil
		}
	}
	return 0, err
}

// ephemeralLow returns the first port of the kernel's ephemeral range, where the system says.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile(ephemeralRangeFile)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	low, err := strconv.Atoi(f[0])
	return low, err == nil && low > 0 && low < 65536
}

// bindable reports whether 127.0.0.1:port can be listened on now (nil), or why not.
func bindable(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}

// waitBindable waits until 127.0.0.1:port can be listened on, while something else holds it
// (a connection that took the port while our server was stopped ends soon: the client closes a
// self-connected socket when its handshake fails or times out), for timeout at most.
func waitBindable(port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := bindable(port)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(pollInterval)
	}
}
