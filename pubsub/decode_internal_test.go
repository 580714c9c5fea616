package pubsub

import (
	"bytes"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// compareDecoders checks that decodeValue agrees with wire.Decode on b,
// apart from the reserved keys, which it returns separately.
func compareDecoders(t *testing.T, b []byte) {
	t.Helper()
	want, werr := wire.Decode(bytes.Clone(b))
	var got broker.Message
	res, gerr := decodeValue(string(b), &got)
	if werr != nil || gerr != nil {
		require.ErrorIs(t, werr, broker.ErrMalformed, "wire accepted what decodeValue rejected: %v", gerr)
		require.ErrorIs(t, gerr, broker.ErrMalformed, "decodeValue accepted what wire rejected: %v", werr)
		return
	}
	md := maps.Clone(want.Metadata)
	assert.Equal(t, md[MetaSeq], res.seq)
	assert.Equal(t, md[MetaResync], res.rs)
	delete(md, MetaSeq)
	delete(md, MetaResync)
	if len(md) == 0 {
		md = nil
	}
	assert.Equal(t, md, got.Metadata)
	assert.Equal(t, want.ID, got.ID)
	assert.Equal(t, want.Payload, got.Payload)
	assert.Equal(t, want.Payload == nil, got.Payload == nil)
	assert.Equal(t, want.Attempt, got.Attempt)
	assert.True(t, want.Time.Equal(got.Time), "%v != %v", want.Time, got.Time)
	assert.Equal(t, want.Time.Location(), got.Time.Location())
	if got.Payload != nil {
		st := stampOf(string(b))
		assert.Equal(t, res, st, "stampOf agrees")
	}
}

func FuzzDecodeMatchesWire(f *testing.F) {
	m := &broker.Message{ID: "id", Payload: []byte("p"), Attempt: 3, Time: time.Unix(0, 42),
		Metadata: map[string]string{"k": "v", MetaSeq: "a.1.2.3", MetaResync: "1-2"}}
	f.Add(wire.Encode(m))
	f.Add(wire.Encode(&broker.Message{}))
	f.Add([]byte("plain"))
	f.Add([]byte(""))
	f.Add([]byte(wire.Magic + "\x01\x00\x00"))
	f.Add([]byte(wire.Magic + "\x02" + "0123456789"))
	f.Add([]byte(wire.Magic + "\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
	f.Fuzz(func(t *testing.T, b []byte) { compareDecoders(t, b) })
}

// TestStampDecodes checks that the envelope the publisher assembles at
// flush time is the caller's envelope plus the reserved entries.
func TestStampDecodes(t *testing.T) {
	p := &Publisher{id: "abcdef012345", topics: make(map[string]*topicSeq), now: time.Now}
	msgs := []*broker.Message{
		{ID: "one", Payload: []byte("hello"), Time: time.Unix(5, 6), Metadata: map[string]string{"z": "1", "a": "2"}},
		{ID: "two", Payload: nil, Time: time.Unix(7, 0)},
	}
	it := p.encode("t", msgs)
	ts := p.newTopic("t", 1234)
	for i, m := range msgs {
		for _, rs := range []string{"", "3-4,9-9"} {
			ts.rs = []byte(rs)
			ts.last = uint64(10 + i)
			got, err := wire.Decode(p.stamp(nil, it.buf, it.offs[i], ts))
			require.NoError(t, err)
			wantMD := maps.Clone(m.Metadata)
			if wantMD == nil {
				wantMD = map[string]string{}
			}
			wantMD[MetaSeq] = "abcdef012345.1.1234." + string(rune('0'+1)) + string(rune('0'+i))
			if rs != "" {
				wantMD[MetaResync] = rs
			}
			assert.Equal(t, wantMD, got.Metadata)
			assert.Equal(t, m.ID, got.ID)
			assert.Equal(t, string(m.Payload), string(got.Payload))
			assert.True(t, m.Time.Equal(got.Time))
		}
	}
	assert.Nil(t, msgs[1].Metadata, "the caller's message is untouched")
}
