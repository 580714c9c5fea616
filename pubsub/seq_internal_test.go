package pubsub

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseStamp(t *testing.T) {
	for _, tt := range []struct {
		in         string
		ident      string
		start, seq uint64
		ok         bool
	}{
		{"a1b2c3d4e5f6.1.1700000000000000.42", "a1b2c3d4e5f6.1.1700000000000000", 1700000000000000, 42, true},
		{"a1b2c3d4e5f6.3.0.1", "a1b2c3d4e5f6.3.0", 0, 1, true},
		{"a1b2c3d4e5f6.7", "a1b2c3d4e5f6", 0, 7, true}, // the older two-part stamp
		{"x.y.7", "x.y", 0, 7, true},                   // unparsable start: unknown
		{"a.18446744073709551615", "a", 0, 1<<64 - 1, true},
		{"a.18446744073709551616", "", 0, 0, false}, // overflow
		{"a.0", "", 0, 0, false},
		{"a.", "", 0, 0, false},
		{".5", "", 0, 0, false},
		{"5", "", 0, 0, false},
		{"a.-5", "", 0, 0, false},
		{"a.x", "", 0, 0, false},
	} {
		ident, seq, ok := parseStamp(tt.in)
		assert.Equal(t, tt.ok, ok, tt.in)
		if tt.ok {
			assert.Equal(t, tt.ident, ident, tt.in)
			assert.Equal(t, tt.start, stampStart(ident), tt.in)
			assert.Equal(t, tt.seq, seq, tt.in)
		}
	}
}

func TestExcluded(t *testing.T) {
	for _, tt := range []struct {
		rs     string
		lo, hi uint64
		want   uint64
	}{
		{"", 1, 10, 0},
		{"6-9", 5, 10, 4},
		{"6-9", 7, 8, 2},
		{"6-9", 10, 20, 0},
		{"6-9", 1, 7, 2},
		{"2-3,6-9", 1, 10, 6},
		{"2-3,6-9", 4, 5, 0},
		{"2-3,6-9,12-12", 3, 12, 6},
		{"6-9,2-3", 1, 10, 0}, // not ascending: ignored
		{"2-6,6-9", 1, 10, 0}, // overlapping: ignored
		{"x", 1, 10, 0},       // damaged: ignored
		{"0-3", 1, 10, 0},     // 0 is never a number
		{"5-3", 1, 10, 0},     // reversed
		{"2-3,", 1, 10, 0},    // trailing comma
		{"1-18446744073709551615", 5, 4, 0},
	} {
		assert.Equal(t, tt.want, excluded(tt.rs, tt.lo, tt.hi), "%q %d-%d", tt.rs, tt.lo, tt.hi)
	}
	assert.Equal(t, "2-3,6-9", string(appendRanges(nil, []seqRange{{2, 3}, {6, 9}})))
}

