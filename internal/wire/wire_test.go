package wire_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

func TestRoundTrip(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	large := make(map[string]string, 1000)
	for i := range 1000 {
		large[fmt.Sprintf("key-%04d", i)] = strings.Repeat("v", i%200)
	}
	tests := []struct {
		name string
		msg  broker.Message
	}{
		{"zero", broker.Message{}},
		{"binary payload", broker.Message{ID: "x", Payload: []byte{0, 0xff, 0, 0xff, 0x80}, Time: at}},
		{"payload that looks like an envelope", broker.Message{Payload: []byte(wire.Magic + "\x01garbage")}},
		{"empty payload", broker.Message{ID: "id", Payload: []byte{}}},
		{"nil metadata", broker.Message{Metadata: nil, Payload: []byte("p")}},
		{"empty metadata", broker.Message{Metadata: map[string]string{}, Payload: []byte("p")}},
		{"metadata", broker.Message{Metadata: map[string]string{"a": "1", "b": "", "": "c"}}},
		{"large metadata", broker.Message{Metadata: large, Payload: []byte("p")}},
		{"long id", broker.Message{ID: strings.Repeat("i", 300)}},
		{"large payload", broker.Message{Payload: []byte(strings.Repeat("z", 1<<20))}},
		{"attempt 0", broker.Message{Attempt: 0}},
		{"attempt 1", broker.Message{Attempt: 1}},
		{"attempt 65535", broker.Message{Attempt: 65535}},
		{"time with nanoseconds", broker.Message{Time: at}},
		{"local time", broker.Message{Time: time.Unix(1700000000, 5)}},
		{"time before 1970", broker.Message{Time: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := wire.Encode(&tt.msg)
			if len(b) != wire.EncodedLen(&tt.msg) || cap(b) != len(b) {
				t.Fatalf("len %d cap %d, EncodedLen %d", len(b), cap(b), wire.EncodedLen(&tt.msg))
			}
			got, err := wire.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			requireEqualMessage(t, &tt.msg, got)
			if got.Payload == nil {
				t.Error("decoded payload is nil, want empty slice")
			}
			if len(tt.msg.Metadata) == 0 && got.Metadata != nil {
				t.Errorf("empty metadata decoded to %#v, want nil", got.Metadata)
			}
			if tt.msg.Time.IsZero() != got.Time.IsZero() {
				t.Errorf("IsZero: got %v", got.Time.IsZero())
			}
			if !got.Time.IsZero() && got.Time.Location() != time.UTC {
				t.Errorf("time location %v, want UTC", got.Time.Location())
			}
		})
	}
}

func TestAttemptClamped(t *testing.T) {
	for _, tt := range []struct{ in, want int }{
		{-1, 0}, {-1 << 40, 0}, {65536, 65535}, {1 << 40, 65535},
	} {
		got, err := wire.Decode(wire.Encode(&broker.Message{Attempt: tt.in}))
		if err != nil {
			t.Fatal(err)
		}
		if got.Attempt != tt.want {
			t.Errorf("attempt %d: decoded %d, want %d", tt.in, got.Attempt, tt.want)
		}
	}
}

func TestEncodeDeterministic(t *testing.T) {
	m := &broker.Message{Metadata: map[string]string{}}
	for i := range 50 {
		m.Metadata[fmt.Sprint(i)] = "v"
	}
	want := wire.Encode(m)
	for range 20 {
		if got := wire.Encode(m); string(got) != string(want) {
			t.Fatal("two encodings of one message differ")
		}
	}
}

func TestAppend(t *testing.T) {
	m := &broker.Message{ID: "id", Payload: []byte("p"), Metadata: map[string]string{"k": "v"}}
	b := wire.Append([]byte("prefix"), m)
	if !strings.HasPrefix(string(b), "prefix") || string(b[len("prefix"):]) != string(wire.Encode(m)) {
		t.Fatalf("Append = %q", b)
	}
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { buf = wire.Append(buf[:0], m) }); n != 0 {
		t.Errorf("Append with capacity: %v allocs, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = wire.Encode(m) }); n != 1 {
		t.Errorf("Encode: %v allocs, want 1", n)
	}
}

