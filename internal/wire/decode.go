package wire

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/redisbroker/broker"
)

// text is what values read from Redis come as: go-redis hands strings, the
// queue's scripts and tests hand bytes. The decoder is written once for both.
type text interface{ ~string | ~[]byte }

// IsEnvelope reports whether b starts with Magic, that is whether Decode
// treats it as an envelope rather than a foreign value.
func IsEnvelope(b []byte) bool { return isEnvelope(b) }

func isEnvelope[T text](b T) bool {
	return len(b) >= len(Magic) && string(b[:len(Magic)]) == Magic
}

// Attempt reads the attempt from the header of b without decoding the rest.
// It reports false when b is not an envelope, has a header shorter than
// HeaderLen, or has a version whose layout this package does not know.
func Attempt(b []byte) (int, bool) {
	if !isEnvelope(b) || len(b) < HeaderLen || b[versionOffset] != Version {
		return 0, false
	}
	return int(binary.BigEndian.Uint16(b[AttemptOffset:])), true
}

// Decode decodes a value read from Redis.
//
// A value that does not start with Magic is foreign (written by redis-cli or
// another client) and decodes, with no error, to a message whose Payload is b.
// A value that starts with Magic but is truncated before its payload, has an
// unknown version, or holds a length or count that overruns it returns an
// error wrapping broker.ErrMalformed that says why. Decode never panics.
//
// Payload aliases b; an empty payload is a zero-length slice, non-nil when b
// is. ID and metadata are copies. Empty metadata decodes to a nil map, and of
// duplicate metadata keys the last wins. A zero time decodes to time.Time{},
// any other to time.Unix(0, ns) in UTC, so that a decoded message prints the
// same on every host.
func Decode(b []byte) (*broker.Message, error) {
	m := new(broker.Message)
	if err := DecodeInto(m, b); err != nil {
		return nil, err
	}
	return m, nil
}

// DecodeInto is Decode into a caller's message, for pooling. It sets ID,
// Payload, Metadata, Attempt and Time, and leaves Topic, which the envelope
// does not carry. Metadata is a new map (or nil), never the old one reused: a
// pooled map may still be referenced by whoever had the message before. On
// error m is unchanged.
func DecodeInto(m *broker.Message, b []byte) error {
	return decode(m, b, nil)
}

// DecodeString is DecodeInto for a value held in a string, as go-redis
// returns it, with two differences. Payload, ID and metadata are copies, so
// a handler that keeps any of them does not keep the whole value alive. And
// metadata entries for which reserved (when not nil) returns true are left
// out of Metadata: a package keeps its own bookkeeping in reserved keys
// without inserting them into a map only to delete them again. The strings
// reserved receives alias v.
func DecodeString(m *broker.Message, v string, reserved func(k, v string) bool) error {
	return decode(m, v, reserved)
}

// ScanMetadata calls fn for every metadata entry of the envelope v, with
// strings that alias v, without copying the payload: for values that are
// dropped unread (too large) but whose reserved keys still count. It returns
// the error Decode would for a malformed header, ID or metadata, and nil for
// a foreign value, which has no metadata.
func ScanMetadata(v string, fn func(k, v string)) error {
	if !isEnvelope(v) {
		return nil
	}
	r, err := newReader(v)
	if err != nil {
		return err
	}
	if _, err := r.string("id length", -1); err != nil {
		return err
	}
	_, err = r.metadata(func(k, v string) bool { fn(k, v); return true })
	return err
}

func decode[T text](m *broker.Message, b T, reserved func(k, v string) bool) error {
	if !isEnvelope(b) {
		*m = broker.Message{Topic: m.Topic, Payload: payloadOf(b, 0)}
		return nil
	}
	r, err := newReader(b)
	if err != nil {
		return err
	}
	id, err := r.string("id length", -1)
	if err != nil {
		return err
	}
	md, err := r.metadata(reserved)
	if err != nil {
		return err
	}
	*m = broker.Message{
		ID:       r.own(id),
		Topic:    m.Topic,
		Payload:  payloadOf(b, r.off),
		Metadata: md,
		Attempt:  int(uint16(b[AttemptOffset])<<8 | uint16(b[AttemptOffset+1])),
		Time:     unixTime(int64(bigEndian64(b[timeOffset:]))),
	}
	return nil
}

// payloadOf returns b[off:] as bytes: aliasing b when b is bytes, a copy when
// it is a string. The capacity is cut, so appending to a payload never writes
// into what follows it.
func payloadOf[T text](b T, off int) []byte {
	p := []byte(b[off:])
	return p[:len(p):len(p)]
}

