package app

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker/queue"
	"github.com/redisbroker/broker/stream"
)

// Snapshot is what GET /stats returns: counts per pattern, read from Redis in
// one go, plus the producer's own publish counters. Published counts are
// this producer's since it started; consumed counts are what the consumers
// reported (see DefaultStatsKey) since the same moment.
type Snapshot struct {
	Time   time.Time   `json:"time"`
	Since  time.Time   `json:"since"`
	Queue  QueueStats  `json:"queue"`
	PubSub PubSubStats `json:"pubsub"`
	Stream StreamStats `json:"stream"`
}

// QueueStats describes the queue topic.
type QueueStats struct {
	Topic         string `json:"topic"`
	Published     int64  `json:"published"`
	PublishFailed int64  `json:"publish_failed"`
	Consumed      int64  `json:"consumed"`       // deliveries acked by a handler
	ConsumeFailed int64  `json:"consume_failed"` // deliveries a handler failed (retried or dead-lettered)
	Ready         int64  `json:"ready"`
	Processing    int64  `json:"processing"`
	Delayed       int64  `json:"delayed"`
	Dead          int64  `json:"dead"`
	Consumers     int64  `json:"consumers"`
}

// PubSubStats describes the pubsub channel.
type PubSubStats struct {
	Topic         string `json:"topic"`
	Published     int64  `json:"published"`
	PublishFailed int64  `json:"publish_failed"`
	Consumed      int64  `json:"consumed"` // summed over subscribers
	ConsumeFailed int64  `json:"consume_failed"`
	Subscribers   int64  `json:"subscribers"`
}

// StreamStats describes the stream.
type StreamStats struct {
	Topic         string        `json:"topic"`
	Published     int64         `json:"published"`
	PublishFailed int64         `json:"publish_failed"`
	Consumed      int64         `json:"consumed"` // summed over the groups below
	ConsumeFailed int64         `json:"consume_failed"`
	Length        int64         `json:"length"`
	Groups        []StreamGroup `json:"groups"`
}

// StreamGroup describes one consumer group; Lag is -1 when it cannot be
// told.
type StreamGroup struct {
	Name          string `json:"name"`
	Consumers     int64  `json:"consumers"`
	Pending       int64  `json:"pending"`
	Lag           int64  `json:"lag"`
	Consumed      int64  `json:"consumed"`
	ConsumeFailed int64  `json:"consume_failed"`
}

// Counter kinds in DefaultStatsKey.
const (
	statAcked  = "acked"
	statFailed = "failed"
)

// statsField names the DefaultStatsKey field a consumer of pattern m on
// topic (and, for streams, in group) adds its kind of count to: one field
// per pattern, topic and group, so consumers of other topics never add to
// the demo's counts. Topic and group are quoted, which keeps the names
// unambiguous whatever they contain.
func statsField(kind string, m Mode, topic, group string) string {
	b := make([]byte, 0, 16+len(topic)+len(group))
	b = append(b, kind...)
	b = append(b, ' ')
	b = append(b, m...)
	b = append(b, ' ')
	b = strconv.AppendQuote(b, topic)
	if m == Stream {
		b = append(b, ' ')
		b = strconv.AppendQuote(b, group)
	}
	return string(b)
}

// lagScanLimit bounds how many entries Snapshot reads to count a group's
// lag itself (see Snapshot); past it the lag is reported as unknown.
const lagScanLimit = 1000

// Stats reads the state of the demo's topics.
type Stats struct {
	client redis.UniversalClient
	topics Topics
	queue  *queue.Inspector
	stream *stream.Inspector

	mu       sync.Mutex
	since    time.Time
	baseline map[string]int64 // DefaultStatsKey when the producer started; nil until read
}

// NewStats returns a Stats for the topics.
func NewStats(c redis.UniversalClient, t Topics) *Stats {
	return &Stats{client: c, topics: t.withDefaults(), queue: queue.NewInspector(c), stream: stream.NewInspector(c), since: time.Now().UTC()}
}

