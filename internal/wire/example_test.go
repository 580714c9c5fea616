package wire_test

import (
	"errors"
	"fmt"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// A value pushed by another client (redis-cli RPUSH orders hello) is not an
// envelope: it decodes to a message whose payload is the whole value.
func ExampleDecode() {
	m, err := wire.Decode([]byte("hello"))
	fmt.Printf("payload=%q id=%q attempt=%d err=%v\n", m.Payload, m.ID, m.Attempt, err)
	// Output: payload="hello" id="" attempt=0 err=<nil>
}

// A value that claims to be an envelope but does not decode reports why.
func ExampleDecode_malformed() {
	_, err := wire.Decode([]byte(wire.Magic + "\x01\x00\x01"))
	fmt.Println(errors.Is(err, broker.ErrMalformed))
	fmt.Println(err)
	// Output:
	// true
	// wire: header truncated: 6 of 14 bytes: broker: malformed message
}

func ExampleEncode() {
	b := wire.Encode(&broker.Message{ID: "01HWXYZ7K3M5N8P9QRSTVW0123", Payload: []byte("hi"), Attempt: 1})
	m, _ := wire.Decode(b)
	fmt.Printf("%d bytes, id=%s attempt=%d payload=%q\n", len(b), m.ID, m.Attempt, m.Payload)
	// Output: 44 bytes, id=01HWXYZ7K3M5N8P9QRSTVW0123 attempt=1 payload="hi"
}
