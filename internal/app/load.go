package app

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redisbroker/broker"
)

// LoadConfig configures the producer's CLI mode.
type LoadConfig struct {
	Mode        Mode
	Topic       string
	N           int64   // messages to publish
	Rate        float64 // messages per second over all publishers; 0 = as fast as possible
	Size        int     // payload bytes
	Batch       int     // messages per Publish call
	Concurrency int     // concurrent publishers
	Raw         bool
	Out         io.Writer
}

// LoadResult is what a load run did.
type LoadResult struct {
	Published int64
	Errors    int64
	Elapsed   time.Duration
}

func (r LoadResult) String() string {
	return fmt.Sprintf("published=%d errors=%d elapsed=%s rate=%.0f msgs/s",
		r.Published, r.Errors, r.Elapsed.Round(time.Millisecond), float64(r.Published)/r.Elapsed.Seconds())
}

// Load publishes cfg.N messages and reports progress once a second on long
// runs. It stops early, with what was done, when ctx ends, and then returns
// ctx.Err().
func Load(ctx context.Context, c redis.UniversalClient, cfg LoadConfig) (LoadResult, error) {
	if cfg.Raw && cfg.Mode == Stream {
		return LoadResult{}, fmt.Errorf("-raw: %w: stream entries are field maps that any client reads; raw applies to queue and pubsub", broker.ErrInvalidOption)
	}
	if cfg.Topic == "" {
		cfg.Topic = Topics{}.For(cfg.Mode)
	}
	pub, err := NewPublisher(c, cfg.Mode, cfg.Raw)
	if err != nil {
		return LoadResult{}, err
	}
	return load(ctx, pub, cfg)
}

func load(ctx context.Context, pub broker.Publisher, cfg LoadConfig) (LoadResult, error) {
	cfg.Batch = max(cfg.Batch, 1)
	cfg.Concurrency = max(cfg.Concurrency, 1)
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	payload := textPayload(cfg.Size)

	var next, published, failed atomic.Int64
	start := time.Now()
	pace := newPacer(cfg.Rate, start)

	var progressWG sync.WaitGroup
	progressCtx, stopProgress := context.WithCancel(ctx)
	progressWG.Go(func() { progress(progressCtx, cfg.Out, &published, cfg.N, start) })
	defer func() {
		stopProgress()
		progressWG.Wait()
	}()

	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	for range cfg.Concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				end := next.Add(int64(cfg.Batch))
				n := int64(cfg.Batch) - max(0, end-cfg.N)
				if n <= 0 {
					return
				}
				if !pace.wait(ctx, end-int64(cfg.Batch)) {
					return
				}
				msgs := make([]*broker.Message, n)
				for i := range msgs {
					msgs[i] = broker.NewMessage(payload)
				}
				// Not cancelled with ctx: an interrupt lets the batch in
				// flight finish (the client's timeouts bound it), so the
				// summary counts exactly what Redis accepted.
				if err := pub.Publish(context.WithoutCancel(ctx), cfg.Topic, msgs...); err != nil {
					failed.Add(n)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				published.Add(n)
			}
		})
	}
	wg.Wait()
	res := LoadResult{Published: published.Load(), Errors: failed.Load(), Elapsed: time.Since(start)}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if firstErr != nil {
		return res, fmt.Errorf("publish: %w", firstErr)
	}
	return res, nil
}

// textPayload returns n random letters and digits: a consumer prints a
// payload as text, and random bytes would print as escapes.
func textPayload(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return b
}

func progress(ctx context.Context, w io.Writer, done *atomic.Int64, total int64, start time.Time) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n := done.Load()
			fmt.Fprintf(w, "published %d/%d (%.0f msgs/s)\n", n, total, float64(n)/time.Since(start).Seconds())
		}
	}
}

// pacer spaces messages evenly at rate per second from start; the k-th
// message is due at start + k/rate, so pauses never accumulate into drift.
type pacer struct {
	rate  float64
	start time.Time
}

func newPacer(rate float64, start time.Time) pacer { return pacer{rate, start} }

func (p pacer) wait(ctx context.Context, k int64) bool {
	if p.rate <= 0 {
		return true
	}
	due := p.start.Add(time.Duration(float64(k) / p.rate * float64(time.Second)))
	d := time.Until(due)
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
