package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/redisbroker/broker"
)

// ErrInterrupted is returned by a binary's run when a signal stopped it
// before it finished its work (a load run cut short, a drain forced by a
// second signal). Exit turns it into status 130, the shell's code for an
// interrupt.
var ErrInterrupted = errors.New("interrupted")

// Exit returns the process status for run's error, printing the error (if
// any) after the binary's name on w: 0 for nil and for -h (flag.ErrHelp,
// whose usage the flag package already printed), 130 for ErrInterrupted, 1
// otherwise.
func Exit(name string, err error, w io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrInterrupted):
		fmt.Fprintf(w, "%s: %v\n", name, err)
		return 130
	default:
		fmt.Fprintf(w, "%s: %v\n", name, err)
		return 1
	}
}

// Signals is the binaries' stop protocol: the first of the signals asks for
// a graceful stop (Graceful is cancelled), a second one forces it (Force is
// cancelled), the way a second Ctrl-C hurries a draining server.
type Signals struct {
	Graceful context.Context
	Force    context.Context

	ch   chan os.Signal
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NotifySignals starts watching sigs. Stop it with Stop.
func NotifySignals(sigs ...os.Signal) *Signals {
	graceful, stopGraceful := context.WithCancel(context.Background())
	force, stopForce := context.WithCancel(context.Background())
	s := &Signals{Graceful: graceful, Force: force, ch: make(chan os.Signal, 2), done: make(chan struct{})}
	signal.Notify(s.ch, sigs...)
	s.wg.Go(func() {
		defer stopGraceful()
		defer stopForce()
		n := 0
		for {
			select {
			case <-s.ch:
				n++
				if n == 1 {
					stopGraceful()
					continue
				}
				stopForce()
				return
			case <-s.done:
				return
			}
		}
	})
	return s
}

// Stop stops watching, restores the default handling of the signals and
// waits for the watching goroutine. Safe to call more than once.
func (s *Signals) Stop() {
	s.once.Do(func() {
		signal.Stop(s.ch)
		close(s.done)
		s.wg.Wait()
	})
}

// hardStopWait bounds how long Drain waits, after a hard stop, for the
// subscriptions' goroutines to return (handlers see their context
// cancelled; what was fetched and not started is still handed back).
const hardStopWait = 3 * time.Second

// Drain stops subs gracefully (Shutdown, all at once) and waits for them
// within timeout. If timeout passes, or force ends first (a second signal),
// it makes the hard stop: Shutdown cancels the handlers' context, and
// cancelSubscribe cancels the context the subscriptions were started with;
// then it waits a little for them to finish. It returns nil after a
// graceful stop, an error wrapping ErrInterrupted when forced, another
// error on timeout.
func Drain(force context.Context, timeout time.Duration, cancelSubscribe context.CancelFunc, subs ...broker.Subscription) error {
	ctx, cancel := context.WithTimeout(force, timeout)
	defer cancel()
	errs := make([]error, len(subs))
	var wg sync.WaitGroup
	for i, s := range subs {
		wg.Go(func() { errs[i] = s.Shutdown(ctx) })
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		return nil
	}
	cancelSubscribe()
	wait, stopWait := context.WithTimeout(context.Background(), hardStopWait)
	defer stopWait()
	for _, s := range subs {
		select {
		case <-s.Done():
		case <-wait.Done():
		}
	}
	if force.Err() != nil {
		return fmt.Errorf("forced stop (second signal): in-flight handlers were cancelled: %w", ErrInterrupted)
	}
	return fmt.Errorf("graceful stop: in-flight handlers did not finish within %s and were cancelled: %w", timeout, err)
}
