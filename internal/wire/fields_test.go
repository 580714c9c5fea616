package wire_test

import (
	"slices"
	"testing"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// pairs turns XADD values into the map go-redis returns for the entry.
func pairs(t *testing.T, kv []any) map[string]any {
	t.Helper()
	if len(kv)%2 != 0 {
		t.Fatalf("odd number of values: %v", kv)
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func TestAppendFields(t *testing.T) {
	m := &broker.Message{
		ID:       "01HWXYZ7K3M5N8P9QRSTVW0123",
		Time:     time.Unix(0, 1714566645123456789),
		Metadata: map[string]string{"b": "2", "a": "1"},
		Payload:  []byte("body"),
		Attempt:  5, // not a field: the pending list counts deliveries
	}
	got := wire.AppendFields([]any{"first"}, m)
	want := []any{"first",
		"id", "01HWXYZ7K3M5N8P9QRSTVW0123",
		"time", "1714566645123456789",
		"meta.a", "1", "meta.b", "2",
		"payload", "body",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("AppendFields =\n%q\nwant\n%q", got, want)
	}
	if got := wire.AppendFields(nil, &broker.Message{}); !slices.Equal(got, []any{"payload", ""}) {
		t.Fatalf("empty message: %q", got)
	}
}

func TestFieldsRoundTrip(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, m := range []*broker.Message{
		{},
		{Payload: []byte("p")},
		{ID: "id", Time: at, Payload: []byte{0, 0xff}},
		{Metadata: map[string]string{"payload": "x", "id": "y", "time": "z", "meta.k": "v", "": "e"}},
		{ID: "id", Time: at, Metadata: map[string]string{"k": "v"}, Payload: []byte("p")},
	} {
		got := wire.DecodeFields(pairs(t, wire.AppendFields(nil, m)))
		requireEqualMessage(t, m, got)
		if got.Payload == nil {
			t.Error("payload is nil, want empty")
		}
	}
}

func TestDecodeFields(t *testing.T) {
	at := time.Unix(0, 1714566645123456789)
	tests := []struct {
		name   string
		values map[string]any
		want   broker.Message
	}{
		{"ours", map[string]any{"id": "i", "time": "1714566645123456789", "meta.k": "v", "payload": "p"},
			broker.Message{ID: "i", Time: at, Metadata: map[string]string{"k": "v"}, Payload: []byte("p")}},
		{"time zero", map[string]any{"time": "0", "payload": "p"},
			broker.Message{Payload: []byte("p")}},
		{"unparseable time is metadata", map[string]any{"time": "yesterday", "payload": "p"},
			broker.Message{Metadata: map[string]string{"time": "yesterday"}, Payload: []byte("p")}},
		{"other field is metadata", map[string]any{"source": "cli", "payload": "p"},
			broker.Message{Metadata: map[string]string{"source": "cli"}, Payload: []byte("p")}},
		{"meta prefix wins", map[string]any{"x": "plain", "meta.x": "ours", "payload": "p"},
			broker.Message{Metadata: map[string]string{"x": "ours"}, Payload: []byte("p")}},
		{"single foreign field (XADD s * k v)", map[string]any{"k": "v"},
			broker.Message{Metadata: map[string]string{"k": "v"}, Payload: []byte("v")}},
		{"single foreign id field", map[string]any{"id": "42"},
			broker.Message{Metadata: map[string]string{"id": "42"}, Payload: []byte("42")}},
		{"several foreign fields", map[string]any{"a": "1", "b": "2"},
			broker.Message{Metadata: map[string]string{"a": "1", "b": "2"}}},
		{"no fields", map[string]any{}, broker.Message{}},
		{"non-string values", map[string]any{"n": 42, "b": []byte("bytes"), "payload": 1.5},
			broker.Message{Metadata: map[string]string{"n": "42", "b": "bytes"}, Payload: []byte("1.5")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wire.DecodeFields(tt.values)
			requireEqualMessage(t, &tt.want, got)
			if got.Payload == nil {
				t.Error("payload is nil, want empty")
			}
			if len(tt.want.Metadata) == 0 && got.Metadata != nil {
				t.Errorf("metadata %#v, want nil", got.Metadata)
			}
		})
	}
}
