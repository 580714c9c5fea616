package wire_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// benchMessage is a typical message: a 26-char ID, a time, a 100-byte
// payload and no metadata.
func benchMessage() *broker.Message {
	return &broker.Message{
		ID:      "01HWXYZ7K3M5N8P9QRSTVW0123",
		Payload: bytes.Repeat([]byte{'x'}, 100),
		Attempt: 1,
		Time:    time.Unix(0, 1714566645123456789),
	}
}

func BenchmarkEncode(b *testing.B) {
	m := benchMessage()
	b.ReportAllocs()
	b.SetBytes(int64(len(m.Payload)))
	for b.Loop() {
		_ = wire.Encode(m)
	}
	b.ReportMetric(float64(wire.EncodedLen(m)-len(m.Payload)), "overhead-bytes")
}

func BenchmarkAppend(b *testing.B) {
	m := benchMessage()
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(m.Payload)))
	for b.Loop() {
		buf = wire.Append(buf[:0], m)
	}
}

func BenchmarkAppendMetadata(b *testing.B) {
	m := benchMessage()
	m.Metadata = map[string]string{"content-type": "application/json", "trace-id": "4bf92f3577b34da6"}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(m.Payload)))
	for b.Loop() {
		buf = wire.Append(buf[:0], m)
	}
}

func BenchmarkDecode(b *testing.B) {
	v := wire.Encode(benchMessage())
	b.ReportAllocs()
	b.SetBytes(int64(len(v)))
	var m *broker.Message
	for b.Loop() {
		var err error
		// Assigning to m, declared outside the loop, keeps the message on
		// the heap as in real use instead of letting the inlined Decode
		// allocate it on the stack.
		if m, err = wire.Decode(v); err != nil {
			b.Fatal(err)
		}
	}
	_ = m
}

func BenchmarkDecodeInto(b *testing.B) {
	v := wire.Encode(benchMessage())
	var m broker.Message
	b.ReportAllocs()
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		if err := wire.DecodeInto(&m, v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = wire.NewID()
	}
}

func BenchmarkNewIDParallel(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = wire.NewID()
		}
	})
}
