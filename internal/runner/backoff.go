package runner

import (
	"math/rand/v2"
	"time"
)

// Backoff computes exponential delays with full jitter, used for retrying
// background Redis errors (a fetch loop while Redis is down) and handler
// retries.
type Backoff struct {
	Min, Max time.Duration
}

// Delay returns the delay before retry number n (n >= 1): a random duration
// in [d/2, d] where d = Min * 2^(n-1) capped at Max. Half the range is kept
// so a retry is never immediate, and the other half spreads a herd of
// consumers that failed together.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Min
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Sleep waits for d or until stop is closed. It reports whether the full
// delay elapsed.
func Sleep(stop <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}
