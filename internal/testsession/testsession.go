// Package testsession runs a trace or latency session in a test: a live
// name resolver, the session in a goroutine, a wait until its programs are
// attached, and a stop that waits for it, also when the test fails.
package testsession

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Session is one running session.
type Session struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	names  *resolve.Resolver
	once   sync.Once
}

// Start starts a resolver and run(ctx, names, ready) in a goroutine, and
// returns once run has called ready; it fails the test when run ends
// first or is not ready in time (privtest.ReadyTimeout). The session is stopped when the test
// ends.
func Start(t testing.TB, run func(ctx context.Context, names *resolve.Resolver, ready func()) error) *Session {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	names, err := resolve.New(ctx, resolve.Options{})
	if err != nil {
		cancel()
		t.Fatalf("resolver: %v", err)
	}
	s := &Session{t: t, cancel: cancel, done: make(chan struct{}), names: names}
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		defer close(s.done)
		s.err = run(ctx, names, func() { readyOnce.Do(func() { close(ready) }) })
	}()
	t.Cleanup(func() { s.Stop() })
	select {
	case <-ready:
	case <-s.done:
		t.Fatalf("session ended before it was ready: %v", s.err)
	case <-time.After(privtest.ReadyTimeout()):
		t.Fatalf("session not ready after %v", privtest.ReadyTimeout())
	}
	return s
}

// Names is the session's resolver.
func (s *Session) Names() *resolve.Resolver { return s.names }

// Stop ends the session, waits for it and closes the resolver; it returns
// the session's error. Safe to call more than once.
func (s *Session) Stop() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		s.names.Close()
	})
	return s.err
}
