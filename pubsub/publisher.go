package pubsub

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/batch"
	"github.com/redisbroker/broker/internal/wire"
)

var _ broker.Publisher = (*Publisher)(nil)

const (
	// resyncWindow is how long a failed range keeps being carried in
	// MetaResync: until messages carrying it have reached Redis over at
	// least this span of time. A subscriber that was disconnected when the
	// range failed is back within the longest redial backoff (2s) plus two
	// health check intervals (10s by default) of Redis being reachable
	// again, so it sees the range on its first message. A subscriber that
	// stays away longer may count those numbers as gaps.
	resyncWindow = 30 * time.Second
	// maxTopics bounds the channels a Publisher keeps sequence state for;
	// beyond it the least recently used channel is forgotten.
	maxTopics = 4096
	// topicIdle is how long a channel's sequence state is kept unused.
	// A forgotten channel starts a new epoch (MetaSeq) at its next publish,
	// which costs one TIME round trip.
	topicIdle = 5 * time.Minute
)

// Publisher publishes messages with PUBLISH (or SPUBLISH with WithSharded).
// It is safe for concurrent use and owns no goroutine, so it needs no Close.
//
// Every Publish, whatever its size, goes through one coalescer: while one
// pipeline is in flight, the next calls queue up and go out together in the
// next one. One pipeline at a time is what makes the order on the wire the
// order of the sequence numbers, which lets subscribers count gaps exactly.
type Publisher struct {
	c   redis.UniversalClient
	cfg config
	log *slog.Logger
	id  string

	coal *batch.Coalescer[*pubItem]

	// Flush state. The coalescer never runs two flushes at once, so only
	// one goroutine touches these at a time and they need no lock.
	topics   map[string]*topicSeq
	lru      list.List // of *topicSeq, least recently used at the back
	epochs   uint64
	touched  []*topicSeq
	itemSeqs []*topicSeq // the state of each item of the flush
	arena    []byte
	cmds     []*redis.IntCmd
	nums     []uint64 // sequence number of each command (0 in raw mode)
	now      func() time.Time
}

// topicSeq is the sequence state of one channel of this publisher: one
// epoch of MetaSeq numbers.
type topicSeq struct {
	topic string
	// stamp is the MetaSeq value without the number:
	// "<publisher>.<epoch>.<start>.".
	stamp []byte
	last  uint64 // last number assigned
	// ranges are the failed numbers still carried in MetaResync, ascending
	// and disjoint; rs is their formatted value, empty when none.
	ranges []failedRange
	rs     []byte
	used   time.Time

	elem *list.Element // in Publisher.lru

	// Per flush.
	inFlush   bool
	carried   bool       // this flush's messages carry rs
	carriedOK bool       // and at least one of them reached Redis
	failed    []seqRange // numbers that failed in this flush
}

type failedRange struct {
	seqRange
	// firstOK is when a message carrying the range first reached Redis;
	// zero until then.
	firstOK time.Time
}

// pubItem is one Publish call as the coalescer sees it. The messages are
// encoded by the caller's goroutine, so the flush never reads the caller's
// messages, which the caller may reuse as soon as Publish returns (also
// when it returns early because ctx ended).
type pubItem struct {
	topic  string
	buf    []byte   // the envelopes without sequence metadata, back to back
	offs   []msgOff // one per message
	one    [1]msgOff
	counts []int64 // receivers per message; nil unless PublishCount
}

// msgOff locates one message in pubItem.buf: buf[start:pre] is the
// envelope up to the metadata count, buf[rest:end] the metadata entries
// and payload, nmd the number of entries. In raw mode buf[start:end] is the
// payload.
type msgOff struct {
	start, pre, rest, end, nmd int
}

