package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/batch"
	"github.com/redisbroker/broker/internal/wire"
)

var _ broker.Publisher = (*Publisher)(nil)

// Publisher adds messages to streams with XADD. It is safe for concurrent
// use. It owns no goroutine and needs no Close; it never closes the client.
type Publisher struct {
	c   redis.UniversalClient
	cfg *config
	co  *batch.Coalescer[pubItem]

	lagMu     sync.Mutex
	lagNext   map[string]time.Time // topic -> time of its next lag check
	unknownAt map[string]time.Time // topic/group -> time of its next "lag unknown" warning
	lagWarned atomic.Int64
	lagUnsure atomic.Int64

	// The Redis server's clock, for WithMaxAge: the server's time at the
	// local (monotonic) time sampledAt, refreshed every clockRefresh.
	clockMu     sync.Mutex
	serverTime  time.Time
	sampledAt   time.Time
	clockSample bool // a pipeline carries a TIME right now
}

// clockRefresh is how often a Publisher with WithMaxAge samples the server's
// clock, riding in a Publish pipeline.
const clockRefresh = time.Minute

// unknownLagWarnEvery rate-limits the warning that a group's lag is unknown,
// per topic and group.
const unknownLagWarnEvery = 10 * time.Minute

// pubItem is one message to XADD, already turned into field/value pairs in
// its caller's goroutine: a coalesced flush may run after a caller returned
// on its ctx, and must not read a message the caller may change by then.
type pubItem struct {
	topic  string
	values []any
}

// PublisherStats are counters of a Publisher since it was created.
type PublisherStats struct {
	// LagWarnings counts lag checks that found a group about to lose unread
	// entries to trimming (see WithMaxLen).
	LagWarnings int64
	// LagUnknown counts lag checks of a Publisher with WithMaxLen that found
	// a group whose lag Redis cannot tell (-1, after XDEL or trimming of
	// entries it had not read): trimming may be dropping its unread entries
	// unnoticed. A warning is logged every 10 minutes per group.
	LagUnknown int64
}

// NewPublisher returns a Publisher on c, which it never closes. Options that
// apply only to a Subscriber are rejected with broker.ErrInvalidOption.
func NewPublisher(c redis.UniversalClient, opts ...Option) (*Publisher, error) {
	if c == nil {
		return nil, fmt.Errorf("stream: %w: nil client", broker.ErrInvalidOption)
	}
	cfg, err := newConfig(forPublisher, opts)
	if err != nil {
		return nil, err
	}
	p := &Publisher{c: c, cfg: cfg, lagNext: make(map[string]time.Time), unknownAt: make(map[string]time.Time)}
	p.co = batch.New(p.flush, batch.Options{})
	return p, nil
}

// Stats returns the Publisher's counters.
func (p *Publisher) Stats() PublisherStats {
	return PublisherStats{LagWarnings: p.lagWarned.Load(), LagUnknown: p.lagUnsure.Load()}
}

