package wire_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// FuzzDecode checks that Decode never panics, fails only with ErrMalformed
// on envelopes, allocates O(len(value)) whatever its counts claim, agrees
// with DecodeString and ScanMetadata, and that whatever it decodes
// re-encodes to a value that decodes to an equal message.
func FuzzDecode(f *testing.F) {
	for _, g := range goldens() {
		b, err := os.ReadFile(goldenPath(g.name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, c := range malformedCases() {
		f.Add(c.b)
	}
	f.Add(dupEntries(wire.MaxMetadata)) // a hostile count of duplicate entries
	f.Add([]byte("hello"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecodeAllocs(t, b)
		checkDecodeString(t, b)
		m, err := wire.Decode(b)
		if err != nil {
			if !errors.Is(err, broker.ErrMalformed) || !wire.IsEnvelope(b) {
				t.Fatalf("Decode(%q): unexpected error %v", b, err)
			}
			return
		}
		if !wire.IsEnvelope(b) && !bytes.Equal(m.Payload, b) {
			t.Fatalf("foreign value %q decoded to payload %q", b, m.Payload)
		}
		if a, ok := wire.Attempt(b); ok != wire.IsEnvelope(b) || a != m.Attempt {
			t.Fatalf("Attempt = %d, %v; decoded attempt %d", a, ok, m.Attempt)
		}
		re := wire.Encode(m)
		if len(re) != wire.EncodedLen(m) {
			t.Fatalf("EncodedLen %d, encoded %d bytes", wire.EncodedLen(m), len(re))
		}
		m2, err := wire.Decode(re)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", re, err)
		}
		requireEqualMessage(t, m, m2)
		if !bytes.Equal(wire.Encode(m2), re) {
			t.Fatal("encoding is not canonical")
		}
	})
}

// checkDecodeString checks that DecodeString and ScanMetadata accept and
// reject what Decode does, and that DecodeString's message plus the entries
// it handed to reserved equals Decode's.
func checkDecodeString(t *testing.T, b []byte) {
	t.Helper()
	want, werr := wire.Decode(bytes.Clone(b))
	var got broker.Message
	claimed := map[string]string{}
	serr := wire.DecodeString(&got, string(b), func(k, v string) bool {
		if len(k)%2 == 1 { // an arbitrary half of the keys
			claimed[k] = v
			return true
		}
		return false
	})
	scanned := map[string]string{}
	scerr := wire.ScanMetadata(string(b), func(k, v string) { scanned[k] = v })
	if (werr == nil) != (serr == nil) || (werr == nil) != (scerr == nil) {
		t.Fatalf("Decode: %v; DecodeString: %v; ScanMetadata: %v", werr, serr, scerr)
	}
	if werr != nil {
		return
	}
	for k, v := range claimed {
		if got.Metadata == nil {
			got.Metadata = map[string]string{}
		}
		got.Metadata[k] = v
	}
	requireEqualMessage(t, want, &got)
	if len(want.Metadata) != len(scanned) {
		t.Fatalf("ScanMetadata saw %d keys, Decode %d", len(scanned), len(want.Metadata))
	}
	for k, v := range want.Metadata {
		if scanned[k] != v {
			t.Fatalf("ScanMetadata %q = %q, Decode %q", k, scanned[k], v)
		}
	}
}
