package queue

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker/internal/runner"
)

const (
	// sweepLeases spaces the sweeps for orphaned processing lists: each
	// reliable consumer sweeps when it starts, then every sweepLeases
	// leases (plus up to half that again, so that consumers started
	// together spread out).
	sweepLeases = 10
	// scanCount is the COUNT hint of one SCAN call.
	scanCount = 1000
	// sweepBatch bounds the lists one sweep.lua call checks.
	sweepBatch = 100
)

// globEscape escapes the glob metacharacters of s for SCAN MATCH.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// processingNames returns the consumers that have a processing list of k's
// topic, found with SCAN MATCH. Every key of a topic shares its hash tag, so
// on a Cluster it scans the master of that slot only. stop, when closed,
// ends the scan early with what was found.
func processingNames(ctx context.Context, c redis.UniversalClient, k keys, stop <-chan struct{}) ([]string, error) {
	var node redis.Cmdable = c
	if cc, ok := c.(*redis.ClusterClient); ok {
		m, err := cc.MasterForKey(ctx, k.consumers)
		if err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		node = m
	}
	pattern := globEscape(k.processing) + "*"
	seen := make(map[string]struct{})
	var names []string
	var cursor uint64
	for {
		found, next, err := node.Scan(ctx, cursor, pattern, scanCount).Result()
		if err != nil {
			return nil, fmt.Errorf("scan: %w", err)
		}
		for _, key := range found {
			name, ok := strings.CutPrefix(key, k.processing)
			if _, dup := seen[name]; ok && !dup { // SCAN may return a key twice
				seen[name] = struct{}{}
				names = append(names, name)
			}
		}
		if next == 0 {
			return names, nil
		}
		cursor = next
		select {
		case <-stop:
			return names, nil
		default:
		}
	}
}

// sweepLoop adopts orphaned processing lists (see sweep.lua) when the
// consumer starts and then every sweepLeases leases, until stop.
func (q *reliable) sweepLoop(stop <-chan struct{}) {
	for d := time.Duration(0); runner.Sleep(stop, d); {
		n, err := q.sweep(stop)
		if err != nil {
			q.log.Warn("queue: sweep for orphaned processing lists failed; retried later",
				"error", fmt.Errorf("queue %s: sweep: %w", q.topic, err))
		} else if n > 0 {
			q.log.Warn("queue: found processing lists of unregistered consumers; they are reaped after the lease",
				"lists", n)
		}
		p := sweepLeases * q.cfg.lease
		d = p + rand.N(p/2)
	}
}

// sweep registers every orphaned processing list of the topic and returns
// how many it found.
func (q *reliable) sweep(stop <-chan struct{}) (int64, error) {
	k := q.keys
	names, err := processingNames(q.redisCtx, q.c, k, stop)
	if err != nil {
		return 0, err
	}
	var adopted int64
	for len(names) > 0 {
		batch := names[:min(len(names), sweepBatch)]
		names = names[len(batch):]
		keys := make([]string, 1, 1+len(batch))
		keys[0] = k.consumers
		args := make([]any, len(batch))
		for i, name := range batch {
			keys = append(keys, k.processingOf(name))
			args[i] = name
		}
		n, err := sweepScript.Run(q.redisCtx, q.c, keys, args...).Int64()
		if err != nil {
			return adopted, err
		}
		adopted += n
	}
	return adopted, nil
}