// Publish adds msgs to the stream topic in one pipeline of XADD commands (one
// round trip); concurrent single-message calls share pipelines. It fills an
// empty Message.ID with a new unique ID (wire.NewID, time-ordered) before
// sending, and a zero Time with the current time, in the caller's goroutine:
// when Publish returns, even with an error, msg.ID is the ID the message
// was (or would have been) written with, so a retry keeps it. The ID travels in the
// entry's "id" field and is what consumers see as Message.ID; the entry ID
// Redis assigns is a separate thing (see EntryID and Replay). Filling the ID
// before the write, not from XADD's reply, means a consumer may handle the
// message before Publish returns and still see the ID the publisher sees,
// and a write that the client retried after a lost reply (two entries) is
// recognisable as a duplicate by its ID.
//
// The messages are checked before anything is sent: a payload over the
// limit fails the call with broker.ErrTooLarge. The XADDs of one call are not
// a transaction: on error, some of the messages may have been added.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	if topic == "" {
		return fmt.Errorf("stream: publish: %w: empty topic", broker.ErrInvalidOption)
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("stream %s: publish: %w: message %d is nil", topic, broker.ErrInvalidOption, i)
		}
		if len(m.Payload) > p.cfg.maxPayload {
			return fmt.Errorf("stream %s: publish: %w: payload of %d bytes, limit %d", topic, broker.ErrTooLarge, len(m.Payload), p.cfg.maxPayload)
		}
	}
	// Filled here, never in the flush: a coalesced flush runs in another
	// caller's goroutine, possibly after this one returned on its ctx.
	var now time.Time
	for _, m := range msgs {
		if m.ID == "" {
			m.ID = wire.NewID()
		}
		if m.Time.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			m.Time = now
		}
	}
	switch len(msgs) {
	case 0:
		return nil
	case 1:
		err := p.co.Do(ctx, pubItem{topic, wire.AppendFields(make([]any, 0, fieldsLen(msgs[0])), msgs[0])})
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	// One backing array for the whole call; each XADD gets its own window
	// of it (capped, so that appends never overlap).
	n := 0
	for _, m := range msgs {
		n += fieldsLen(m)
	}
	values := make([]any, 0, n)
	items := make([]pubItem, len(msgs))
	for i, m := range msgs {
		start := len(values)
		values = wire.AppendFields(values, m)
		items[i] = pubItem{topic, values[start:len(values):len(values)]}
	}
	for _, err := range p.flush(ctx, items) {
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return nil
}

// fieldsLen is the number of XADD values wire.AppendFields writes for m.
func fieldsLen(m *broker.Message) int {
	return 6 + 2*len(m.Metadata) // id, time, payload, metadata
}

// flush writes items in one pipeline and returns one error per item, or nil.
// It reads no message: Publish encoded them in the callers' goroutines.
func (p *Publisher) flush(ctx context.Context, items []pubItem) []error {
	now := time.Now()
	pipe := p.c.Pipeline()
	cmds := make([]*redis.StringCmd, len(items))
	args := make([]redis.XAddArgs, len(items))
	minID := p.cfg.minID
	var clock *redis.TimeCmd
	if p.cfg.maxAge > 0 {
		var err error
		if minID, clock, err = p.maxAgeMinID(ctx, pipe); err != nil {
			return batch.Errors(len(items), wrapErr(items[0].topic, "publish: read the server's clock", err))
		}
	}
	for i, it := range items {
		a := &args[i]
		a.Stream = it.topic
		a.Values = it.values
		if p.cfg.maxLen > 0 {
			a.MaxLen, a.Approx = p.cfg.maxLen, true
		} else if minID != "" {
			a.MinID, a.Approx = minID, true
		}
		cmds[i] = pipe.XAdd(ctx, a)
	}
	checks := p.lagChecks(ctx, pipe, items, now)
	sent := time.Now()
	_, _ = pipe.Exec(ctx) // errors are read per command below
	if clock != nil {
		p.sampleClock(clock, sent, sent)
	}

	var errs []error
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			if errs == nil {
				errs = make([]error, len(items))
			}
			errs[i] = wrapErr(items[i].topic, "publish", err)
		}
	}
	for _, ch := range checks {
		p.checkLag(ch.topic, ch.cmd, minID)
	}
	return errs
}

// maxAgeMinID returns the MINID for WithMaxAge from the Redis server's clock,
// which also stamps the entry IDs, so that skew between the publisher's and
// the server's clocks cannot shift the cut. The server's time is sampled
// with TIME once in its own round trip, then every clockRefresh riding first
// in a Publish pipeline (the returned cmd, to pass to sampleClock); between
// samples it advances by the local monotonic clock.
func (p *Publisher) maxAgeMinID(ctx context.Context, pipe redis.Pipeliner) (string, *redis.TimeCmd, error) {
	p.clockMu.Lock()
	known := !p.sampledAt.IsZero()
	refresh := known && !p.clockSample && time.Since(p.sampledAt) >= clockRefresh
	if refresh {
		p.clockSample = true
	}
	p.clockMu.Unlock()
	var cmd *redis.TimeCmd
	switch {
	case !known:
		start := time.Now()
		c := p.c.Time(ctx)
		if err := c.Err(); err != nil {
			return "", nil, err
		}
		p.sampleClock(c, start, time.Now())
	case refresh:
		cmd = pipe.Time(ctx) // first in the pipeline: executed as it arrives
	}
	p.clockMu.Lock()
	server := p.serverTime.Add(time.Since(p.sampledAt))
	p.clockMu.Unlock()
	ms := server.Add(-p.cfg.maxAge).UnixMilli()
	return strconv.FormatInt(max(ms, 0), 10), cmd, nil
}

