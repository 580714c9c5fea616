package stream

// Stopping returns the channel closed when the Subscription stops fetching
// (Shutdown began, or the hard stop): tests wait on it instead of sleeping.
func Stopping(s *Subscription) <-chan struct{} { return s.r.Stopping() }
