package pubsub

import (
	"container/list"
	"encoding/binary"
	"strconv"
	"strings"
)

// Metadata keys the publisher adds to every envelope and the subscriber
// removes before the handler sees the message. Publish rejects messages
// that set them (or any other key starting with "bk-").
const (
	// MetaSeq is "<publisher>.<epoch>.<start>.<seq>": the Publisher instance
	// (12 random hex digits, new for every NewPublisher), the epoch of the
	// channel's sequence in that publisher (1, 2, ...: a channel left idle
	// long enough is forgotten and starts again at 1 in a new epoch), the
	// Redis server's TIME in microseconds when the epoch started (0 when
	// unknown), and the message's sequence number in decimal, 1, 2, 3, ...
	// per epoch, in the order the messages were written to Redis.
	// Subscribers also accept the older "<publisher>.<seq>".
	MetaSeq = "bk-seq"
	// MetaResync is present for a while after publishes to the channel
	// failed: "from-to[,from-to...]" lists the sequence numbers the
	// publisher could not confirm (ascending, disjoint, at most 8 ranges). A
	// subscriber does not count missing numbers in those ranges as gaps,
	// because the publisher's caller got the error instead (the messages may
	// or may not have reached Redis). See resyncWindow for how long a range
	// is carried.
	MetaResync = "bk-rs"
)

const (
	// maxTracked bounds the (channel, publisher epoch) pairs a subscription
	// remembers. Beyond it the least recently seen pair is forgotten and
	// counted in Stats.TrackerEvictions.
	maxTracked = 4096
	// maxGap is the most messages a single arriving message may add to
	// Stats.Gaps. A larger jump (or a jump back by more than this) is not
	// a plausible loss but a forged, foreign or reused stamp: it is counted
	// in Stats.SeqAnomalies and the tracker restarts from the new number.
	maxGap = 1 << 24
	// maxRanges bounds the failed ranges MetaResync carries.
	maxRanges = 8
)

// seqRange is an inclusive range of sequence numbers.
type seqRange struct{ from, to uint64 }

// parseStamp splits a MetaSeq value into the publisher epoch's identity
// (everything before the last dot) and the sequence number.
func parseStamp(v string) (ident string, seq uint64, ok bool) {
	i := strings.LastIndexByte(v, '.')
	if i <= 0 {
		return "", 0, false
	}
	seq, ok = parseUint(v[i+1:])
	if !ok || seq == 0 {
		return "", 0, false
	}
	return v[:i], seq, true
}

// stampStart returns the epoch's start time in server microseconds from an
// identity "<publisher>.<epoch>.<start>", 0 when absent or unknown (the
// older "<publisher>" identity has none).
func stampStart(ident string) uint64 {
	j := strings.LastIndexByte(ident, '.')
	if j < 0 {
		return 0
	}
	start, _ := parseUint(ident[j+1:])
	return start
}

// parseUint parses a decimal without allocating; it rejects signs, empty
// strings and overflow.
func parseUint(s string) (uint64, bool) {
	if s == "" || len(s) > 20 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// excluded returns how many numbers of lo..hi lie in the ranges of a
// MetaResync value. A value that is not ascending and disjoint, or does
// not parse, excludes nothing: a damaged marker must not hide losses.
func excluded(rs string, lo, hi uint64) uint64 {
	if rs == "" || lo > hi {
		return 0
	}
	var n, prevTo uint64
	for first := true; ; first = false {
		part, rest, more := strings.Cut(rs, ",")
		a, b, found := strings.Cut(part, "-")
		from, ok1 := parseUint(a)
		to, ok2 := parseUint(b)
		if !found || !ok1 || !ok2 || from == 0 || from > to || (!first && from <= prevTo) {
			return 0
		}
		prevTo = to
		if l, h := max(from, lo), min(to, hi); l <= h {
			n += h - l + 1
		}
		if !more {
			return n
		}
		rs = rest
	}
}

// appendRanges formats a MetaResync value.
func appendRanges(dst []byte, rs []seqRange) []byte {
	for i, r := range rs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendUint(dst, r.from, 10)
		dst = append(dst, '-')
		dst = strconv.AppendUint(dst, r.to, 10)
	}
	return dst
}

// observation is what the gap tracker concluded from one message.
type observation struct {
	gap     uint64 // messages of this publisher epoch that never arrived
	dup     bool   // a number already seen (a retried pipeline)
	anomaly bool   // an implausible jump; not counted as a gap
	evicted bool   // another pair was forgotten to make room
}

// trackEntry is one (channel, publisher epoch) pair in the tracker's LRU
// list.
type trackEntry struct {
	key  string
	last uint64
	elem *list.Element // in gapTracker.lru
}

// gapTracker counts sequence gaps per (channel, publisher epoch). It is
// owned by the subscription's read loop and needs no lock.
type gapTracker struct {
	m   map[string]*trackEntry
	lru list.List // of *trackEntry, most recently seen at the front
	key []byte    // scratch for lookups

	// confirmed is the server's TIME, in microseconds, just after the
	// subscription was first confirmed; 0 when unknown. A publisher epoch
	// that started later than that published every one of its messages to
	// this subscription, so missing numbers before its first sighting are
	// gaps too.
	confirmed uint64
	// evictedAny is set once a pair has been forgotten: a first sighting
	// can no longer be told from a forgotten pair, so first sightings stop
	// counting gaps.
	evictedAny bool
}

// observe records message seq of the publisher epoch ident on channel,
// with the MetaResync value rs ("" when absent).
func (g *gapTracker) observe(channel, ident string, seq uint64, rs string) observation {
	if g.m == nil {
		g.m = make(map[string]*trackEntry)
	}
	g.key = binary.AppendUvarint(g.key[:0], uint64(len(channel)))
	g.key = append(g.key, channel...)
	g.key = append(g.key, ident...)
	e := g.m[string(g.key)] // no allocation for the lookup
	var o observation
	if e == nil {
		if g.confirmed != 0 && !g.evictedAny && seq > 1 && stampStart(ident) > g.confirmed {
			// The epoch started after we were live: 1..seq-1 were ours.
			o.gap = seq - 1 - excluded(rs, 1, seq-1)
			if o.gap > maxGap {
				o.gap, o.anomaly = 0, true
			}
		}
		e = &trackEntry{key: string(g.key), last: seq}
		if len(g.m) >= maxTracked {
			g.evict()
			o.evicted = true
		}
		g.m[e.key] = e
		e.elem = g.lru.PushFront(e)
		return o
	}
	g.lru.MoveToFront(e.elem)
	switch last := e.last; {
	case seq > last:
		o.gap = seq - last - 1 - excluded(rs, last+1, seq-1)
		if o.gap > maxGap {
			o.gap, o.anomaly = 0, true
		}
		e.last = seq
	case last-seq > maxGap:
		o.anomaly = true
		e.last = seq
	default:
		o.dup = true
	}
	return o
}

func (g *gapTracker) len() int { return len(g.m) }

func (g *gapTracker) evict() {
	e := g.lru.Remove(g.lru.Back()).(*trackEntry)
	delete(g.m, e.key)
	g.evictedAny = true
}
