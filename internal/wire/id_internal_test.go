package wire

import "testing"

func TestFormatID(t *testing.T) {
	tests := []struct {
		ms, r1, r2 uint64
		want       string
	}{
		{0, 0, 0, "00000000000000000000000000"},
		{1<<48 - 1, 0xffff, ^uint64(0), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"},
		{1, 0, 0, "00000000010000000000000000"},
		{0, 0, 1, "00000000000000000000000001"},
		// The timestamp of the example in the ULID spec: 01ARYZ6S41...
		{1469918176385, 0, 0, "01ARYZ6S410000000000000000"},
		// Only the low 16 bits of r1 are used.
		{0, 0xffff_0000, 0, "00000000000000000000000000"},
	}
	for _, tt := range tests {
		if got := formatID(tt.ms, tt.r1, tt.r2); got != tt.want {
			t.Errorf("formatID(%d, %#x, %#x) = %s, want %s", tt.ms, tt.r1, tt.r2, got, tt.want)
		}
	}
}

// TestFormatIDBits checks every random bit lands where the ULID layout puts
// it, against a slow 128-bit reference.
func TestFormatIDBits(t *testing.T) {
	ref := func(ms, r1, r2 uint64) string {
		hi, lo := ms<<16|r1&0xffff, r2
		var buf [IDLen]byte
		for i := IDLen - 1; i >= 0; i-- {
			buf[i] = crockford[lo&31]
			lo = lo>>5 | hi<<59
			hi >>= 5
		}
		return string(buf[:])
	}
	for bit := range 128 {
		var ms, r1, r2 uint64
		switch {
		case bit < 64:
			r2 = 1 << bit
		case bit < 80:
			r1 = 1 << (bit - 64)
		default:
			ms = 1 << (bit - 80)
		}
		if got, want := formatID(ms, r1, r2), ref(ms, r1, r2); got != want {
			t.Errorf("bit %d: %s, want %s", bit, got, want)
		}
	}
}
