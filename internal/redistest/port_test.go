package redistest_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker/internal/redistest"
)

// TestStartWaitsForItsPort: a stopped server's port can be taken for a moment by another socket
// (an outgoing connection, even a client's self-connect to the stopped server); Start waits for
// it instead of failing.
func TestStartWaitsForItsPort(t *testing.T) {
	for name, newServer := range map[string]func(testing.TB, ...redistest.Option) *redistest.Server{
		"miniredis": func(t testing.TB, _ ...redistest.Option) *redistest.Server { return redistest.NewMiniredis(t) },
		"real":      redistest.NewReal,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t)
			s.Stop(t)
			var l net.Listener
			require.Eventually(t, func() bool {
				var err error
				l, err = net.Listen("tcp", s.Addr)
				return err == nil
			}, 5*time.Second, 10*time.Millisecond, "take the stopped server's port")
			go func() {
				time.Sleep(300 * time.Millisecond)
				l.Close()
			}()
			s.Start(t)
			require.NoError(t, s.Client(t).Ping(context.Background()).Err())
		})
	}
}
