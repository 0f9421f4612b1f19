package docker

import (
	"context"
	"sync"

	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// Annotator names network namespaces after the containers that own them.
// It keeps an inode → container name cache, filled and pruned from the
// runtime's Watch stream; it implements resolve.Annotator. It is safe for
// concurrent use. Its goroutine ends, and is waited for, in Close.
//
// Although it lives here, it works with any runtime.Runtime.
type Annotator struct {
	mu      sync.RWMutex
	owners  map[uint32][]owner // inode -> containers in it, in start order
	byID    map[string]uint32  // container ID -> inode
	synced  chan struct{}
	subs    []chan runtime.Event
	cancel  context.CancelFunc
	done    chan struct{}
	closeMu sync.Once
}

type owner struct{ id, name string }

// NewAnnotator starts following rt's containers. The first names are known
// when Synced is closed (after the containers running at start were read).
func NewAnnotator(ctx context.Context, rt runtime.Runtime) (*Annotator, error) {
	wctx, cancel := context.WithCancel(ctx)
	evs, err := rt.Watch(wctx)
	if err != nil {
		cancel()
		return nil, err
	}
	a := &Annotator{
		owners: map[uint32][]owner{},
		byID:   map[string]uint32{},
		synced: make(chan struct{}),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go a.run(evs)
	return a, nil
}

func (a *Annotator) run(evs <-chan runtime.Event) {
	defer close(a.done)
	defer func() {
		a.mu.Lock()
		for _, s := range a.subs {
			close(s)
		}
		a.subs = nil
		a.mu.Unlock()
	}()
	syncedOnce := sync.OnceFunc(func() { close(a.synced) })
	defer syncedOnce()
	for ev := range evs {
		if ev.Kind == runtime.Synced {
			syncedOnce()
			continue
		}
		a.apply(ev)
	}
}

func (a *Annotator) apply(ev runtime.Event) {
	c := ev.Container
	a.mu.Lock()
	defer a.mu.Unlock()
	a.forget(c.ID)
	if ev.Kind != runtime.ContainerStopped && c.NetnsInode != 0 {
		a.owners[c.NetnsInode] = append(a.owners[c.NetnsInode], owner{c.ID, c.Name})
		a.byID[c.ID] = c.NetnsInode
	}
	for _, s := range a.subs {
		select {
		case s <- ev:
		default: // a slow subscriber loses events rather than block names
		}
	}
}

func (a *Annotator) forget(id string) {
	ino, ok := a.byID[id]
	if !ok {
		return
	}
	delete(a.byID, id)
	list := a.owners[ino]
	for i, o := range list {
		if o.id == id {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(a.owners, ino)
	} else {
		a.owners[ino] = list
	}
}

// NetnsOwner implements resolve.Annotator: the name of the container
// whose namespace this is (the first one started in it, when containers
// share a namespace with --network container:X).
func (a *Annotator) NetnsOwner(inode uint32) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if l := a.owners[inode]; len(l) > 0 {
		return l[0].name, true
	}
	return "", false
}

// Owners returns the names of all containers in the namespace, in start order.
func (a *Annotator) Owners(inode uint32) []string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	var out []string
	for _, o := range a.owners[inode] {
		out = append(out, o.name)
	}
	return out
}

// Inodes returns a snapshot of inode → container name.
func (a *Annotator) Inodes() map[uint32]string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	m := make(map[uint32]string, len(a.owners))
	for ino, l := range a.owners {
		m[ino] = l[0].name
	}
	return m
}

// Synced is closed once the containers running at start are known.
func (a *Annotator) Synced() <-chan struct{} { return a.synced }

// Subscribe returns a channel that receives every event after the
// Annotator has applied it (so NetnsOwner already answers for it). It is
// buffered; a subscriber that falls more than 64 events behind loses
// events. It is closed when the Annotator stops.
func (a *Annotator) Subscribe() <-chan runtime.Event {
	ch := make(chan runtime.Event, 64)
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.done:
		close(ch)
	default:
		a.subs = append(a.subs, ch)
	}
	return ch
}

// Close stops following the runtime and waits for the goroutine to end.
// It does not close the runtime.
func (a *Annotator) Close() error {
	a.closeMu.Do(func() {
		a.cancel()
		<-a.done
	})
	return nil
}
