package trace

import (
	"fmt"
	"sync"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Attachments keeps the tcx engine's programs on every device of every
// namespace the resolver knows: a packet is tracked from its first hop
// where it matches the selection and followed everywhere after, so every
// device a path can cross carries the programs (an untracked packet costs
// them one or two map lookups). Devices that appear while tracing (a new
// container) are attached when the resolver reports them, and detached when
// they go. Latency sessions use it too. With the tracepoint engine it does
// nothing.
type Attachments struct {
	tr    *loader.Tracer
	names Resolver
	// what is attached: the namespace path and interface name it was
	// attached under, so that a namespace inode or ifindex reused by
	// another namespace or device is attached again
	have map[loader.DevKey]attachedAs
	// Warn receives attach failures after the first Sync (which returns them).
	Warn   func(string)
	synced bool
	mu     sync.Mutex // Follow's goroutine against SyncNow
}

type attachedAs struct {
	path, name string
}

// NewAttachments attaches nothing yet; Sync does.
func NewAttachments(tr *loader.Tracer, names Resolver) *Attachments {
	return &Attachments{tr: tr, names: names, have: map[loader.DevKey]attachedAs{}}
}

// Sync attaches the devices the resolver knows and the tracer does not
// carry yet and detaches those that are gone. The first Sync returns an
// attach failure; later ones warn and go on with the other devices.
func (a *Attachments) Sync() error {
	if a.tr.Engine() != loader.EngineTCX {
		return nil
	}
	want := map[loader.DevKey]attachedAs{}
	byNs := map[uint32][]resolve.Link{}
	nss := a.names.Namespaces()
	paths := map[uint32]string{}
	for _, ns := range nss {
		paths[ns.Inode] = ns.Path
		links := a.names.Links(ns.Inode)
		byNs[ns.Inode] = links
		for _, l := range links {
			want[loader.DevKey{Netns: ns.Inode, Ifindex: l.Index}] = attachedAs{ns.Path, l.Name}
		}
	}
	// Forget first: a device that moved between namespaces keeps its links
	// (they follow it) and is found carrying them in its new one.
	for k, as := range a.have {
		if w, ok := want[k]; !ok || w != as {
			if err := a.tr.ForgetDevice(k); err != nil {
				a.warn(fmt.Sprintf("detach tcx programs from ifindex %d in netns %d: %v", k.Ifindex, k.Netns, err))
			}
			delete(a.have, k)
		}
	}
	if err := a.tr.PruneMoved(); err != nil {
		a.warn(fmt.Sprintf("close tcx links of removed devices: %v", err))
	}
	var first error
	for _, ns := range nss {
		var todo []int
		for _, l := range byNs[ns.Inode] {
			if _, ok := a.have[loader.DevKey{Netns: ns.Inode, Ifindex: l.Index}]; !ok {
				todo = append(todo, l.Index)
			}
		}
		if len(todo) == 0 {
			continue
		}
		done, err := a.tr.AttachDevices(loader.NetnsRef{Inode: ns.Inode, Path: paths[ns.Inode]}, todo)
		for _, idx := range done {
			k := loader.DevKey{Netns: ns.Inode, Ifindex: idx}
			a.have[k] = want[k]
		}
		if err != nil {
			if !a.synced && first == nil {
				first = err
			}
			a.warn(err.Error())
		}
	}
	a.synced = true
	return first
}

// Follow attaches new devices as soon as the resolver reports a change,
// on a goroutine of its own (not between ring buffer reads), and passes each
// change on to the returned channel once the devices are attached. The
// caller must not call Sync itself until stop returns; stop waits for the
// goroutine. With the tracepoint engine changes are passed on as they come.
func (a *Attachments) Follow(changes <-chan struct{}) (out <-chan struct{}, stop func()) {
	fwd := make(chan struct{}, 1)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-changes:
			}
			a.mu.Lock()
			_ = a.Sync() // after the first Sync, failures are warnings
			a.mu.Unlock()
			select {
			case fwd <- struct{}{}:
			default:
			}
		}
	}()
	var once sync.Once
	return fwd, func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
}

// SyncNow is Sync for a caller while Follow runs (a namespace just selected).
func (a *Attachments) SyncNow() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Sync()
}

func (a *Attachments) warn(msg string) {
	if a.Warn != nil && a.synced {
		a.Warn(msg)
	}
}
