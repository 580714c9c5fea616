package stream_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/redisbroker/broker/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// testLogger logs to stderr when STREAM_TEST_LOG is set, and nowhere
// otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("STREAM_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}
