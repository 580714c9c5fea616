package stream

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
)

// Entry is one stream entry read by Replay.
type Entry struct {
	// ID is the stream entry ID: the position to replay from. Message.ID is
	// the message's own ID (the "id" field), or the entry ID for an entry
	// another client added without one.
	ID string
	// Message is the entry decoded as a delivery would decode it, with
	// Attempt 0: nothing was delivered.
	Message *broker.Message
}

// Replay reads up to count entries of topic from fromID to toID, both
// inclusive, in stream ID order (XRANGE), without a consumer group: nothing
// is acknowledged or marked delivered, so any number of replays can run
// beside the groups. fromID "" or "-" is the start of the stream, toID "" or
// "+" its end; prefix an ID with "(" to exclude it (Redis 6.2+). count <= 0
// reads the whole range, so bound it on a long stream, or use ReplayAll.
//
// Entries trimmed away (WithMaxLen, WithMinID, WithMaxAge) or deleted are
// gone; Replay cannot tell them from entries never added.
func Replay(ctx context.Context, c redis.UniversalClient, topic, fromID, toID string, count int) ([]Entry, error) {
	if topic == "" {
		return nil, fmt.Errorf("stream: replay: %w: empty topic", broker.ErrInvalidOption)
	}
	if c == nil {
		return nil, fmt.Errorf("stream: replay: %w: nil client", broker.ErrInvalidOption)
	}
	if fromID == "" {
		fromID = "-"
	}
	if toID == "" {
		toID = "+"
	}
	var (
		res []redis.XMessage
		err error
	)
	if count > 0 {
		res, err = c.XRangeN(ctx, topic, fromID, toID, int64(count)).Result()
	} else {
		res, err = c.XRange(ctx, topic, fromID, toID).Result()
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, wrapErr(topic, "replay", err)
	}
	out := make([]Entry, 0, len(res))
	for _, m := range res {
		out = append(out, Entry{ID: m.ID, Message: decodeEntry(topic, m.ID, m.Values)})
	}
	return out, nil
}

// replayPage is the page size of ReplayAll.
const replayPage = 512

// ReplayAll iterates over the entries of topic from fromID ("" for the
// start; inclusive, or exclusive with a "(" prefix) to the end, reading pages
// of XRANGE so that memory stays bounded on any stream length. Entries added
// while it runs are included until it reaches the end. It stops at the first
// error, which it yields with a zero Entry.
func ReplayAll(ctx context.Context, c redis.UniversalClient, topic, fromID string) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		from := fromID
		for {
			page, err := Replay(ctx, c, topic, from, "+", replayPage)
			if err != nil {
				yield(Entry{}, err)
				return
			}
			for _, e := range page {
				if !yield(e, nil) {
					return
				}
			}
			if len(page) < replayPage {
				return
			}
			from = "(" + page[len(page)-1].ID
		}
	}
}
