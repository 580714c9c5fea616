package stream

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker/internal/runner"
	"github.com/redisbroker/broker/internal/wire"
)

var (
	//go:embed delconsumer.lua
	delConsumerLua    string
	delConsumerScript = redis.NewScript(delConsumerLua)

	//go:embed lease.lua
	leaseLua    string
	leaseScript = redis.NewScript(leaseLua)

	//go:embed deadletter.lua
	deadLetterLua    string
	deadLetterScript = redis.NewScript(deadLetterLua)
)

// maxClaimBatch bounds the IDs of one lease script call (lease renewal,
// retry backoff, hand back).
const maxClaimBatch = 1024

// guessedAttempt is the attempt of a recovered entry whose delivery count
// could not be looked up: reading or claiming it counted one delivery more
// than the one it had, so 2 is the least it can be (1 after a hand back).
const guessedAttempt = 2

// drain re-reads this consumer's own pending entries (XREADGROUP with an ID
// instead of ">"), left by an earlier run under the same name. Entries
// deleted while pending come back without fields: they are acked and
// counted. When no pending entry is left, *draining becomes false.
func (s *Subscription) drain(ctx context.Context, n int, cursor *string, draining *bool) (int, error) {
	res, err := s.c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group:    s.group,
		Consumer: s.consumer,
		Streams:  []string{s.topic, *cursor},
		Count:    int64(n),
		Block:    -1, // history reads never block
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, wrapErr(s.topic, "read pending", err)
	}
	var msgs []redis.XMessage
	for _, st := range res {
		msgs = append(msgs, st.Messages...)
	}
	if len(msgs) == 0 {
		*draining = false
		return 0, nil
	}
	*cursor = msgs[len(msgs)-1].ID
	live := msgs[:0]
	var deleted []string
	for _, m := range msgs {
		switch {
		case len(m.Values) == 0:
			deleted = append(deleted, m.ID)
		case s.isHeld(m.ID):
		default:
			live = append(live, m)
		}
	}
	s.deleted(deleted)
	if len(live) > 0 {
		s.log.Info("stream: redelivering this consumer's pending entries", "count", len(live))
	}
	return s.deliverRecovered(ctx, live), nil
}

// claim claims up to n entries idle for the visibility timeout from any
// consumer of the group (XAUTOCLAIM), starting at start. It returns the
// cursor where the scan of the pending list continues, "0-0" at its end.
func (s *Subscription) claim(ctx context.Context, n int, start string) (got int, next string, err error) {
	msgs, next, deletedIDs, err := s.c.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
		Stream:   s.topic,
		Group:    s.group,
		Consumer: s.consumer,
		MinIdle:  s.cfg.visibility,
		Start:    start,
		Count:    int64(n),
	}).Result()
	if err != nil {
		return 0, "0-0", wrapErr(s.topic, "claim", err)
	}
	// Redis 7 drops deleted entries from the pending list itself and reports
	// them here; Redis 6.2 returns them as entries without fields.
	if deletedIDs = s.newlyDeleted(deletedIDs); len(deletedIDs) > 0 {
		s.log.Warn("stream: pending entries were deleted before they were acked", "count", len(deletedIDs), "first_id", deletedIDs[0])
	}
	live := msgs[:0]
	var deleted, mine []string
	for _, m := range msgs {
		switch {
		case len(m.Values) == 0:
			deleted = append(deleted, m.ID)
		case s.isHeld(m.ID):
			// Ours and still in progress (a lease renewal came late): the
			// claim counted a delivery that did not happen.
			mine = append(mine, m.ID)
		default:
			live = append(live, m)
		}
	}
	s.deleted(deleted)
	if len(mine) > 0 {
		s.leaseMu.Lock()
		_, err := s.reclaim(mine, 0, -1, noLimit)
		s.leaseMu.Unlock()
		if err != nil {
			s.log.Warn("stream: restoring the delivery count of entries claimed from ourselves", "count", len(mine), "err", err)
		}
	}
	if len(live) > 0 {
		s.stats.claimed.Add(int64(len(live)))
		s.log.Info("stream: claimed idle entries", "count", len(live))
	}
	return s.deliverRecovered(ctx, live), next, nil
}

