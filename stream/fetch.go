package stream

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker/internal/runner"
)

// maxScanCalls bounds the XAUTOCLAIM calls of one periodic scan of the
// pending list. Each call examines at most 10 x COUNT entries (Redis 7), so
// a long pending list held by live consumers is scanned over several claim
// intervals, resuming where the last scan stopped, instead of in a burst.
const maxScanCalls = 16

// maxRetries bounds the failed entries whose retry time the fetcher tracks;
// beyond it, retries wait for the periodic claim.
const maxRetries = 4096

// retry is an entry left pending after a handler error, claimable from at.
type retry struct {
	at time.Time
	id string
}

// fetchState is the fetcher's own state; only the fetch goroutine uses it.
type fetchState struct {
	draining    bool
	drainCursor string

	// The periodic claim: a scan of the pending list from claimCursor, every
	// claim interval, of at most maxScanCalls calls with reads in between.
	claimCursor string
	scanning    bool
	scanCalls   int
	nextClaim   time.Time // zero: claim right after draining
	claimedLast bool      // the last command was a claim: read before the next

	nextHygiene time.Time

	// idle: the last read found nothing new.
	idle bool
	pace pacer
}

// pacer keeps an idle subscription to one command per block on average,
// the blocked reads included. An idle fetcher spends its time in blocked
// reads, one command per block; every other command it sends (a claim, the
// idle-consumer cleanup, a read cut short) is owed, and paid back with short
// pauses after the following empty reads. While anything is owed, periodic
// commands wait. So the claims fold into the read cadence instead of adding
// to it, at the price of a pause of at most step before an idle read, which
// is the most a message arriving then waits beyond the usual.
type pacer struct {
	block, step, debt time.Duration
}

// maxDebt bounds what the pacer owes, in blocks; only commands that do not
// wait for the pacer (retries due, the rest of a scan) can reach it.
const maxDebt = 4

func newPacer(block, claimInterval time.Duration) pacer {
	// block/8 keeps pauses short; with claims more often than every eight
	// blocks, longer pauses keep a claim per claim interval affordable.
	step := max(block/8, time.Duration(int64(block)*int64(block)/int64(max(claimInterval, 1))))
	return pacer{block: block, step: min(step, block)}
}

// spend records a command that blocked for blocked (0 for a command that
// does not block) while idle.
func (p *pacer) spend(blocked time.Duration) {
	p.debt = min(p.debt+p.block-min(blocked, p.block), maxDebt*p.block)
}

// pause returns the pause to take after an empty read, and pays it.
func (p *pacer) pause() time.Duration {
	d := min(p.debt, p.step)
	p.debt -= d
	return d
}

func (p *pacer) owing() bool { return p.debt > 0 }

// fetch is the only fetcher. It reads this consumer's own pending entries
// first (a restart under the same name), then reads new entries, claiming
// idle ones every half visibility timeout (and at once after draining),
// claiming failed entries when their retry backoff ends, and deleting idle
// consumers now and then, never two claims without a read in between.
func (s *Subscription) fetch() {
	ctx := s.r.Context()
	stop := s.r.Stopping()
	f := &fetchState{
		draining:    true,
		drainCursor: "0",
		claimCursor: "0-0",
		nextHygiene: time.Now().Add(s.hygieneInterval()),
		pace:        newPacer(s.readBlock(), s.claimInterval()),
	}
	failures := 0
	for {
		room, ok := s.waitRoom(stop)
		if !ok {
			return
		}
		n := s.r.Acquire(room)
		if n == 0 {
			return
		}
		got, err := s.fetchOnce(ctx, stop, f, n)
		s.r.Release(n - got)
		if err == nil {
			failures = 0
			continue
		}
		f.claimCursor, f.scanning, f.scanCalls = "0-0", false, 0
		select {
		case <-stop:
			return
		default:
		}
		if redis.HasErrorPrefix(err, "NOGROUP") {
			if s.recreateGroup(ctx) == nil {
				failures = 0
				continue
			}
		}
		failures++
		d := s.cfg.backoff.Delay(failures)
		s.log.Warn("stream: fetch failed; retrying", "err", err, "retry_in", d)
		if !runner.Sleep(stop, d) {
			return
		}
	}
}

