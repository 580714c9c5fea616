package batch

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkDoIdle measures a call that finds no flush in progress. With a
// ctx that can end, the flush runs in a goroutine of its own so that the
// caller can return on its ctx; with one that cannot, it runs inline.
func BenchmarkDoIdle(b *testing.B) {
	ctxs := map[string]context.Context{
		"cancellable": b.Context(),
		"background":  context.Background(),
	}
	for name, ctx := range ctxs {
		b.Run(name, func(b *testing.B) {
			c := New(func(context.Context, []int) []error { return nil }, Options{})
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Do(ctx, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDoParallel simulates a Redis round trip of about 20µs per flush
// and reports how many items each flush carried.
func BenchmarkDoParallel(b *testing.B) {
	var flushes, items atomic.Int64
	c := New(func(_ context.Context, batch []int) []error {
		flushes.Add(1)
		items.Add(int64(len(batch)))
		roundTrip(20 * time.Microsecond)
		return nil
	}, Options{})
	// Publishers mostly wait on the network, so run many per CPU.
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := c.Do(ctx, 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(items.Load())/float64(flushes.Load()), "items/flush")
	b.ReportMetric(float64(flushes.Load())/b.Elapsed().Seconds(), "flushes/s")
}

// roundTrip waits about d while letting other goroutines run. time.Sleep is
// no use here: below a millisecond the runtime's poller rounds it up to ~1ms
// when every P is idle, which would simulate a far slower server.
func roundTrip(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
		runtime.Gosched()
	}
}