// deliverRecovered looks up the delivery counts of recovered entries, sends
// those delivered more than MaxAttempts times to the dead letters, and pushes
// the rest. It returns the number pushed.
func (s *Subscription) deliverRecovered(ctx context.Context, msgs []redis.XMessage) int {
	if len(msgs) == 0 {
		return 0
	}
	counts := s.deliveryCounts(ctx, msgs)
	es := make([]entry, 0, len(msgs))
	for i, m := range msgs {
		e := entry{id: m.ID, values: m.Values, attempt: counts[i], known: counts[i] > 0}
		if !e.known {
			e.attempt = guessedAttempt
		}
		if e.known && e.attempt > s.cfg.maxAttempts {
			reason := fmt.Sprintf("delivered %d times, max attempts %d: its consumers stopped or crashed before finishing it", e.attempt, s.cfg.maxAttempts)
			if _, err := s.deadLetter(e, reason); err != nil {
				// Pending for us, not held: claimed again after the
				// visibility timeout, and dead-lettered then.
				s.log.Error("stream: dead letter failed; the entry stays pending", "id", e.id, "err", err)
			}
			continue
		}
		es = append(es, e)
	}
	s.pushBatch(es)
	return len(es)
}

// maxCountPages bounds the XPENDING calls of one delivery count lookup.
const maxCountPages = 4

// deliveryCounts returns each entry's delivery count in the group, 0 where
// unknown. The entries were just read or claimed by this consumer, so one
// XPENDING over their ID range, filtered by consumer, finds them all unless
// the consumer has many other entries pending in that range; then it pages.
func (s *Subscription) deliveryCounts(ctx context.Context, msgs []redis.XMessage) []int {
	counts := make([]int, len(msgs))
	index := make(map[string]int, len(msgs))
	first, last := msgs[0].ID, msgs[0].ID
	for i, m := range msgs {
		index[m.ID] = i
		if compareIDs(m.ID, first) < 0 {
			first = m.ID
		}
		if compareIDs(m.ID, last) > 0 {
			last = m.ID
		}
	}
	page := int64(2*len(msgs) + 16)
	found := 0
	for range maxCountPages {
		p, err := s.c.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: s.topic, Group: s.group, Start: first, End: last, Count: page, Consumer: s.consumer,
		}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			s.log.Warn("stream: delivery count lookup failed; attempts are guessed", "count", len(msgs), "err", wrapErr(s.topic, "delivery counts", err))
			return counts
		}
		for _, x := range p {
			if i, ok := index[x.ID]; ok && counts[i] == 0 && x.RetryCount > 0 {
				counts[i] = int(min(x.RetryCount, 1<<30))
				found++
			}
		}
		if found == len(msgs) || int64(len(p)) < page {
			break
		}
		first = nextEntryID(p[len(p)-1].ID)
	}
	return counts
}

// nextEntryID returns the smallest entry ID after id.
func nextEntryID(id string) string {
	ms, seq, ok := parseEntryID(id)
	if !ok {
		return id
	}
	if seq == ^uint64(0) {
		return strconv.FormatUint(ms+1, 10) + "-0"
	}
	return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq+1, 10)
}

// deadLetter adds the entry to the dead-letter stream with the reason and
// acks it, in one script (deadletter.lua), if it is still pending for this
// consumer. It reports whether it did.
func (s *Subscription) deadLetter(e entry, reason string) (bool, error) {
	msg := decodeEntry(s.topic, e.id, e.values)
	args := make([]any, 0, 4+18+2*len(msg.Metadata))
	args = append(args, s.group, s.consumer, e.id, s.cfg.deadLetterMaxLen)
	args = wire.AppendFields(args, msg)
	args = append(args,
		DeadReason, reason,
		DeadAttempts, strconv.Itoa(e.attempt),
		DeadEntryID, e.id,
		DeadGroup, s.group,
		DeadConsumer, s.consumer,
	)
	n, err := deadLetterScript.Run(s.bg, s.c, []string{s.topic, deadKey(s.topic)}, args...).Int()
	if err != nil {
		return false, wrapErr(s.topic, "dead letter", err)
	}
	if n == 0 {
		s.log.Debug("stream: dead letter skipped: the entry is no longer pending for this consumer", "id", e.id)
		return false, nil
	}
	s.stats.dead.Add(1)
	s.log.Warn("stream: entry moved to the dead letters", "id", e.id, "attempt", e.attempt, "reason", reason)
	return true, nil
}

