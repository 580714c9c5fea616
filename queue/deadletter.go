package queue

import (
	"encoding/binary"
	"time"
)

// A dead-letter record is one value of {topic}:dead. Go (simple mode) and
// Lua (everything else) write the same binary framing:
//
//	magic "\xffBKD" (4) | attempts uint32 BE (4) | time uint64 BE unix ms (8) |
//	reason length uint32 BE (4) | reason | original value (rest)
//
// The time is the server's (TIME inside the script). A value in the dead
// list that is not such a record (pushed by another client) reads as a
// record with no reason whose value is the whole value.
const (
	deadMagic     = "\xffBKD"
	deadHeaderLen = 20
	// maxReason bounds the error text stored with a dead letter.
	maxReason = 1024
)

type deadRecord struct {
	attempts int
	time     time.Time
	reason   string
	value    []byte
}

// parseDeadRecord decodes a record, bounded by the bytes it holds.
func parseDeadRecord(b []byte) deadRecord {
	if len(b) < deadHeaderLen || string(b[:4]) != deadMagic {
		return deadRecord{value: b}
	}
	rl := binary.BigEndian.Uint32(b[16:20])
	if uint64(rl) > uint64(len(b)-deadHeaderLen) {
		return deadRecord{value: b}
	}
	ms := int64(binary.BigEndian.Uint64(b[8:16]))
	var t time.Time
	if ms > 0 {
		t = time.UnixMilli(ms).UTC()
	}
	return deadRecord{
		attempts: int(binary.BigEndian.Uint32(b[4:8])),
		time:     t,
		reason:   string(b[deadHeaderLen : deadHeaderLen+int(rl)]),
		value:    b[deadHeaderLen+int(rl):],
	}
}

// truncateReason keeps dead-letter reasons short: an error text can be
// arbitrarily long.
func truncateReason(s string) string {
	if len(s) <= maxReason {
		return s
	}
	return s[:maxReason-3] + "..."
}
