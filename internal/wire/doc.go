// Package wire encodes messages for storage in Redis: a versioned binary
// envelope for list and sorted-set values, and field/value pairs for stream
// entries.
//
// # Envelope, version 1
//
//	offset  size     field
//	     0  3        magic "\xffBK"
//	     3  1        version = 1
//	     4  2        attempt, uint16 big-endian (offset AttemptOffset)
//	     6  8        time, int64 big-endian Unix ns, 0 = zero time
//	    14  1-10     uvarint idLen              (offset HeaderLen)
//	        idLen    id
//	        1-10     uvarint metaCount
//	        ...      metaCount x (uvarint klen, key, uvarint vlen, value)
//	        rest     payload, no length prefix
//
//	+----+----+----+----+----+----+----+----+----+----+----+----+----+----+
//	| FF | 'B'| 'K'| 01 | attempt |              time (int64 ns)          |
//	+----+----+----+----+----+----+----+----+----+----+----+----+----+----+
//	| idLen | id ... | metaCount | klen | key | vlen | value | ... | payload ...
//	+-------+--------+-----------+------+-----+------+-------+-----+------------
//
// All fixed-width integers are big-endian. Attempt sits at a fixed offset
// (AttemptOffset) so that Lua scripts can read and bump it with string.byte
// without decoding the rest. Time 0 stands for the zero time.Time (so the
// Unix epoch itself reads back as the zero time); any other time decodes in
// UTC.
//
// The magic starts with 0xFF, a byte that never begins valid UTF-8, so a value
// written by redis-cli or another client (plain text, JSON) is never mistaken
// for an envelope. Such a foreign value decodes, without error, to a message
// whose payload is the whole value.
//
// The payload has no length prefix and the envelope no checksum: a Redis value
// is written and read atomically, so it cannot arrive cut short. A truncation
// inside the payload is therefore not detectable and decodes to a shorter
// payload; a truncation anywhere before the payload is reported as
// broker.ErrMalformed.
//
// Decoding is bounded: no length or count read from the value may allocate
// more than the value holds, so a hostile or corrupt value cannot make the
// decoder allocate gigabytes. The metadata map is sized by the entries with
// distinct keys that the remaining bytes can hold, not by the count the value
// claims, so decoding allocates O(len(value)) (a map entry costs tens of
// bytes, its encoding as little as two; TestDecodeAllocatesProportionally and
// FuzzDecode hold it to 1 KiB + 28 bytes per byte of value).
//
// # Stream entries
//
// A stream entry carries the same message as field/value pairs (see
// AppendFields), so that XRANGE in redis-cli shows readable entries, and an
// entry added by another client (XADD s * k v) is delivered with its fields as
// metadata (see DecodeFields).
package wire
