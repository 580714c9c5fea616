package wire_test

import (
	"runtime"
	"runtime/metrics"
	"testing"

	"github.com/redisbroker/broker/internal/wire"
)

// decodeAllocBound is what Decode may allocate for a value of n bytes: a
// fixed part (the Message, the error path) plus a constant factor of n (a
// map entry costs tens of bytes, and its encoding as little as two).
func decodeAllocBound(n int) uint64 { return 1024 + 28*uint64(n) }

// bytesPerDecode measures the bytes Decode allocates for b, the least of a
// few runs so that a stray allocation elsewhere does not count.
func bytesPerDecode(b []byte) uint64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const runs = 20
	best := ^uint64(0)
	var ms runtime.MemStats
	for range 3 {
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		for range runs {
			_, _ = wire.Decode(b)
		}
		runtime.ReadMemStats(&ms)
		best = min(best, (ms.TotalAlloc-before)/runs)
	}
	return best
}

// heapAllocs reads the bytes allocated so far. runtime/metrics does not stop the world, unlike
// runtime.ReadMemStats, but counts small allocations a span at a time, so it can overstate one
// decode by a few KiB: it only spots candidates for the exact bytesPerDecode.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// checkDecodeAllocs fails t when decoding b allocates more than decodeAllocBound. The cheap
// measurement runs on every input (so the fuzzer keeps its pace); only an apparent excess is
// measured again exactly, and only a confirmed one fails.
func checkDecodeAllocs(t *testing.T, b []byte) {
	t.Helper()
	limit := decodeAllocBound(len(b))
	before := heapAllocs()
	_, _ = wire.Decode(b)
	if heapAllocs()-before <= limit {
		return
	}
	if got := bytesPerDecode(b); got > limit {
		t.Fatalf("Decode of a %d-byte value allocated %d bytes, more than %d", len(b), got, limit)
	}
}

// dupEntries is an envelope claiming n metadata entries, each an empty key
// and value: 2 bytes an entry, all the same key.
func dupEntries(n int) []byte {
	b := cat(header(wire.Version, 1, 1), 0, n)
	return append(b, make([]byte, 2*n)...)
}

// distinctEntries is an envelope with n distinct keys of keyLen bytes and
// empty values.
func distinctEntries(n, keyLen int) []byte {
	b := cat(header(wire.Version, 1, 1), 0, n)
	for i := range n {
		k := make([]byte, keyLen)
		for j, x := 0, i; j < keyLen; j, x = j+1, x>>8 {
			k[j] = byte(x)
		}
		b = cat(b, keyLen, k, 0)
	}
	return b
}

// TestDecodeAllocatesProportionally: whatever the counts a value claims,
// Decode allocates O(len(value)), valid or not.
func TestDecodeAllocatesProportionally(t *testing.T) {
	cases := map[string][]byte{
		"duplicate keys, max count":   dupEntries(wire.MaxMetadata),
		"duplicate keys, small":       dupEntries(64),
		"duplicate keys, truncated":   dupEntries(wire.MaxMetadata)[:2*wire.MaxMetadata],
		"distinct 1-byte keys":        distinctEntries(256, 1),
		"distinct 2-byte keys, max":   distinctEntries(wire.MaxMetadata, 2),
		"distinct keys, truncated":    distinctEntries(wire.MaxMetadata, 2)[:1000],
		"one entry and a big payload": cat(header(wire.Version, 1, 1), 0, 1, 1, "k", 1, "v", make([]byte, 1<<16)),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			got := bytesPerDecode(b)
			t.Logf("%d-byte value: %d bytes allocated (%.1f per byte)", len(b), got, float64(got)/float64(len(b)))
			if limit := decodeAllocBound(len(b)); got > limit {
				t.Fatalf("Decode of a %d-byte value allocated %d bytes, more than %d", len(b), got, limit)
			}
		})
	}
}
