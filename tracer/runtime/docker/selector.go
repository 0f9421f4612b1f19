package docker

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// Change says that a selected container's namespace joined or left the
// selection.
type Change struct {
	// Added is true when the container started (or was running when the
	// Selector began), false when it stopped.
	Added bool
	// Inode is the container's network namespace; 0 for --network host
	// (the container shares the host namespace: Container.NetworkMode
	// says "host").
	Inode     uint32
	Container runtime.Container
}

// Selector follows the network namespaces of the containers named by a
// set of references (names, IDs or ID prefixes), including containers that
// do not exist or are not running yet: when one starts, its namespace is
// added; when it stops, removed; when it is started again (even recreated
// under the same name), added again. It is meant for `trace --container`.
//
// It works with any runtime.Runtime.
type Selector struct {
	refs   []string
	mu     sync.Mutex
	active map[string]runtime.Container // by container ID
	out    chan Change
	synced chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// NewSelector checks every reference with rt.Lookup and starts following
// them. An ambiguous ID prefix or an unreachable runtime is an error; an
// unknown name is not (the container may be created later): Pending lists
// those. Changes for containers running now arrive first, then Synced is
// closed.
func NewSelector(ctx context.Context, rt runtime.Runtime, refs ...string) (*Selector, error) {
	s := &Selector{
		active: map[string]runtime.Container{},
		out:    make(chan Change, 64),
		synced: make(chan struct{}),
		done:   make(chan struct{}),
	}
	for _, ref := range refs {
		ref = strings.TrimPrefix(strings.TrimSpace(ref), "/")
		if ref == "" {
			continue
		}
		_, err := rt.Lookup(ctx, ref)
		if err != nil && !errors.Is(err, runtime.ErrNotFound) {
			return nil, err
		}
		s.refs = append(s.refs, ref)
	}
	wctx, cancel := context.WithCancel(ctx)
	evs, err := rt.Watch(wctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s.cancel = cancel
	go s.run(wctx, evs)
	return s, nil
}

// Matches reports whether the container is selected by one of the references.
func (s *Selector) Matches(c runtime.Container) bool {
	for _, ref := range s.refs {
		if c.Name == ref || c.ID == ref || (isHex(ref) && strings.HasPrefix(c.ID, ref)) {
			return true
		}
	}
	return false
}

func (s *Selector) run(ctx context.Context, evs <-chan runtime.Event) {
	defer close(s.done)
	defer close(s.out)
	syncedOnce := sync.OnceFunc(func() { close(s.synced) })
	defer syncedOnce()
	for ev := range evs {
		c := ev.Container
		var ch Change
		switch ev.Kind {
		case runtime.Synced:
			syncedOnce()
			continue
		case runtime.ContainerStarted, runtime.ContainerUpdated:
			if !s.Matches(c) {
				continue
			}
			s.mu.Lock()
			prev, was := s.active[c.ID]
			s.active[c.ID] = c
			s.mu.Unlock()
			if was && prev.NetnsInode == c.NetnsInode {
				continue
			}
			ch = Change{Added: true, Inode: c.NetnsInode, Container: c}
		case runtime.ContainerStopped:
			s.mu.Lock()
			prev, was := s.active[c.ID]
			delete(s.active, c.ID)
			s.mu.Unlock()
			if !was {
				continue
			}
			prev.Running, prev.PID, prev.State = false, 0, c.State
			ch = Change{Added: false, Inode: prev.NetnsInode, Container: prev}
		default:
			continue
		}
		select {
		case s.out <- ch:
		case <-ctx.Done():
			return
		}
	}
}

// Changes delivers the selection's changes; closed after Close.
func (s *Selector) Changes() <-chan Change { return s.out }

// Synced is closed once the containers running at start have been sent.
func (s *Selector) Synced() <-chan struct{} { return s.synced }

// Active returns the selected containers that are running now, by inode.
func (s *Selector) Active() map[uint32]runtime.Container {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[uint32]runtime.Container, len(s.active))
	for _, c := range s.active {
		m[c.NetnsInode] = c
	}
	return m
}

// Pending returns the references that match no running container now.
func (s *Selector) Pending() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ref := range s.refs {
		found := false
		for _, c := range s.active {
			if c.Name == ref || c.ID == ref || (isHex(ref) && strings.HasPrefix(c.ID, ref)) {
				found = true
				break
			}
		}
		if !found {
			out = append(out, ref)
		}
	}
	return out
}

// Close stops following and waits for the goroutine to end.
func (s *Selector) Close() error {
	s.once.Do(func() {
		s.cancel()
		for range s.out { // unblock a pending send
		}
		<-s.done
	})
	return nil
}
