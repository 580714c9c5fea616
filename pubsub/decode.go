package pubsub

import (
	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// reserved holds the reserved metadata values of a decoded envelope: the
// publisher's sequence stamp and resync ranges. They alias the value they
// were read from.
type reserved struct {
	seq, rs string
}

// claim keeps the reserved keys out of the message's metadata.
func (r *reserved) claim(k, v string) bool {
	switch k {
	case MetaSeq:
		r.seq = v
	case MetaResync:
		r.rs = v
	default:
		return false
	}
	return true
}

// decodeValue decodes the value v into m (ID, Payload, Metadata, Attempt,
// Time) and returns the reserved metadata values, which never reach the
// handler's metadata. A value that is not an envelope is a foreign payload.
// Payload, ID and metadata are copies (wire.DecodeString), so a handler that
// keeps an ID does not keep the whole value alive.
func decodeValue(v string, m *broker.Message) (reserved, error) {
	var res reserved
	if err := wire.DecodeString(m, v, res.claim); err != nil {
		return reserved{}, err
	}
	return res, nil
}

// stampOf returns the reserved values of an envelope without decoding the
// rest, for values dropped unread (too large): their sequence number still
// counts as seen. It returns zero values when v does not decode.
func stampOf(v string) reserved {
	var res reserved
	if wire.ScanMetadata(v, func(k, v string) { res.claim(k, v) }) != nil {
		return reserved{}
	}
	return res
}
