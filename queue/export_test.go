package queue

import "github.com/redisbroker/broker"

// Stopping returns the channel closed once a subscription of this package
// began to stop (Shutdown or the hard stop), so that tests can wait for
// that moment instead of sleeping.
func Stopping(s broker.Subscription) <-chan struct{} { return s.(*subscription).r.Stopping() }
