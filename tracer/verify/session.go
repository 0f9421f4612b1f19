package verify

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hoptrace/hoptrace/tracer/nftrace"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/selection"
	"github.com/hoptrace/hoptrace/tracer/trace"
)

// session is one running trace whose paths go to whoever listens.
type session struct {
	names  trace.Resolver
	cancel context.CancelFunc
	done   chan struct{}
	err    error

	mu    sync.Mutex
	subs  map[int]func(path.Path)
	nextS int

	// rules marks probe packets for nf_tables tracing; nil when off.
	rules *nftrace.Tracer
}

// startSession starts a trace of the namespaces and returns once the
// programs are attached. With rules, probe packets are marked for
// nf_tables tracing so that a netfilter drop names its rule.
func (v *Verifier) startSession(ctx context.Context, inodes []uint32, rules bool) (*session, error) {
	if v.Names == nil {
		return nil, errors.New("verify: no name resolver")
	}
	run := v.Trace
	if run == nil {
		run = trace.Run
	}
	tctx, cancel := context.WithCancel(ctx)
	s := &session{names: v.Names, cancel: cancel, done: make(chan struct{}), subs: map[int]func(path.Path){}}
	ready := make(chan struct{})
	var once sync.Once
	cfg := trace.Config{
		Selection: selection.Selection{Netns: inodes},
		Ready:     func() { once.Do(func() { close(ready) }) },
		OnPath:    s.dispatch,
	}
	if rules {
		rt, err := nftrace.Open(nftrace.Options{Mode: nftrace.ModeProbes})
		if err != nil {
			if v.Warn != nil {
				v.Warn(err.Error() + "; drops keep their kernel reason")
			}
		} else {
			s.rules = rt
			cfg.Rules = rt
			if w := nftrace.LegacyWarning(); w != "" && v.Warn != nil {
				v.Warn(w)
			}
		}
	}
	go func() {
		defer close(s.done)
		_, s.err = run(tctx, cfg, v.Names)
	}()
	select {
	case <-ready:
		return s, nil
	case <-s.done:
		cancel()
		s.closeRules()
		if s.err == nil {
			s.err = errors.New("the trace ended before it was attached")
		}
		return nil, fmt.Errorf("start tracer: %w", s.err)
	case <-time.After(30 * time.Second):
		cancel()
		<-s.done
		s.closeRules()
		return nil, errors.New("start tracer: not attached after 30s")
	case <-ctx.Done():
		cancel()
		<-s.done
		s.closeRules()
		return nil, ctx.Err()
	}
}

func (s *session) dispatch(p path.Path) {
	s.mu.Lock()
	fns := make([]func(path.Path), 0, len(s.subs))
	for _, fn := range s.subs {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(p)
	}
}

// subscribe sends every path to fn until the returned function is called.
func (s *session) subscribe(fn func(path.Path)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextS
	s.nextS++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}
}

// alive reports an error if the trace stopped.
func (s *session) alive() error {
	select {
	case <-s.done:
		if s.err != nil {
			return s.err
		}
		return errors.New("the trace stopped")
	default:
		return nil
	}
}

func (s *session) close() {
	s.cancel()
	<-s.done
	s.closeRules()
}

func (s *session) closeRules() {
	if s.rules != nil {
		s.rules.Close()
		s.rules = nil
	}
}