// NewPublisher returns a Publisher on c, which it never closes.
func NewPublisher(c redis.UniversalClient, opts ...Option) (*Publisher, error) {
	if c == nil {
		return nil, fmt.Errorf("pubsub: %w: nil client", broker.ErrInvalidOption)
	}
	cfg, err := newConfig(true, opts)
	if err != nil {
		return nil, err
	}
	p := &Publisher{
		c:      c,
		cfg:    cfg,
		log:    cfg.logger,
		id:     fmt.Sprintf("%012x", rand.Uint64()>>16),
		topics: make(map[string]*topicSeq),
		now:    time.Now,
	}
	p.coal = batch.New(p.flush, batch.Options{})
	return p, nil
}

// ID returns the publisher's instance ID, sent in MetaSeq.
func (p *Publisher) ID() string { return p.id }

// Publish sends msgs to the channel topic in one round trip and returns once
// Redis accepted them all. It fills each message's ID (when empty) and Time
// (when zero), in the calling goroutine; after that the messages are not
// touched again. A message with no subscriber is accepted and lost: that is
// pub/sub; use PublishCount to see how many subscribers got each message.
//
// On error some messages may have been published and others not. When ctx
// ends first Publish returns ctx.Err(); its messages may still be sent.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	_, err := p.publish(ctx, topic, msgs, false)
	return err
}

// PublishCount is Publish that also returns, per message, how many
// subscribers Redis delivered it to (the PUBLISH reply; with WithSharded,
// the subscribers on the shard). 0 means nobody received it. On Redis
// Cluster without WithSharded the count covers only the node that took the
// PUBLISH.
func (p *Publisher) PublishCount(ctx context.Context, topic string, msgs ...*broker.Message) ([]int64, error) {
	return p.publish(ctx, topic, msgs, true)
}

func (p *Publisher) publish(ctx context.Context, topic string, msgs []*broker.Message, count bool) ([]int64, error) {
	if err := p.validate(topic, msgs); err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	now := time.Now()
	for _, m := range msgs {
		if m.ID == "" {
			m.ID = wire.NewID()
		}
		if m.Time.IsZero() {
			m.Time = now
		}
	}
	it := p.encode(topic, msgs)
	if count {
		it.counts = make([]int64, len(msgs))
	}
	if err := p.coal.Do(ctx, it); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, err
		}
		return it.counts, err
	}
	return it.counts, nil
}

func (p *Publisher) validate(topic string, msgs []*broker.Message) error {
	if topic == "" {
		return fmt.Errorf("pubsub: publish: %w: empty topic", broker.ErrInvalidOption)
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("pubsub %s: publish: %w: message %d is nil", topic, broker.ErrInvalidOption, i)
		}
		if len(m.Payload) > p.cfg.maxPayload {
			return fmt.Errorf("pubsub %s: publish: %w: message %d has %d bytes, limit %d",
				topic, broker.ErrTooLarge, i, len(m.Payload), p.cfg.maxPayload)
		}
		if p.cfg.raw {
			continue
		}
		if len(m.Metadata) > wire.MaxMetadata-2 {
			return fmt.Errorf("pubsub %s: publish: %w: message %d has %d metadata entries, limit %d",
				topic, broker.ErrInvalidOption, i, len(m.Metadata), wire.MaxMetadata-2)
		}
		for k := range m.Metadata {
			if strings.HasPrefix(k, "bk-") {
				return fmt.Errorf("pubsub %s: publish: %w: message %d: metadata key %q is reserved (bk- prefix)",
					topic, broker.ErrInvalidOption, i, k)
			}
		}
	}
	return nil
}

