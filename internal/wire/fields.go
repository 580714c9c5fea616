package wire

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redisbroker/broker"
)

// Stream entry field names.
const (
	FieldPayload = "payload"
	FieldID      = "id"
	FieldTime    = "time"
	// MetaPrefix prefixes each metadata key, so that metadata can never
	// collide with the fields above.
	MetaPrefix = "meta."
)

// AppendFields appends m as field/value pairs for the Values of XADD: "id"
// (when not empty), "time" as decimal Unix nanoseconds (when not zero),
// "meta.<key>" for each metadata entry sorted by key, and "payload" last.
// Payload is always written, even empty: its presence tells DecodeFields the
// entry is ours.
func AppendFields(dst []any, m *broker.Message) []any {
	if m.ID != "" {
		dst = append(dst, FieldID, m.ID)
	}
	if ns := unixNano(m); ns != 0 {
		dst = append(dst, FieldTime, strconv.FormatInt(ns, 10))
	}
	if len(m.Metadata) > 0 {
		var buf [sortBufLen]string
		for _, k := range sortedKeys(buf[:0], m.Metadata) {
			dst = append(dst, MetaPrefix+k, m.Metadata[k])
		}
	}
	return append(dst, FieldPayload, string(m.Payload))
}

// DecodeFields turns the values of a stream entry (go-redis XMessage.Values)
// into a message. It never fails: any entry is a message.
//
//   - With a "payload" field (our entries, and others that use the name):
//     "payload" is the payload, "id" the ID, "time" the time in Unix
//     nanoseconds, "meta.<key>" metadata key; any other field, and a "time"
//     that is not an integer, is metadata under its own name. A "meta.<key>"
//     field wins over a plain field named <key>.
//   - Without one, the entry comes from another client: every field is
//     metadata under its own name, and the payload is the value of the only
//     field (redis-cli XADD s * k v), or empty when there are several.
//
// Values are strings in go-redis; anything else is formatted with fmt.Sprint.
// Attempt is left 0: a stream's delivery count lives in its pending list.
func DecodeFields(values map[string]any) *broker.Message {
	if p, ok := values[FieldPayload]; ok {
		return decodeOurFields(values, p)
	}
	return decodeForeignFields(values)
}

func decodeOurFields(values map[string]any, payload any) *broker.Message {
	m := &broker.Message{Payload: []byte(fieldString(payload))}
	var prefixed []string
	for f, v := range values {
		s := fieldString(v)
		switch {
		case f == FieldPayload:
		case f == FieldID:
			m.ID = s
		case f == FieldTime && parseTime(s, &m.Time):
		case strings.HasPrefix(f, MetaPrefix):
			prefixed = append(prefixed, f) // applied last, so they win
		default:
			setMeta(m, f, s)
		}
	}
	for _, f := range prefixed {
		setMeta(m, strings.TrimPrefix(f, MetaPrefix), fieldString(values[f]))
	}
	return m
}

func decodeForeignFields(values map[string]any) *broker.Message {
	m := &broker.Message{Payload: []byte{}}
	for f, v := range values {
		s := fieldString(v)
		setMeta(m, f, s)
		if len(values) == 1 {
			m.Payload = []byte(s)
		}
	}
	return m
}

// parseTime sets *t from decimal Unix nanoseconds, 0 being the zero time,
// and reports whether s was an integer.
func parseTime(s string, t *time.Time) bool {
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return false
	}
	*t = unixTime(ns)
	return true
}

func setMeta(m *broker.Message, k, v string) {
	if m.Metadata == nil {
		m.Metadata = make(map[string]string)
	}
	m.Metadata[k] = v
}

func fieldString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	default:
		return fmt.Sprint(v)
	}
}
