package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A tick reads the processing list's length while the consumer keeps
// fetching and settling: a length that counted values settled before the
// reply arrived, or moved by a fetch that finished meanwhile, is not a sign
// of unknown values.
func TestHoldsUnknown(t *testing.T) {
	q := &reliable{known: make(map[uint64]string)}
	q.addKnown([]string{"a", "b", "c"})

	// Settled during the tick call: the server counted 3, the consumer
	// knows 1 by the time the reply arrives.
	q.beginHeld()
	delete(q.known, 1)
	delete(q.known, 2)
	assert.False(t, q.holdsUnknown(3))
	assert.True(t, q.holdsUnknown(4))

	// A batch fetch that moved 5, then settled them all, during the call.
	q.beginHeld()
	q.startFetch(5)
	first := q.addKnown([]string{"d", "e", "f", "g", "h"})
	for i := range uint64(5) {
		delete(q.known, first+i)
	}
	assert.False(t, q.holdsUnknown(6))
	assert.True(t, q.holdsUnknown(7))

	// A batch fetch still in flight when the reply arrives.
	q.beginHeld()
	q.startFetch(4)
	assert.False(t, q.holdsUnknown(5))
	q.addKnown(nil)

	// Nothing moved: a longer list holds values the consumer never saw.
	q.beginHeld()
	assert.False(t, q.holdsUnknown(1))
	assert.True(t, q.holdsUnknown(2))
}