// encode writes the envelopes of msgs, without the sequence metadata the
// flush adds, into one buffer.
func (p *Publisher) encode(topic string, msgs []*broker.Message) *pubItem {
	it := &pubItem{topic: topic}
	if len(msgs) == 1 {
		it.offs = it.one[:0]
	} else {
		it.offs = make([]msgOff, 0, len(msgs))
	}
	size := 0
	for _, m := range msgs {
		if p.cfg.raw {
			size += len(m.Payload)
		} else {
			size += wire.EncodedLen(m)
		}
	}
	buf := make([]byte, 0, size)
	for _, m := range msgs {
		start := len(buf)
		if p.cfg.raw {
			buf = append(buf, m.Payload...)
			it.offs = append(it.offs, msgOff{start: start, end: len(buf)})
			continue
		}
		tmp := *m
		tmp.Attempt = 0
		tmp.Topic = ""
		buf = wire.Append(buf, &tmp)
		pre := start + wire.HeaderLen + uvarintLen(uint64(len(m.ID))) + len(m.ID)
		it.offs = append(it.offs, msgOff{
			start: start,
			pre:   pre,
			rest:  pre + uvarintLen(uint64(len(m.Metadata))),
			end:   len(buf),
			nmd:   len(m.Metadata),
		})
	}
	it.buf = buf
	return it
}

// flush writes a batch of Publish calls in one pipeline. Sequence numbers
// are assigned here, in pipeline order, so that the order on the wire is the
// order of the numbers.
func (p *Publisher) flush(ctx context.Context, items []*pubItem) []error {
	now := p.now()
	p.begin(ctx, items, now)
	pipe := p.c.Pipeline()
	p.arena = p.arena[:0]
	p.cmds = p.cmds[:0]
	p.nums = p.nums[:0]
	size := 0
	for i, it := range items {
		size += len(it.buf)
		if !p.cfg.raw {
			size += len(it.offs) * (32 + len(p.itemSeqs[i].stamp) + len(p.itemSeqs[i].rs))
		}
	}
	if cap(p.arena) < size {
		p.arena = make([]byte, 0, size)
	}
	cmdName := "publish"
	if p.cfg.sharded {
		cmdName = "spublish"
	}
	for i, it := range items {
		ts := p.itemSeqs[i]
		topic := any(it.topic) // boxed once per call, not per message
		for _, o := range it.offs {
			var val []byte
			if p.cfg.raw {
				val = it.buf[o.start:o.end:o.end]
				p.nums = append(p.nums, 0)
			} else {
				ts.last++
				start := len(p.arena)
				p.arena = p.stamp(p.arena, it.buf, o, ts)
				// A later append may move the arena; this slice keeps the
				// old array alive until the pipeline has been written.
				val = p.arena[start:len(p.arena):len(p.arena)]
				p.nums = append(p.nums, ts.last)
			}
			// What pipe.Publish and pipe.SPublish build, minus their
			// per-message boxing of the topic.
			cmd := redis.NewIntCmd(ctx, cmdName, topic, val)
			_ = pipe.Process(ctx, cmd)
			p.cmds = append(p.cmds, cmd)
		}
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error

	var errs []error
	k := 0
	for j, it := range items {
		ts := p.itemSeqs[j]
		var first error
		for m := range it.offs {
			cmd, seq := p.cmds[k], p.nums[k]
			k++
			err := cmd.Err()
			if err == nil {
				if it.counts != nil {
					it.counts[m] = cmd.Val()
				}
				if ts != nil && ts.carried {
					ts.carriedOK = true
				}
				continue
			}
			if ts != nil {
				ts.failed = addFailed(ts.failed, seq)
			}
			if first == nil {
				first = err
			}
		}
		if first != nil {
			if errs == nil {
				errs = make([]error, len(items))
			}
			errs[j] = p.wrap(it.topic, first)
		}
	}
	p.settle(now)
	p.evict(now)
	clear(p.cmds)
	clear(p.itemSeqs)
	if cap(p.arena) > maxArena {
		p.arena = nil // one huge batch must not pin its memory forever
	}
	return errs
}

// maxArena is the largest encoding buffer kept between flushes.
const maxArena = 4 << 20

// stamp appends the envelope at o in buf with the sequence metadata of ts
// inserted before the caller's entries.
func (p *Publisher) stamp(dst, buf []byte, o msgOff, ts *topicSeq) []byte {
	dst = append(dst, buf[o.start:o.pre]...)
	n := 1
	if len(ts.rs) > 0 {
		n = 2
		ts.carried = true
	}
	dst = binary.AppendUvarint(dst, uint64(o.nmd+n))
	dst = appendKey(dst, MetaSeq)
	dst = binary.AppendUvarint(dst, uint64(len(ts.stamp)+digits(ts.last)))
	dst = append(dst, ts.stamp...)
	dst = strconv.AppendUint(dst, ts.last, 10)
	if n == 2 {
		dst = appendKey(dst, MetaResync)
		dst = binary.AppendUvarint(dst, uint64(len(ts.rs)))
		dst = append(dst, ts.rs...)
	}
	return append(dst, buf[o.rest:o.end]...)
}

func appendKey(dst []byte, k string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(k)))
	return append(dst, k...)
}

