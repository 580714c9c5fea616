package stream

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/redistest"
)

// crc16 is Redis Cluster's key hash (CRC16-CCITT, XMODEM).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// keySlot is Redis Cluster's keyHashSlot: the first non-empty {tag}, or the
// whole key.
func keySlot(key string) uint16 {
	if tag, ok := hashTag(key); ok {
		return crc16(tag) % 16384
	}
	return crc16(key) % 16384
}

func TestKeySlot(t *testing.T) {
	// Known values of CLUSTER KEYSLOT.
	assert.EqualValues(t, 12182, keySlot("foo"))
	assert.EqualValues(t, 5061, keySlot("bar"))
	assert.Equal(t, keySlot("bar"), keySlot("foo{bar}"))
	assert.Equal(t, keySlot("foo{}{bar}"), crc16("foo{}{bar}")%16384, "an empty first tag hashes the whole key")
}

// TestDeadKeySameSlot: the dead-letter stream hashes to the topic's Cluster
// slot for every accepted topic, braces included, so the dead-letter script
// never fails with CROSSSLOT; topics for which no such key exists are
// rejected.
func TestDeadKeySameSlot(t *testing.T) {
	for _, topic := range []string{
		"orders", "a{b}c", "{orders}", "tenant{7}orders", "a{b", "{", "x{y}z{w}", "a{{b}}", "{a}}",
	} {
		require.NoError(t, checkTopic(topic), topic)
		assert.Equal(t, keySlot(topic), keySlot(deadKey(topic)), "topic %q, dead key %q", topic, deadKey(topic))
	}
	assert.Equal(t, "{orders}:dead", deadKey("orders"), "the usual key is unchanged")
	assert.Equal(t, "a{b}c:dead", deadKey("a{b}c"))
	for _, topic := range []string{"", "a}b", "{}x", "x{}", "}{"} {
		assert.ErrorIs(t, checkTopic(topic), broker.ErrInvalidOption, "topic %q", topic)
	}
}

// TestDeadKeySlotOnCluster asks a cluster-enabled redis-server (CLUSTER
// KEYSLOT) instead of the local hash.
func TestDeadKeySlotOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a redis-server")
	}
	t.Parallel()
	srv := redistest.NewReal(t, redistest.WithArgs("--cluster-enabled", "yes"))
	for _, topic := range []string{"orders", "a{b}c", "tenant{7}orders", "a{b", "x{y}z{w}", "{a}}"} {
		assert.Equal(t, srv.Do(t, "CLUSTER", "KEYSLOT", topic), srv.Do(t, "CLUSTER", "KEYSLOT", deadKey(topic)), "topic %q", topic)
	}
}
