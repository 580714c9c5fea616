package wire

import (
	"encoding/binary"
	"slices"

	"github.com/redisbroker/broker"
)

const (
	// Magic starts every envelope. 0xFF never starts valid UTF-8, so plain
	// text never starts with it.
	Magic = "\xffBK"
	// Version is the envelope layout this package writes.
	Version = 1
	// HeaderLen is the fixed-size header: magic(3) version(1) attempt(2)
	// time(8).
	HeaderLen = 14
	// AttemptOffset is where the attempt lives: a big-endian uint16 at
	// value[4:6]. Lua scripts read and modify it there.
	AttemptOffset = 4
	// MaxAttempt is the largest attempt an envelope can hold; Append clamps
	// larger values to it.
	MaxAttempt = 1<<16 - 1
	// MaxMetadata is the most metadata entries Decode accepts. Append writes
	// whatever it is given, so publishers must reject larger maps.
	MaxMetadata = 4096

	versionOffset = 3
	timeOffset    = 6
	// sortBufLen metadata keys are sorted on the stack; more allocate.
	sortBufLen = 16
)

// EncodedLen returns the length of the envelope of m.
func EncodedLen(m *broker.Message) int {
	n := HeaderLen + lenPrefixed(len(m.ID)) + uvarintLen(uint64(len(m.Metadata)))
	for k, v := range m.Metadata {
		n += lenPrefixed(len(k)) + lenPrefixed(len(v))
	}
	return n + len(m.Payload)
}

// Encode returns the envelope of m in a slice of exactly EncodedLen(m) bytes.
func Encode(m *broker.Message) []byte {
	return Append(make([]byte, 0, EncodedLen(m)), m)
}

// Append appends the envelope of m to dst and returns the extended slice. It
// allocates nothing when dst has room, except to sort more than 16 metadata
// keys. It does not fill ID or Time: Publish does. Attempt is clamped to
// [0, MaxAttempt]; a zero Time is stored as 0. Time must lie within the range
// of UnixNano (years 1678 to 2262); the Unix epoch itself reads back as the
// zero time. Metadata is written sorted by key, so equal messages encode to
// equal bytes.
func Append(dst []byte, m *broker.Message) []byte {
	dst = append(dst, Magic...)
	dst = append(dst, Version)
	dst = binary.BigEndian.AppendUint16(dst, clampAttempt(m.Attempt))
	dst = binary.BigEndian.AppendUint64(dst, uint64(unixNano(m)))
	dst = appendString(dst, m.ID)
	dst = appendMetadata(dst, m.Metadata)
	return append(dst, m.Payload...)
}

func appendMetadata(dst []byte, md map[string]string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(md)))
	if len(md) == 0 {
		return dst
	}
	var buf [sortBufLen]string
	for _, k := range sortedKeys(buf[:0], md) {
		dst = appendString(dst, k)
		dst = appendString(dst, md[k])
	}
	return dst
}

// sortedKeys appends the keys of md to buf, sorted. buf lives on the caller's
// stack, so small maps sort without allocating.
func sortedKeys(buf []string, md map[string]string) []string {
	for k := range md {
		buf = append(buf, k)
	}
	slices.Sort(buf)
	return buf
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func clampAttempt(a int) uint16 {
	return uint16(min(max(a, 0), MaxAttempt))
}

// unixNano maps the zero time to 0: time.Time{}.UnixNano() is not 0.
func unixNano(m *broker.Message) int64 {
	if m.Time.IsZero() {
		return 0
	}
	return m.Time.UnixNano()
}

func lenPrefixed(n int) int {
	return uvarintLen(uint64(n)) + n
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