func TestDecodeForeign(t *testing.T) {
	for _, v := range []string{
		"hello", // redis-cli RPUSH t hello
		"",
		`{"event":"signup","user":42}`,
		"\xff",
		"\xffB",
		"\xffBJ\x01rest",
		"\xffbk\x01rest",
		"\xfe\xff",
		"BK\xff",
	} {
		t.Run(fmt.Sprintf("%q", v), func(t *testing.T) {
			b := []byte(v)
			if wire.IsEnvelope(b) {
				t.Fatal("IsEnvelope = true")
			}
			m, err := wire.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			requireEqualMessage(t, &broker.Message{Payload: b}, m)
			if _, ok := wire.Attempt(b); ok {
				t.Error("Attempt ok for a foreign value")
			}
		})
	}
}

// malformedCases are envelopes that must fail, with the reason they give.
// FuzzDecode uses them as seeds.
func malformedCases() []struct {
	name, reason string
	b            []byte
} {
	h := header(wire.Version, 1, 1)
	overflow := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}
	return []struct {
		name, reason string
		b            []byte
	}{
		{"magic only", "wire: header truncated: 3 of 14 bytes", []byte(wire.Magic)},
		{"short header", "wire: header truncated: 13 of 14 bytes", h[:13]},
		{"version 0", "wire: unknown version 0", cat(header(0, 1, 1), 0, 0)},
		{"version 2", "wire: unknown version 2", cat(header(2, 1, 1), 0, 0)},
		{"header only", "wire: id length truncated", h},
		{"id length over value", "wire: id length 300 exceeds remaining 12 bytes", cat(h, 300, "twelve bytes")},
		{"huge id length", "wire: id length 18446744073709551615 exceeds remaining 0 bytes", cat(h, ^uint64(0))},
		{"overflowing id length", "wire: id length overflows 64 bits", cat(h, overflow)},
		{"truncated id length", "wire: id length truncated", cat(h, []byte{0x80, 0x80})},
		{"no metadata count", "wire: metadata count truncated", cat(h, 2, "id")},
		{"overflowing metadata count", "wire: metadata count overflows 64 bits", cat(h, 0, overflow)},
		{"metadata count over limit", "wire: metadata count 4097 exceeds limit 4096", cat(h, 0, 4097)},
		{"huge metadata count", "wire: metadata count 18446744073709551615 exceeds limit 4096", cat(h, 0, ^uint64(0))},
		{"metadata count over value", "wire: metadata count 3 exceeds remaining 5 bytes", cat(h, 0, 3, 0, 0, 0, 0, 0)},
		{"key length over value", "wire: metadata entry 0 key length 50 exceeds remaining 2 bytes", cat(h, 0, 1, 50, "ab")},
		{"huge key length", "wire: metadata entry 1 key length 18446744073709551615 exceeds remaining 2 bytes", cat(h, 0, 2, 0, 0, ^uint64(0), 0, 0)},
		{"overflowing value length", "wire: metadata entry 0 value length overflows 64 bits", cat(h, 0, 1, 1, "k", overflow)},
		{"missing value length", "wire: metadata entry 0 value length truncated", cat(h, 0, 1, 1, "k")},
		{"value length over value", "wire: metadata entry 0 value length 9 exceeds remaining 1 bytes", cat(h, 0, 1, 1, "k", 9, "v")},
	}
}

func TestDecodeMalformed(t *testing.T) {
	for _, tt := range malformedCases() {
		t.Run(tt.name, func(t *testing.T) {
			m, err := wire.Decode(tt.b)
			if !errors.Is(err, broker.ErrMalformed) {
				t.Fatalf("Decode = %+v, %v; want ErrMalformed", m, err)
			}
			if want := tt.reason + ": broker: malformed message"; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			if m != nil {
				t.Errorf("message %+v, want nil", m)
			}
		})
	}
}

// TestDecodeTruncated decodes every prefix of valid envelopes. The envelope
// has no payload length, so a cut inside the payload decodes to a shorter
// payload; a cut anywhere before it must fail.
func TestDecodeTruncated(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			b := wire.Encode(g.msg)
			payloadStart := len(b) - len(g.msg.Payload)
			for i := range len(b) {
				m, err := wire.Decode(b[:i])
				switch {
				case i < len(wire.Magic):
					if err != nil || string(m.Payload) != string(b[:i]) {
						t.Fatalf("prefix %d: %+v, %v; want foreign value", i, m, err)
					}
				case i < payloadStart:
					if !errors.Is(err, broker.ErrMalformed) {
						t.Fatalf("prefix %d of %d: %+v, %v; want ErrMalformed", i, payloadStart, m, err)
					}
				default:
					if err != nil {
						t.Fatalf("prefix %d: %v", i, err)
					}
					want := *g.msg
					want.Payload = g.msg.Payload[:i-payloadStart]
					requireEqualMessage(t, &want, m)
				}
			}
		})
	}
}

