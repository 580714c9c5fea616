package wire_test

import (
	"bytes"
	"encoding/binary"
	"maps"
	"testing"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// requireEqualMessage compares the fields the envelope carries: times with
// Equal, nil and empty payloads and metadata as equal.
func requireEqualMessage(t testing.TB, want, got *broker.Message) {
	t.Helper()
	if !messagesEqual(want, got) {
		t.Fatalf("messages differ:\nwant %+v\n got %+v", want, got)
	}
}

func messagesEqual(a, b *broker.Message) bool {
	return a.ID == b.ID &&
		a.Attempt == b.Attempt &&
		a.Time.Equal(b.Time) &&
		a.Time.IsZero() == b.Time.IsZero() &&
		bytes.Equal(a.Payload, b.Payload) &&
		maps.Equal(a.Metadata, b.Metadata)
}

// header builds the fixed 14-byte header of a version-v envelope.
func header(v byte, attempt uint16, ns int64) []byte {
	b := append([]byte(wire.Magic), v)
	b = binary.BigEndian.AppendUint16(b, attempt)
	return binary.BigEndian.AppendUint64(b, uint64(ns))
}

// cat concatenates byte slices and uvarints (given as uint64) into a value.
func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case []byte:
			b = append(b, p...)
		case string:
			b = append(b, p...)
		case uint64:
			b = binary.AppendUvarint(b, p)
		case int:
			b = binary.AppendUvarint(b, uint64(p))
		default:
			panic("cat: unsupported part")
		}
	}
	return b
}