// bigEndian64 reads 8 big-endian bytes from the start of b.
func bigEndian64[T text](b T) uint64 {
	var x uint64
	for i := range 8 {
		x = x<<8 | uint64(b[i])
	}
	return x
}

// unixTime is the inverse of unixNano: 0 is the zero time.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// reader walks the variable part of an envelope. Every read checks its
// length against what is left before slicing or allocating.
type reader[T text] struct {
	b   T
	off int
	// copies: strings cut from a string value alias it and must be copied
	// before they are kept; strings cut from bytes are copies already.
	copies bool
}

// newReader checks the fixed header of the envelope b and returns a reader
// positioned after it.
func newReader[T text](b T) (reader[T], error) {
	if len(b) < HeaderLen {
		return reader[T]{}, malformed("header truncated: %d of %d bytes", len(b), HeaderLen)
	}
	if v := b[versionOffset]; v != Version {
		return reader[T]{}, malformed("unknown version %d", v)
	}
	var zero T
	_, isString := any(zero).(string)
	return reader[T]{b: b, off: HeaderLen, copies: isString}, nil
}

func (r *reader[T]) remaining() int { return len(r.b) - r.off }

// own returns s, copied when it aliases a string value.
func (r *reader[T]) own(s string) string {
	if r.copies {
		return strings.Clone(s)
	}
	return s
}

// uvarint reads the uvarint named what, in metadata entry entry (or -1 outside
// the metadata). Names are formatted only on the error path, so reads do not
// allocate.
func (r *reader[T]) uvarint(what string, entry int) (uint64, error) {
	// One byte more than the longest uvarint, so that binary.Uvarint tells
	// an overflowing length from a truncated one.
	var buf [binary.MaxVarintLen64 + 1]byte
	x, n := binary.Uvarint(buf[:copy(buf[:], r.b[r.off:])])
	switch {
	case n == 0:
		return 0, malformed("%s truncated", describe(what, entry))
	case n < 0:
		return 0, malformed("%s overflows 64 bits", describe(what, entry))
	}
	r.off += n
	return x, nil
}

// string reads a length-prefixed string, refusing a length longer than the
// bytes left so that a corrupt length cannot cause a huge allocation. From a
// string value the result aliases it (see own).
func (r *reader[T]) string(what string, entry int) (string, error) {
	n, err := r.uvarint(what, entry)
	if err != nil {
		return "", err
	}
	if rem := r.remaining(); n > uint64(rem) {
		return "", malformed("%s %d exceeds remaining %d bytes", describe(what, entry), n, rem)
	}
	s := string(r.b[r.off : r.off+int(n)])
	r.off += int(n)
	return s, nil
}

// metadata reads the count and entries, handing to reserved (when not nil)
// the entries it claims. Each entry takes at least two bytes (two zero
// lengths), which bounds the count by the bytes left, and the map is sized by
// what those bytes can hold, so decoding allocates O(len(value)) whatever the
// count claims.
func (r *reader[T]) metadata(reserved func(k, v string) bool) (map[string]string, error) {
	n, err := r.uvarint("metadata count", -1)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	if n > MaxMetadata {
		return nil, malformed("metadata count %d exceeds limit %d", n, MaxMetadata)
	}
	if rem := r.remaining(); n > uint64(rem/2) {
		return nil, malformed("metadata count %d exceeds remaining %d bytes", n, rem)
	}
	var md map[string]string
	for i := range int(n) {
		k, err := r.string("key length", i)
		if err != nil {
			return nil, err
		}
		v, err := r.string("value length", i)
		if err != nil {
			return nil, err
		}
		if reserved != nil && reserved(k, v) {
			continue
		}
		if md == nil {
			// Size the map for the entries the bytes left can hold with
			// distinct keys, not for the count: a hostile count of
			// duplicate empty entries would otherwise allocate a map many
			// times the size of the value.
			md = make(map[string]string, min(n-uint64(i), distinctEntries(r.remaining())+1))
		}
		md[r.own(k)] = r.own(v)
	}
	return md, nil
}

// distinctEntries returns the most metadata entries with distinct keys that
// rem bytes can hold: an entry takes at least a key length, the key and a
// value length, and there is one key of length 0, 256 of length 1, and more
// of length 2 than MaxMetadata.
func distinctEntries(rem int) uint64 {
	if rem < 2 {
		return 0
	}
	rem -= 2 // the empty key
	oneByte := min(256, rem/3)
	n := 1 + oneByte
	if oneByte == 256 {
		n += (rem - 3*256) / 4
	}
	return uint64(n)
}

func describe(what string, entry int) string {
	if entry < 0 {
		return what
	}
	return fmt.Sprintf("metadata entry %d %s", entry, what)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("wire: "+format+": %w", append(args, broker.ErrMalformed)...)
}
