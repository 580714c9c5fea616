package redistest

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFreePortBelowEphemeralRange: test servers get ports that outgoing connections are never
// given, so a stopped server's port is still free when it starts again.
func TestFreePortBelowEphemeralRange(t *testing.T) {
	low, ok := ephemeralLow()
	if !ok {
		t.Skipf("no %s here: freePort lets the kernel pick", ephemeralRangeFile)
	}
	for range 20 {
		port, err := freePort()
		require.NoError(t, err)
		assert.GreaterOrEqual(t, port, lowestPort)
		assert.Less(t, port, low, "inside the ephemeral range")
		assert.NoError(t, bindable(port))
	}
}