// deadLetterHeld dead-letters a held entry for the worker that handled it.
// A failed write is retried with backoff while the entry stays held (its
// lease renewed, so no other consumer redelivers it meanwhile) until it
// succeeds or the hard stop; then the entry is handed back at stop.
func (s *Subscription) deadLetterHeld(ctx context.Context, e entry, reason string) {
	s.setState(e.id, holdSettling)
	for failures := 1; ; failures++ {
		_, err := s.deadLetter(e, reason)
		if err == nil {
			s.release(e.id)
			return
		}
		d := s.cfg.backoff.Delay(failures)
		s.log.Warn("stream: dead letter failed; retrying", "id", e.id, "err", err, "retry_in", d)
		if !runner.Sleep(ctx.Done(), d) {
			s.setState(e.id, holdQueued)
			s.interrupt(e.id)
			return
		}
	}
}

// retryDelay is the retry backoff after the given failed attempt: at most
// the visibility timeout, after which any consumer claims the entry anyway.
func (s *Subscription) retryDelay(attempt int) time.Duration {
	return min(s.cfg.retryBackoff.Delay(attempt), s.cfg.visibility)
}

// retryLater leaves a failed entry pending for a retry after its backoff: it
// sets the entry's idle time to the visibility timeout less the backoff, so
// XAUTOCLAIM (of any consumer) takes it once the backoff has passed, and
// tells the fetcher when that is. If that fails, the retry comes after the
// visibility timeout.
func (s *Subscription) retryLater(e entry, cause error) {
	d := s.retryDelay(e.attempt)
	vis := s.cfg.visibility.Milliseconds()
	idle := max(vis-d.Milliseconds(), 0)
	s.leaseMu.Lock()
	s.mu.Lock()
	delete(s.held, e.id)
	s.mu.Unlock()
	claimed, err := s.reclaim([]string{e.id}, time.Duration(idle)*time.Millisecond, 0, noLimit)
	s.leaseMu.Unlock()
	s.settle(1)
	if err != nil {
		s.log.Warn("stream: handler failed; setting the retry backoff failed too, retry after the visibility timeout",
			"id", e.id, "attempt", e.attempt, "handler_err", cause, "err", err)
		return
	}
	if len(claimed) == 1 {
		// Claimable once its idle time reaches the visibility timeout, by
		// the server's millisecond clock: a millisecond of margin.
		s.addRetry(time.Now().Add(time.Duration(vis-idle+1)*time.Millisecond), e.id)
	}
	s.log.Debug("stream: handler failed; retry after backoff",
		"id", e.id, "attempt", e.attempt, "retry_in", d, "err", cause)
}

// leaseLoop renews the entries this subscription holds (fetched, not
// settled) every third of the visibility timeout, so that no other consumer
// claims an entry whose handler runs long, which waits in the prefetch
// buffer, or whose ack is not confirmed yet. Nothing is sent while nothing
// is held.
func (s *Subscription) leaseLoop(stop <-chan struct{}) {
	t := time.NewTicker(s.cfg.visibility / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if err := s.renewLeases(); err != nil {
			s.log.Warn("stream: lease renewal failed", "err", err)
		}
	}
}

// renewLeases re-claims held entries that this consumer still owns with idle
// time 0 and their delivery count unchanged (lease.lua). Entries another
// consumer claimed meanwhile are left to it: marked lost, so they are not
// started here, and no longer renewed.
func (s *Subscription) renewLeases() error {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	s.mu.Lock()
	ids := make([]string, 0, len(s.held))
	for id, st := range s.held {
		if st != holdLost {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	claimed, err := s.reclaim(ids, 0, 0, noLimit)
	if err != nil {
		return err
	}
	if len(claimed) == len(ids) {
		return nil
	}
	kept := make(map[string]bool, len(claimed))
	for _, id := range claimed {
		kept[id] = true
	}
	lost := 0
	s.mu.Lock()
	for _, id := range ids {
		if st, ok := s.held[id]; ok && !kept[id] && st == holdQueued {
			s.held[id] = holdLost
			lost++
		}
	}
	s.mu.Unlock()
	if lost > 0 {
		s.stats.leasesLost.Add(int64(lost))
		s.log.Warn("stream: lease lost: held entries were claimed by another consumer or deleted before their renewal", "count", lost)
	}
	return nil
}

// noLimit is the count limit of reclaim that leaves counts as they are.
const noLimit = -1

// reclaim runs lease.lua for ids, in chunks: the entries still pending for
// this consumer get the idle time idle and their delivery count plus delta,
// at most limit (noLimit: any). It returns the IDs it re-claimed. The
// caller holds leaseMu.
func (s *Subscription) reclaim(ids []string, idle time.Duration, delta, limit int) ([]string, error) {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, compareIDs)
	var claimed []string
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), maxClaimBatch)]
		ids = ids[len(chunk):]
		args := make([]any, 0, 5+len(chunk))
		args = append(args, s.group, s.consumer, idle.Milliseconds(), delta, limit)
		for _, id := range chunk {
			args = append(args, id)
		}
		got, err := leaseScript.Run(s.bg, s.c, []string{s.topic}, args...).StringSlice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return claimed, wrapErr(s.topic, "reclaim", err)
		}
		claimed = append(claimed, got...)
	}
	return claimed, nil
}

