package queue

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker/internal/runner"
	"github.com/redisbroker/broker/internal/wire"
)

// simple is one at-most-once consumer: BLMPOP COUNT n, which pops a batch
// when the queue has a backlog and blocks only when it is empty, one round
// trip either way. Where the server lacks BLMPOP (Redis before 7.0,
// miniredis), LPOP COUNT n while a backlog exists and BLPOP when the queue
// is empty. A popped value lives only in this process until its handler
// returns.
type simple struct {
	*base
	failed atomic.Int64 // handler errors, for the log
	wake   *wakeup
	// noBLMPOP is set once the server rejected BLMPOP as an unknown
	// command. Fetcher only.
	noBLMPOP bool
}

func subscribeSimple(ctx context.Context, b *base) (*subscription, error) {
	q := &simple{base: b, wake: newWakeup()}
	// One tick before returning: promotes due delayed messages and proves
	// Redis is reachable.
	res, err := b.runTick(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("queue %s: subscribe: %w", b.topic, err)
	}
	q.r = runner.New(ctx, runner.Options[*delivery]{
		Concurrency: b.cfg.concurrency,
		Prefetch:    b.cfg.prefetch,
		Work:        q.work,
		OnStop:      q.onStop,
	})
	q.r.GoBackground(func(stop <-chan struct{}) {
		tickLoop(stop, b.nextTick(res), q.wake, q.tick)
	})
	q.r.Go(q.fetch)
	return &subscription{r: q.r}, nil
}

func (q *simple) fetch() {
	failures := 0
	// idle is set after a blocking pop timed out: the queue was empty for a
	// whole block period, so the next call blocks at once instead of first
	// trying a batch. That keeps an idle consumer at one pop per period.
	idle := false
	for {
		n := q.r.Acquire(q.cfg.prefetch)
		if n == 0 {
			return
		}
		if !q.noBLMPOP {
			ok, err := q.blmpop(n)
			if err != nil {
				failures++
				if !q.sleepErr(q.r.Stopping(), "blmpop", failures, err) {
					return
				}
			} else if ok {
				failures = 0
			}
			continue
		}
		var vals []string
		if !idle {
			var err error
			vals, err = q.c.LPopCount(q.redisCtx, q.topic, n).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				q.r.Release(n)
				failures++
				if !q.sleepErr(q.r.Stopping(), "lpop", failures, err) {
					return
				}
				continue
			}
			failures = 0
		}
		idle = false
		if len(vals) == 0 {
			q.r.Release(n - 1)
			n = 1
			select {
			case <-q.r.Stopping():
				q.r.Release(1)
				return
			default:
			}
			kv, err := q.c.BLPop(q.redisCtx, q.cfg.block, q.topic).Result()
			if errors.Is(err, redis.Nil) {
				q.r.Release(1)
				idle = true
				continue
			}
			if err != nil || len(kv) != 2 {
				q.r.Release(1)
				failures++
				if err == nil {
					err = fmt.Errorf("blpop: reply of %d elements", len(kv))
				}
				if !q.sleepErr(q.r.Stopping(), "blpop", failures, err) {
					return
				}
				continue
			}
			vals = kv[1:]
		}
		q.r.Release(n - q.deliver(vals))
	}
}

// blmpop pops up to n values (n slots reserved) with BLMPOP and delivers
// them. It reports false when nothing was popped: the block timed out, the
// subscription is stopping, or the server has no BLMPOP (noBLMPOP is then
// set and the caller falls back at once).
func (q *simple) blmpop(n int) (bool, error) {
	select {
	case <-q.r.Stopping():
		q.r.Release(n)
		return false, nil
	default:
	}
	_, vals, err := q.c.BLMPop(q.redisCtx, q.cfg.block, "left", int64(n), q.topic).Result()
	if err != nil {
		q.r.Release(n)
		switch {
		case errors.Is(err, redis.Nil):
			return false, nil
		case redis.HasErrorPrefix(err, "unknown command"): // HasErrorPrefix drops "ERR "
			q.noBLMPOP = true
			q.log.Debug("queue: the server has no BLMPOP; using LPOP and BLPOP")
			return false, nil
		}
		return false, err
	}
	q.r.Release(n - q.deliver(vals))
	return true, nil
}

func (q *simple) deliver(vals []string) int {
	pushed := 0
	for _, v := range vals {
		if len(v) > q.cfg.maxValue {
			q.deadLetter(v, fmt.Sprintf("value of %d bytes exceeds limit of %d", len(v), q.cfg.maxValue))
			continue
		}
		m, err := wire.Decode([]byte(v))
		if err != nil {
			q.deadLetter(v, err.Error())
			continue
		}
		m.Topic = q.topic
		m.Attempt++
		q.r.Push(&delivery{msg: m, raw: v})
		pushed++
	}
	return pushed
}

// deadLetter stores an undeliverable value with the reason. Simple mode has
// no retries, but a malformed value must still not vanish unseen.
func (q *simple) deadLetter(v, reason string) {
	a, _ := wire.Attempt([]byte(v))
	q.log.Warn("queue: dead-lettering undeliverable value", "reason", reason, "bytes", len(v))
	k := q.keys
	err := ackScript.Run(q.redisCtx, q.c, []string{k.processing, k.delayed, k.dead, k.ready},
		"X", v, a, truncateReason(reason)).Err()
	if err != nil {
		q.log.Error("queue: value lost: dead letter not written", "error", fmt.Errorf("queue %s: dead letter: %w", q.topic, err))
	}
}

// work runs the handler. At most once: an error is logged and counted, and
// the message is dropped (ErrDiscard included: simple mode keeps no dead
// letters of handled messages).
func (q *simple) work(ctx context.Context, d *delivery) {
	if err := runner.Call(ctx, q.h, d.msg); err != nil {
		n := q.failed.Add(1)
		q.log.Warn("queue: handler failed; message dropped (simple mode does not retry)",
			"id", d.msg.ID, "error", err, "failures", n)
	}
}

// onStop pushes popped but unstarted values back to the head of the queue,
// in their original order (LPUSH of the reversed list).
func (q *simple) onStop(ctx context.Context, unstarted []*delivery) {
	if len(unstarted) == 0 {
		return
	}
	vals := make([]any, len(unstarted))
	for i, d := range unstarted {
		vals[len(vals)-1-i] = d.raw
	}
	for failures := 1; ; failures++ {
		err := q.c.LPush(ctx, q.topic, vals...).Err()
		if err == nil {
			return
		}
		if failures >= cleanupTries && q.r.Context().Err() != nil {
			q.log.Error("queue: unstarted messages lost: could not push them back",
				"messages", len(vals), "error", fmt.Errorf("queue %s: push back: %w", q.topic, err))
			return
		}
		q.sleepErr(q.r.Context().Done(), "push back", failures, err)
	}
}

func (q *simple) tick() time.Duration {
	res, err := q.runTick(q.redisCtx, "")
	if err != nil {
		q.log.Warn("queue: tick failed; retrying", "error", fmt.Errorf("queue %s: tick: %w", q.topic, err))
		return min(errBackoffMax, q.cfg.tickInterval())
	}
	return q.nextTick(res)
}