func digits(n uint64) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// begin finds or starts the sequence state of each item's channel and marks
// it as part of the current flush. A new epoch reads the server's TIME
// first (one round trip for all new channels of the flush), so that
// subscribers can tell whether it started after they subscribed.
func (p *Publisher) begin(ctx context.Context, items []*pubItem, now time.Time) {
	for _, ts := range p.touched {
		ts.inFlush = false // in case an earlier flush panicked before settle
		ts.failed = ts.failed[:0]
	}
	p.touched = p.touched[:0]
	p.itemSeqs = p.itemSeqs[:0]
	if p.cfg.raw {
		for range items {
			p.itemSeqs = append(p.itemSeqs, nil)
		}
		return
	}
	var start uint64
	timed := false
	for _, it := range items {
		ts := p.topics[it.topic]
		if ts == nil {
			if !timed || p.perTopicTime() {
				start, timed = p.serverTime(ctx, it.topic), true
			}
			ts = p.newTopic(it.topic, start)
		}
		if !ts.inFlush {
			ts.inFlush = true
			ts.carried, ts.carriedOK = false, false
			ts.failed = ts.failed[:0]
			ts.used = now
			p.lru.MoveToFront(ts.elem)
			p.touched = append(p.touched, ts)
		}
		p.itemSeqs = append(p.itemSeqs, ts)
	}
}

// perTopicTime reports whether each channel's TIME must come from the node
// that owns it: sharded channels on a Cluster, whose subscribers read TIME
// from that node too.
func (p *Publisher) perTopicTime() bool {
	_, cluster := p.c.(*redis.ClusterClient)
	return cluster && p.cfg.sharded
}

// serverTime reads the server's TIME in microseconds, 0 when it fails.
func (p *Publisher) serverTime(ctx context.Context, topic string) uint64 {
	t, err := serverTime(ctx, p.c, topic, p.cfg.sharded)
	if err != nil {
		p.log.Debug("pubsub: reading the server time for a new sequence failed; its start stays unknown",
			"topic", topic, "err", err)
		return 0
	}
	return t
}

// serverTime returns the TIME of the server a channel lives on, in
// microseconds.
func serverTime(ctx context.Context, c redis.UniversalClient, topic string, sharded bool) (uint64, error) {
	var cmd *redis.TimeCmd
	if cc, ok := c.(*redis.ClusterClient); ok && sharded {
		node, err := cc.MasterForKey(ctx, topic)
		if err != nil {
			return 0, err
		}
		cmd = node.Time(ctx)
	} else {
		cmd = c.Time(ctx)
	}
	t, err := cmd.Result()
	if err != nil {
		return 0, err
	}
	if us := t.UnixMicro(); us > 0 {
		return uint64(us), nil
	}
	return 0, nil
}

func (p *Publisher) newTopic(topic string, start uint64) *topicSeq {
	p.epochs++
	ts := &topicSeq{topic: topic}
	ts.stamp = append(ts.stamp, p.id...)
	ts.stamp = append(ts.stamp, '.')
	ts.stamp = strconv.AppendUint(ts.stamp, p.epochs, 10)
	ts.stamp = append(ts.stamp, '.')
	ts.stamp = strconv.AppendUint(ts.stamp, start, 10)
	ts.stamp = append(ts.stamp, '.')
	p.topics[topic] = ts
	ts.elem = p.lru.PushFront(ts)
	return ts
}