// sampleClock records the server time of a TIME sent at start whose reply
// came by end, as the server's time at the midpoint.
func (p *Publisher) sampleClock(cmd *redis.TimeCmd, start, end time.Time) {
	t, err := cmd.Result()
	p.clockMu.Lock()
	defer p.clockMu.Unlock()
	p.clockSample = false
	if err != nil {
		p.cfg.logger.Debug("stream: server clock sample", "err", err)
		return
	}
	p.serverTime = t
	p.sampledAt = start.Add(end.Sub(start) / 2)
}

type lagCheck struct {
	topic string
	cmd   *redis.XInfoGroupsCmd
}

// lagChecks adds an XINFO GROUPS to the pipeline for each trimmed topic whose
// check is due, so the check costs no round trip of its own.
func (p *Publisher) lagChecks(ctx context.Context, pipe redis.Pipeliner, items []pubItem, now time.Time) []lagCheck {
	if p.cfg.maxLen == 0 && p.cfg.minID == "" && p.cfg.maxAge == 0 {
		return nil
	}
	var checks []lagCheck
	p.lagMu.Lock()
	defer p.lagMu.Unlock()
	for _, it := range items {
		if next, ok := p.lagNext[it.topic]; ok && now.Before(next) {
			continue
		}
		if len(p.lagNext) > 10_000 {
			clear(p.lagNext) // bound the map when topics are unbounded
		}
		p.lagNext[it.topic] = now.Add(p.cfg.lagCheckInterval)
		checks = append(checks, lagCheck{it.topic, pipe.XInfoGroups(ctx, it.topic)})
	}
	return checks
}

// checkLag warns when a group has unread entries that trimming is about to
// drop: its lag nears MaxLen, or its last delivered ID is below the MINID.
// A lag Redis cannot tell (-1) under MaxLen is warned about too, rate-limited,
// since trimming could then drop unread entries unnoticed.
func (p *Publisher) checkLag(topic string, cmd *redis.XInfoGroupsCmd, minID string) {
	groups, err := cmd.Result()
	if err != nil {
		p.cfg.logger.Debug("stream: lag check", "topic", topic, "err", err)
		return
	}
	for _, g := range groups {
		switch {
		case p.cfg.maxLen > 0 && g.Lag < 0:
			p.lagUnsure.Add(1)
			if p.unknownLagDue(topic + "\x00" + g.Name) {
				p.cfg.logger.Warn("stream: a group's lag is unknown (entries were deleted or trimmed before it read them): trimming may drop entries it has not read",
					"topic", topic, "group", g.Name, "last_delivered_id", g.LastDeliveredID, "maxlen", p.cfg.maxLen)
			}
		case p.cfg.maxLen > 0 && float64(g.Lag) >= lagWarnFraction*float64(p.cfg.maxLen):
			p.lagWarned.Add(1)
			p.cfg.logger.Warn("stream: trimming is about to drop entries a group has not read",
				"topic", topic, "group", g.Name, "lag", g.Lag, "maxlen", p.cfg.maxLen)
		case minID != "" && g.Lag != 0 && compareIDs(g.LastDeliveredID, minID) < 0:
			p.lagWarned.Add(1)
			p.cfg.logger.Warn("stream: trimming is about to drop entries a group has not read",
				"topic", topic, "group", g.Name, "lag", g.Lag, "last_delivered_id", g.LastDeliveredID, "minid", minID)
		}
	}
}

// unknownLagDue reports whether the "lag unknown" warning for key is due, and
// if so schedules the next one.
func (p *Publisher) unknownLagDue(key string) bool {
	now := time.Now()
	p.lagMu.Lock()
	defer p.lagMu.Unlock()
	if next, ok := p.unknownAt[key]; ok && now.Before(next) {
		return false
	}
	if len(p.unknownAt) > 10_000 {
		clear(p.unknownAt)
	}
	p.unknownAt[key] = now.Add(unknownLagWarnEvery)
	return true
}

// compareIDs compares two stream IDs numerically; an unparseable ID sorts
// first.
func compareIDs(a, b string) int {
	am, as, aok := parseEntryID(a)
	bm, bs, bok := parseEntryID(b)
	switch {
	case !aok || !bok:
		if aok == bok {
			return 0
		}
		if !aok {
			return -1
		}
		return 1
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	}
	return 0
}

// wrapErr adds the topic and operation to err and maps a closed client to
// broker.ErrClosed.
func wrapErr(topic, op string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("stream %s: %s: %w: %w", topic, op, broker.ErrClosed, err)
	}
	return fmt.Errorf("stream %s: %s: %w", topic, op, err)
}