// fetchOnce sends one fetch command for up to n entries and returns how
// many it pushed.
func (s *Subscription) fetchOnce(ctx context.Context, stop <-chan struct{}, f *fetchState, n int) (int, error) {
	now := time.Now()
	paced := f.idle && f.pace.owing() // periodic commands wait
	if f.draining {
		got, err := s.drain(ctx, n, &f.drainCursor, &f.draining)
		f.sent(got)
		return got, err
	}
	if !f.claimedLast {
		if from, ok := s.dueRetries(now); ok {
			// Not kept as the scan's cursor: this claim only looks at the
			// entries from the first due retry on.
			got, _, err := s.claim(ctx, n, from)
			f.claimedLast = true
			f.sent(got)
			return got, err
		}
		if f.scanning {
			return s.scan(ctx, f, n, now)
		}
	}
	if !paced && !now.Before(f.nextHygiene) {
		f.nextHygiene = now.Add(s.hygieneInterval())
		cmds, err := s.deleteIdleConsumers(ctx)
		if err != nil {
			s.log.Debug("stream: idle consumer cleanup", "err", err)
		}
		for range cmds {
			f.sent(0)
		}
		return 0, nil
	}
	if !f.claimedLast && !paced && !now.Before(f.nextClaim) {
		return s.scan(ctx, f, n, now)
	}
	block := s.readBlock()
	if at, ok := s.nextRetry(); ok {
		// Wake up for a retry due before the block ends.
		block = max(min(block, time.Until(at)), time.Millisecond)
	}
	start := time.Now()
	got, err := s.read(ctx, n, block)
	f.claimedLast = false
	switch {
	case err != nil:
	case got > 0:
		f.idle = false
	default:
		if f.idle {
			f.pace.spend(time.Since(start))
		}
		f.idle = true
		if d := f.pace.pause(); d > 0 {
			runner.Sleep(stop, d)
		}
	}
	return got, err
}

// scan sends one XAUTOCLAIM of the periodic scan of the pending list.
func (s *Subscription) scan(ctx context.Context, f *fetchState, n int, now time.Time) (int, error) {
	got, next, err := s.claim(ctx, n, f.claimCursor)
	f.claimedLast = true
	f.sent(got)
	if err != nil {
		return got, err
	}
	f.claimCursor = next
	f.scanCalls++
	if more := next != "0-0" && next != "0"; more && f.scanCalls < maxScanCalls {
		f.scanning = true
	} else {
		// Done, or resumed from the cursor next interval.
		f.scanning, f.scanCalls = false, 0
		f.nextClaim = now.Add(s.claimInterval())
	}
	return got, nil
}

// sent records a command other than a read that got got entries.
func (f *fetchState) sent(got int) {
	if got > 0 {
		f.idle = false
	}
	if f.idle {
		f.pace.spend(0)
	}
}

// readBlock is the block of one XREADGROUP: the block option, shortened to
// the claim interval when that is less, because claims run between reads.
func (s *Subscription) readBlock() time.Duration {
	return max(min(s.cfg.block, s.claimInterval()), time.Millisecond)
}

// claimInterval is how often idle entries are claimed: half the visibility
// timeout, so a crashed consumer's entries wait at most 1.5 timeouts.
func (s *Subscription) claimInterval() time.Duration { return s.cfg.visibility / 2 }

// recreateGroup answers NOGROUP: the group was destroyed, or the whole stream
// deleted. It recreates the group after the last entry this consumer read,
// which is where the group stood when this consumer last read; entries
// others read after that are delivered again (at least once). With nothing
// read yet it starts at "0": redeliver rather than lose.
func (s *Subscription) recreateGroup(ctx context.Context) error {
	start := s.lastRead
	if start == "" {
		start = "0"
	}
	if err := s.createGroup(ctx, start); err != nil {
		s.log.Warn("stream: recreate group", "err", err)
		return err
	}
	s.stats.recreated.Add(1)
	s.log.Warn("stream: group or stream was deleted; recreated the group", "start", start)
	return nil
}

// read reads up to n new entries, blocking up to block.
func (s *Subscription) read(ctx context.Context, n int, block time.Duration) (int, error) {
	res, err := s.c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group:    s.group,
		Consumer: s.consumer,
		Streams:  []string{s.topic, ">"},
		Count:    int64(n),
		Block:    block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, wrapErr(s.topic, "read", err)
	}
	var (
		es      []entry
		deleted []string
	)
	for _, st := range res {
		for _, m := range st.Messages {
			s.lastRead = m.ID
			if m.Values == nil {
				// Cannot happen for ">" reads; acked defensively so it
				// never stays pending.
				deleted = append(deleted, m.ID)
				continue
			}
			if len(es) == n {
				break // a server ignoring COUNT; the rest stays pending for us
			}
			if es == nil {
				es = make([]entry, 0, len(st.Messages))
			}
			es = append(es, entry{id: m.ID, values: m.Values, attempt: 1, known: true})
		}
	}
	s.deleted(deleted)
	s.pushBatch(es)
	return len(es), nil
}

// addRetry records that the failed entry id becomes claimable at at.
func (s *Subscription) addRetry(at time.Time, id string) {
	s.mu.Lock()
	if len(s.retries) < maxRetries {
		s.retries = append(s.retries, retry{at, id})
	}
	s.mu.Unlock()
}

// dueRetries removes the retries due at now and returns the lowest of their
// entry IDs, where a claim for them starts.
func (s *Subscription) dueRetries(now time.Time) (from string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.retries[:0]
	for _, r := range s.retries {
		if now.Before(r.at) {
			kept = append(kept, r)
			continue
		}
		if !ok || compareIDs(r.id, from) < 0 {
			from = r.id
		}
		ok = true
	}
	clear(s.retries[len(kept):])
	s.retries = kept
	return from, ok
}

// nextRetry returns the earliest time a retry is due.
func (s *Subscription) nextRetry() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var at time.Time
	for _, r := range s.retries {
		if at.IsZero() || r.at.Before(at) {
			at = r.at
		}
	}
	return at, !at.IsZero()
}