// addFailed adds seq to the ascending failed ranges of one flush.
func addFailed(rs []seqRange, seq uint64) []seqRange {
	if n := len(rs); n > 0 && rs[n-1].to+1 == seq {
		rs[n-1].to = seq
		return rs
	}
	return append(rs, seqRange{seq, seq})
}

// settle updates the resync ranges once a flush's results are known.
func (p *Publisher) settle(now time.Time) {
	for _, ts := range p.touched {
		changed := false
		if ts.carriedOK {
			// Every live subscriber saw the ranges. Keep carrying each for
			// resyncWindow after its first success, for subscribers that
			// were reconnecting meanwhile.
			kept := ts.ranges[:0]
			for _, r := range ts.ranges {
				if r.firstOK.IsZero() {
					r.firstOK = now
				} else if now.Sub(r.firstOK) >= resyncWindow {
					changed = true
					continue
				}
				kept = append(kept, r)
			}
			clear(ts.ranges[len(kept):])
			ts.ranges = kept
		}
		for _, f := range ts.failed {
			ts.addRange(f)
			changed = true
			p.log.Warn("pubsub: publish failed; subscribers will not count the unconfirmed messages as gaps",
				"publisher", p.id, "topic", ts.topic, "unconfirmed_from", f.from, "unconfirmed_to", f.to)
		}
		if changed {
			ts.rs = appendRanges(ts.rs[:0], rangesOf(ts.ranges))
		}
		ts.failed = ts.failed[:0]
		ts.inFlush = false
	}
}

func rangesOf(fs []failedRange) []seqRange {
	var buf [maxRanges + 1]seqRange
	out := buf[:0]
	for _, f := range fs {
		out = append(out, f.seqRange)
	}
	return out
}

// addRange appends a failed range (above every existing one), extending the
// last range when they touch. Past maxRanges the two ranges with the
// smallest hole between them are merged: the numbers in that hole, which
// did reach Redis, are then not counted as gaps if a subscriber misses them.
func (ts *topicSeq) addRange(r seqRange) {
	if n := len(ts.ranges); n > 0 && ts.ranges[n-1].to+1 >= r.from {
		last := &ts.ranges[n-1]
		last.to = max(last.to, r.to)
		last.firstOK = time.Time{} // the new part was never carried
		return
	}
	ts.ranges = append(ts.ranges, failedRange{seqRange: r})
	if len(ts.ranges) <= maxRanges {
		return
	}
	best := 0
	for i := 1; i+1 < len(ts.ranges); i++ {
		if ts.ranges[i+1].from-ts.ranges[i].to < ts.ranges[best+1].from-ts.ranges[best].to {
			best = i
		}
	}
	a, b := ts.ranges[best], ts.ranges[best+1]
	merged := failedRange{seqRange: seqRange{a.from, b.to}}
	if !a.firstOK.IsZero() && !b.firstOK.IsZero() {
		merged.firstOK = a.firstOK
		if b.firstOK.After(a.firstOK) {
			merged.firstOK = b.firstOK
		}
	}
	ts.ranges[best] = merged
	ts.ranges = append(ts.ranges[:best+1], ts.ranges[best+2:]...)
}

// evict forgets channels unused for topicIdle, and the least recently used
// ones beyond maxTopics.
func (p *Publisher) evict(now time.Time) {
	for e := p.lru.Back(); e != nil && !e.Value.(*topicSeq).inFlush; e = p.lru.Back() {
		ts := e.Value.(*topicSeq)
		if len(p.topics) <= maxTopics && now.Sub(ts.used) < topicIdle {
			return
		}
		p.lru.Remove(e)
		delete(p.topics, ts.topic)
	}
}

func (p *Publisher) wrap(topic string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("pubsub %s: publish: %w: %w", topic, broker.ErrClosed, err)
	}
	return fmt.Errorf("pubsub %s: publish: %w", topic, err)
}