func TestGapTracker(t *testing.T) {
	type step struct {
		channel, pub string
		start, seq   uint64
		rs           string
		want         observation
	}
	const confirmed = 1000
	gap := func(n uint64) observation { return observation{gap: n} }
	tests := []struct {
		name  string
		steps []step
	}{
		{"in order", []step{{"c", "a", 0, 1, "", gap(0)}, {"c", "a", 0, 2, "", gap(0)}, {"c", "a", 0, 3, "", gap(0)}}},
		{"first sighting of an older publisher is no gap", []step{{"c", "a", 999, 50, "", gap(0)}, {"c", "a", 999, 51, "", gap(0)}}},
		{"unknown start is no gap", []step{{"c", "a", 0, 50, "", gap(0)}}},
		{"a publisher that started after we subscribed", []step{{"c", "a", 1001, 50, "", gap(49)}, {"c", "a", 1001, 51, "", gap(0)}}},
		{"same start is not after", []step{{"c", "a", confirmed, 50, "", gap(0)}}},
		{"late publisher minus its failures", []step{{"c", "a", 1001, 50, "10-19", gap(39)}}},
		{"late publisher, first message", []step{{"c", "a", 1001, 1, "", gap(0)}}},
		{"jump 5 to 9", []step{{"c", "a", 0, 5, "", gap(0)}, {"c", "a", 0, 9, "", gap(3)}}},
		{"per publisher", []step{{"c", "a", 0, 1, "", gap(0)}, {"c", "b", 0, 7, "", gap(0)}, {"c", "a", 0, 3, "", gap(1)}, {"c", "b", 0, 8, "", gap(0)}}},
		{"per channel", []step{{"c1", "a", 0, 1, "", gap(0)}, {"c2", "a", 0, 1, "", gap(0)}, {"c1", "a", 0, 2, "", gap(0)}}},
		{"channel and publisher do not run together", []step{{"ab", "c", 0, 1, "", gap(0)}, {"a", "bc", 0, 5, "", gap(0)}}},
		{"duplicate", []step{{"c", "a", 0, 4, "", gap(0)}, {"c", "a", 0, 4, "", observation{dup: true}}, {"c", "a", 0, 3, "", observation{dup: true}}, {"c", "a", 0, 5, "", gap(0)}}},
		// Publisher failed 6..9: they are not counted, 5 and 11 are.
		{"resync", []step{{"c", "a", 0, 4, "", gap(0)}, {"c", "a", 0, 10, "6-9", gap(1)}, {"c", "a", 0, 12, "6-9", gap(1)}}},
		{"resync below last", []step{{"c", "a", 0, 8, "", gap(0)}, {"c", "a", 0, 10, "6-7", gap(1)}}},
		{"resync straddles", []step{{"c", "a", 0, 7, "", gap(0)}, {"c", "a", 0, 12, "6-9", gap(2)}}},
		{"several ranges keep the hole between them", []step{{"c", "a", 0, 1, "", gap(0)}, {"c", "a", 0, 20, "3-5,10-12", gap(12)}}},
		{"bad resync ignored", []step{{"c", "a", 0, 1, "", gap(0)}, {"c", "a", 0, 4, "x", gap(2)}}},
		{"forged jump ahead", []step{
			{"c", "a", 0, 5, "", gap(0)},
			{"c", "a", 0, 1<<64 - 1, "", observation{anomaly: true}},
			{"c", "a", 0, 6, "", observation{anomaly: true}}, // far behind: restart from 6
			{"c", "a", 0, 8, "", gap(1)},
		}},
		{"largest plausible jump", []step{{"c", "a", 0, 1, "", gap(0)}, {"c", "a", 0, maxGap + 2, "", gap(maxGap)}}},
		{"forged late publisher", []step{{"c", "a", 1001, 1 << 40, "", observation{anomaly: true}}, {"c", "a", 1001, 1<<40 + 1, "", gap(0)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := gapTracker{confirmed: confirmed}
			for i, s := range tt.steps {
				ident := s.pub + ".1." + strconv.FormatUint(s.start, 10)
				assert.Equal(t, s.want, g.observe(s.channel, ident, s.seq, s.rs), "step %d", i)
			}
		})
	}
}

func TestGapTrackerLRU(t *testing.T) {
	g := gapTracker{confirmed: 1000}
	for i := range maxTracked {
		o := g.observe("c", strconv.Itoa(i)+".1.0", 1, "")
		require.False(t, o.evicted)
	}
	// Touch publisher 0, so that 1 is the least recently seen.
	assert.Equal(t, observation{gap: 1}, g.observe("c", "0.1.0", 3, ""))
	o := g.observe("c", "new.1.0", 1, "")
	assert.True(t, o.evicted)
	assert.Equal(t, maxTracked, g.len())
	// 0 is still tracked (a jump is a gap); 1 was forgotten (starts afresh).
	assert.Equal(t, observation{gap: 1}, g.observe("c", "0.1.0", 5, ""))
	assert.Equal(t, uint64(0), g.observe("c", "1.1.0", 9, "").gap)
	// After an eviction a late publisher's first sighting is not counted:
	// it cannot be told from a forgotten pair.
	assert.Equal(t, uint64(0), g.observe("c", "late.1.2000", 9, "").gap)
	assert.LessOrEqual(t, g.len(), maxTracked)
}

// TestPublisherRanges checks the failed ranges a publisher carries: exact
// per failure, merged when they touch, bounded, and dropped only after
// messages carrying them reached Redis over resyncWindow.
func TestPublisherRanges(t *testing.T) {
	var ts topicSeq
	ts.addRange(seqRange{3, 4})
	ts.addRange(seqRange{5, 7}) // touches: one range
	ts.addRange(seqRange{10, 10})
	assert.Equal(t, []seqRange{{3, 7}, {10, 10}}, rangesOf(ts.ranges))
	for i := uint64(0); i < maxRanges-1; i++ {
		ts.addRange(seqRange{20 + 10*i, 20 + 10*i})
	}
	assert.Len(t, ts.ranges, maxRanges)
	// The smallest hole (7..10, 2 numbers) was merged away.
	assert.Equal(t, seqRange{3, 10}, ts.ranges[0].seqRange)
}

func TestDecodeMatchesWire(t *testing.T) {
	files, err := filepath.Glob("../internal/wire/testdata/*.bin")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		compareDecoders(t, b)
	}
}

func TestInfoField(t *testing.T) {
	// INFO stats of Redis 7.2 (abridged), with CRLF line ends.
	info := "# Stats\r\ntotal_connections_received:12\r\nclient_query_buffer_limit_disconnections:0\r\n" +
		"client_output_buffer_limit_disconnections:3\r\nreply_buffer_shrinks:1\r\n"
	n, ok := infoField(info, "client_output_buffer_limit_disconnections")
	assert.True(t, ok)
	assert.Equal(t, int64(3), n)
	// Redis 7.0 has no such field.
	_, ok = infoField("# Stats\r\ntotal_connections_received:12\r\n", "client_output_buffer_limit_disconnections")
	assert.False(t, ok)
}
