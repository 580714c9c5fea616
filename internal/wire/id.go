package wire

import (
	"math/rand/v2"
	"time"
)

// crockford is Crockford's base32 alphabet, as used by ULID: no I, L, O or U,
// so IDs survive being read aloud or copied by hand.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// IDLen is the length of the IDs NewID returns.
const IDLen = 26

// NewID returns a new unique, time-ordered message ID in the ULID layout: 48
// bits of Unix milliseconds then 80 random bits, as 26 characters of
// Crockford base32. IDs from different milliseconds sort by time; within one
// millisecond their order is random. The random bits come from math/rand/v2,
// whose global generator is safe for concurrent use and makes no syscall;
// 80 bits make a collision within one millisecond negligible.
func NewID() string {
	ms := uint64(time.Now().UnixMilli())
	return formatID(ms, rand.Uint64(), rand.Uint64())
}

// formatID lays out 48 bits of ms and 80 bits of randomness (the low 16 bits
// of r1, then r2) as a ULID: 26 characters of 5 bits hold 130 bits, so the
// first character carries only 3. Each character is read straight from its
// bits, which is cheaper than shifting a 128-bit value 26 times.
func formatID(ms, r1, r2 uint64) string {
	var buf [IDLen]byte
	for i := range 10 { // 50 bits of time; the top 2 are always zero
		buf[i] = crockford[ms>>(45-5*i)&31]
	}
	buf[10] = crockford[r1>>11&31]
	buf[11] = crockford[r1>>6&31]
	buf[12] = crockford[r1>>1&31]
	buf[13] = crockford[(r1&1)<<4|r2>>60]
	for i := range 12 { // the remaining 60 bits of r2
		buf[14+i] = crockford[r2>>(55-5*i)&31]
	}
	return string(buf[:])
}