// Baseline reads the consumers' counters as they are now: Snapshot reports
// consumption since then, which is what the producer's own published counts
// cover too (the counters in Redis outlive every process). When Redis
// cannot be read, the first successful Snapshot takes the baseline instead.
func (s *Stats) Baseline(ctx context.Context) {
	all, err := s.client.HGetAll(ctx, DefaultStatsKey).Result()
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.baseline = parseCounts(all)
	s.since = time.Now().UTC()
}

func parseCounts(all map[string]string) map[string]int64 {
	out := make(map[string]int64, len(all))
	for k, v := range all {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// Snapshot reads every count. published and failed are the producer's
// counters, indexed like Modes.
func (s *Stats) Snapshot(ctx context.Context, published, failed [numModes]int64) (Snapshot, error) {
	all, err := s.client.HGetAll(ctx, DefaultStatsKey).Result()
	if err != nil {
		return Snapshot{}, err
	}
	counts := parseCounts(all)
	s.mu.Lock()
	if s.baseline == nil {
		s.baseline, s.since = counts, time.Now().UTC()
	}
	base, since := s.baseline, s.since
	s.mu.Unlock()
	count := func(kind string, m Mode, topic, group string) int64 {
		f := statsField(kind, m, topic, group)
		return max(0, counts[f]-base[f])
	}
	snap := Snapshot{Time: time.Now().UTC(), Since: since}

	t := s.topics.Queue
	q, err := s.queue.Stats(ctx, t)
	if err != nil {
		return snap, err
	}
	snap.Queue = QueueStats{
		Topic: t, Published: published[0], PublishFailed: failed[0],
		Consumed: count(statAcked, Queue, t, ""), ConsumeFailed: count(statFailed, Queue, t, ""),
		Ready: q.Ready, Processing: q.Processing, Delayed: q.Delayed, Dead: q.Dead, Consumers: q.Consumers,
	}

	t = s.topics.PubSub
	subs, err := s.client.PubSubNumSub(ctx, t).Result()
	if err != nil {
		return snap, err
	}
	snap.PubSub = PubSubStats{
		Topic: t, Published: published[1], PublishFailed: failed[1],
		Consumed: count(statAcked, PubSub, t, ""), ConsumeFailed: count(statFailed, PubSub, t, ""),
		Subscribers: subs[t],
	}

	t = s.topics.Stream
	snap.Stream = StreamStats{Topic: t, Published: published[2], PublishFailed: failed[2], Groups: []StreamGroup{}}
	if snap.Stream.Length, err = s.stream.Len(ctx, t); err != nil {
		return snap, err
	}
	groups, err := s.stream.Groups(ctx, t)
	if err != nil {
		return snap, err
	}
	slices.SortFunc(groups, func(a, b stream.GroupInfo) int { return strings.Compare(a.Name, b.Name) })
	for _, g := range groups {
		lag := g.Lag
		// Redis reports -1 when it cannot tell; miniredis (the embedded
		// Redis) always reports the stream's length. Either way, count the
		// entries after the last one delivered to the group, up to a bound.
		if lag < 0 || (lag > 0 && lag == snap.Stream.Length && g.LastDeliveredID != "0-0") {
			if lag, err = s.countAfter(ctx, t, g.LastDeliveredID); err != nil {
				return snap, err
			}
		}
		sg := StreamGroup{
			Name: g.Name, Consumers: g.Consumers, Pending: g.Pending, Lag: lag,
			Consumed: count(statAcked, Stream, t, g.Name), ConsumeFailed: count(statFailed, Stream, t, g.Name),
		}
		snap.Stream.Consumed += sg.Consumed
		snap.Stream.ConsumeFailed += sg.ConsumeFailed
		snap.Stream.Groups = append(snap.Stream.Groups, sg)
	}
	return snap, nil
}

// countAfter counts the entries of topic after id, or returns -1 when there
// are more than lagScanLimit.
func (s *Stats) countAfter(ctx context.Context, topic, id string) (int64, error) {
	entries, err := s.client.XRangeN(ctx, topic, "("+id, "+", lagScanLimit+1).Result()
	if err != nil {
		return 0, err
	}
	if len(entries) > lagScanLimit {
		return -1, nil
	}
	return int64(len(entries)), nil
}