// handBack runs at stop with the entries fetched but never started, and
// those whose handler the hard stop interrupted. It gives them back to the
// group, if this consumer still owns them: their idle time is set to the
// visibility timeout, so the next XAUTOCLAIM of any consumer takes them at
// once. An unstarted entry's delivery count is lowered by the delivery that
// never ran. An interrupted delivery counts, except as the one that
// exhausts MaxAttempts: the count is capped at MaxAttempts-1, so the hard
// stop never makes recovery dead-letter an entry. If the hand back fails
// the entries stay pending for this consumer, redelivered to it on restart
// under the same name or claimed by another after the timeout.
func (s *Subscription) handBack(_ context.Context, unstarted []entry) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	var fresh, cut []string
	s.mu.Lock()
	for _, e := range unstarted {
		if s.held[e.id] != holdLost {
			fresh = append(fresh, e.id)
		}
		delete(s.held, e.id)
	}
	for _, id := range s.interrupted {
		if s.held[id] != holdLost {
			cut = append(cut, id)
		}
		delete(s.held, id)
	}
	settled := len(unstarted) + len(s.interrupted)
	s.interrupted = nil
	s.mu.Unlock()
	if settled == 0 {
		return
	}
	s.settle(settled)
	if len(fresh) > 0 {
		back, err := s.reclaim(fresh, s.cfg.visibility, -1, noLimit)
		if err != nil {
			s.log.Warn("stream: hand back at stop failed; entries stay pending for this consumer", "count", len(fresh), "err", err)
		}
		s.stats.handedBack.Add(int64(len(back)))
	}
	if len(cut) > 0 {
		if _, err := s.reclaim(cut, s.cfg.visibility, 0, s.cfg.maxAttempts-1); err != nil {
			s.log.Warn("stream: hand back of interrupted entries failed; they stay pending for this consumer", "count", len(cut), "err", err)
		}
	}
}

// hygieneInterval is how often a subscription looks for idle consumers to
// delete: rarely, as this is housekeeping, not correctness.
func (s *Subscription) hygieneInterval() time.Duration {
	return min(s.cfg.consumerIdleTimeout/2, 10*time.Minute)
}

// deleteIdleConsumers deletes other consumers of the group that have been
// idle past the consumer idle timeout and have no pending entries. The
// pending check and the delete run in one script, so an entry read in
// between is never dropped. It returns the number of commands sent.
func (s *Subscription) deleteIdleConsumers(ctx context.Context) (int, error) {
	consumers, err := s.c.XInfoConsumers(ctx, s.topic, s.group).Result()
	if err != nil {
		return 1, wrapErr(s.topic, "list consumers", err)
	}
	cmds := 1
	for _, c := range consumers {
		if c.Name == s.consumer || c.Pending > 0 || c.Idle < s.cfg.consumerIdleTimeout {
			continue
		}
		cmds++
		n, err := delConsumerScript.Run(ctx, s.c, []string{s.topic}, s.group, c.Name).Int()
		if err != nil {
			return cmds, wrapErr(s.topic, "delete consumer "+c.Name, err)
		}
		if n == 1 {
			s.log.Info("stream: deleted idle consumer without pending entries", "deleted", c.Name, "idle", c.Idle)
		}
	}
	return cmds, nil
}