func TestDecodeDuplicateKeysLastWins(t *testing.T) {
	b := cat(header(wire.Version, 0, 0), 0, 2, 1, "k", 5, "first", 1, "k", 4, "last", "payload")
	m, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	requireEqualMessage(t, &broker.Message{Metadata: map[string]string{"k": "last"}, Payload: []byte("payload")}, m)
}

func TestDecodeMetadataLimit(t *testing.T) {
	md := make(map[string]string, wire.MaxMetadata)
	for i := range wire.MaxMetadata {
		md[fmt.Sprint(i)] = ""
	}
	m := &broker.Message{Metadata: md}
	if _, err := wire.Decode(wire.Encode(m)); err != nil {
		t.Fatalf("%d entries: %v", wire.MaxMetadata, err)
	}
	md["one too many"] = ""
	if _, err := wire.Decode(wire.Encode(m)); !errors.Is(err, broker.ErrMalformed) {
		t.Fatalf("%d entries: %v, want ErrMalformed", len(md), err)
	}
}

func TestDecodeAliasesPayload(t *testing.T) {
	b := wire.Encode(&broker.Message{ID: "id", Metadata: map[string]string{"k": "v"}, Payload: []byte("abc")})
	m, err := wire.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if &m.Payload[0] != &b[len(b)-3] || cap(m.Payload) != 3 {
		t.Error("payload does not alias the value")
	}
	clear(b) // ID and metadata are copies and must survive
	if m.ID != "id" || m.Metadata["k"] != "v" {
		t.Errorf("ID %q metadata %v changed with the value", m.ID, m.Metadata)
	}
}

func TestDecodeInto(t *testing.T) {
	m := &broker.Message{Topic: "orders", ID: "old", Metadata: map[string]string{"old": "1"}, Attempt: 9}
	b := wire.Encode(&broker.Message{ID: "new", Payload: []byte("p"), Attempt: 2})
	if err := wire.DecodeInto(m, b); err != nil {
		t.Fatal(err)
	}
	want := &broker.Message{Topic: "orders", ID: "new", Payload: []byte("p"), Attempt: 2}
	requireEqualMessage(t, want, m)
	if m.Topic != "orders" || m.Metadata != nil {
		t.Errorf("topic %q metadata %v", m.Topic, m.Metadata)
	}

	before := *m
	if err := wire.DecodeInto(m, []byte(wire.Magic+"\x09")); !errors.Is(err, broker.ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	requireEqualMessage(t, &before, m)

	if err := wire.DecodeInto(m, []byte("plain")); err != nil {
		t.Fatal(err)
	}
	requireEqualMessage(t, &broker.Message{Payload: []byte("plain")}, m)
	if m.Topic != "orders" {
		t.Errorf("topic %q", m.Topic)
	}
}

func TestAttempt(t *testing.T) {
	tests := []struct {
		name   string
		b      []byte
		want   int
		wantOK bool
	}{
		{"attempt 1", wire.Encode(&broker.Message{Attempt: 1}), 1, true},
		{"attempt 65535", wire.Encode(&broker.Message{Attempt: 65535, Payload: []byte("x")}), 65535, true},
		{"header only", header(wire.Version, 7, 0), 7, true},
		{"short header", header(wire.Version, 7, 0)[:wire.HeaderLen-1], 0, false},
		{"unknown version", header(2, 7, 0), 0, false},
		{"foreign", []byte("hello"), 0, false},
		{"nil", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := wire.Attempt(tt.b)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Attempt = %d, %v; want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestAttemptOffset pins where Lua scripts find the attempt.
func TestAttemptOffset(t *testing.T) {
	b := wire.Encode(&broker.Message{Attempt: 0x0102})
	if b[wire.AttemptOffset] != 0x01 || b[wire.AttemptOffset+1] != 0x02 {
		t.Fatalf("attempt bytes %x", b[wire.AttemptOffset:wire.AttemptOffset+2])
	}
	b[wire.AttemptOffset+1]++ // what a Lua script does on redelivery
	if n, _ := wire.Attempt(b); n != 0x0103 {
		t.Fatalf("Attempt = %#x", n)
	}
}
