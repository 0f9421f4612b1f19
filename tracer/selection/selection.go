// Package selection says which packets a trace or latency session tracks
// and keeps the tracer's in-kernel filters equal to it: the selected
// namespaces (and the addresses their interfaces have right now), or
// devices, with namespaces coming and going while the session runs
// (containers starting and stopping).
package selection

import (
	"context"
	"net/netip"
	"sync"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Device names one interface to track.
type Device struct {
	Netns   uint32
	Ifindex int
}

// NetnsChange adds or removes a namespace from the selection while a
// session runs (containers starting and stopping).
type NetnsChange struct {
	Inode    uint32
	Selected bool
}

// Selection is what a session looks at. The zero value selects every
// packet in every namespace.
type Selection struct {
	// Netns selects packets seen in these namespaces or addressed to or from them.
	Netns []uint32
	// Devices selects packets seen on these interfaces (instead of whole namespaces).
	Devices []Device
	// Dynamic, when not nil, adds and removes namespaces while the session
	// runs; packets are then filtered by namespace even while none is selected.
	Dynamic <-chan NetnsChange
}

// FilterKinds says which in-kernel filters the selection needs: devices
// when interfaces are named, else namespaces and their addresses when
// namespaces are (or may become, with a dynamic feed) selected, else none.
func (s Selection) FilterKinds() loader.FilterKind {
	switch {
	case len(s.Devices) > 0:
		return loader.FilterDev
	case len(s.Netns) > 0 || s.Dynamic != nil:
		return loader.FilterNetns | loader.FilterAddr
	}
	return 0
}

// Resolver is what a session needs from the name resolver: names, the
// links (and addresses) of a namespace, a rescan on demand and a signal
// when its picture changed.
type Resolver interface {
	resolve.Names
	Links(netns uint32) []resolve.Link
	Refresh()
	Changes() <-chan struct{}
}

// Filters are the in-kernel filters a selection sets.
type Filters interface {
	SelectNetns(inode uint32, on bool) error
	SelectDevice(netns uint32, ifindex int, on bool) error
	SelectAddr(a netip.Addr, on bool) error
}

// Follower keeps a tracer's filters equal to a selection: the namespaces
// selected now, and the addresses their interfaces have now. It owns one
// goroutine, stopped by Close.
type Follower struct {
	f     Filters
	names Resolver
	netns map[uint32]bool
	// what the kernel maps hold
	inKernelNetns map[uint32]bool
	inKernelAddrs map[netip.Addr]bool

	failed chan error
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Follow sets the filters to the selection and, until ctx is done or Close,
// follows its dynamic feed and the resolver's changes. The filters are set
// when it returns.
func Follow(ctx context.Context, f Filters, names Resolver, sel Selection) (*Follower, error) {
	fl := &Follower{
		f: f, names: names,
		netns:         map[uint32]bool{},
		inKernelNetns: map[uint32]bool{},
		inKernelAddrs: map[netip.Addr]bool{},
		failed:        make(chan error, 1),
	}
	for _, d := range sel.Devices {
		if err := f.SelectDevice(d.Netns, d.Ifindex, true); err != nil {
			return nil, err
		}
	}
	for _, ns := range sel.Netns {
		fl.set(ns, true)
	}
	if err := fl.sync(); err != nil {
		return nil, err
	}
	ctx, fl.cancel = context.WithCancel(ctx)
	fl.wg.Add(1)
	go fl.run(ctx, sel.Dynamic)
	return fl, nil
}

func (fl *Follower) run(ctx context.Context, dynamic <-chan NetnsChange) {
	defer fl.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case ch, ok := <-dynamic:
			if !ok {
				dynamic = nil
				continue
			}
			fl.set(ch.Inode, ch.Selected)
		case <-fl.names.Changes():
		}
		if err := fl.sync(); err != nil {
			fl.failed <- err
			return
		}
	}
}

// Failed delivers the error that stopped the following (a filter map that
// could not be updated).
func (fl *Follower) Failed() <-chan error { return fl.failed }

// Close stops following and waits for the goroutine.
func (fl *Follower) Close() {
	fl.cancel()
	fl.wg.Wait()
}

// set selects (or unselects) a namespace; sync applies it.
func (fl *Follower) set(inode uint32, on bool) {
	if on {
		fl.netns[inode] = true
	} else {
		delete(fl.netns, inode)
	}
}

// sync makes the kernel's filters match the selection and the current
// addresses of the selected namespaces.
func (fl *Follower) sync() error {
	wantAddrs := map[netip.Addr]bool{}
	for ns := range fl.netns {
		if !fl.inKernelNetns[ns] {
			if err := fl.f.SelectNetns(ns, true); err != nil {
				return err
			}
			fl.inKernelNetns[ns] = true
		}
		for _, l := range fl.names.Links(ns) {
			for _, p := range l.Addrs {
				if !p.Addr().IsLoopback() {
					wantAddrs[p.Addr()] = true
				}
			}
		}
	}
	for ns := range fl.inKernelNetns {
		if !fl.netns[ns] {
			if err := fl.f.SelectNetns(ns, false); err != nil {
				return err
			}
			delete(fl.inKernelNetns, ns)
		}
	}
	for a := range wantAddrs {
		if !fl.inKernelAddrs[a] {
			if err := fl.f.SelectAddr(a, true); err != nil {
				return err
			}
			fl.inKernelAddrs[a] = true
		}
	}
	for a := range fl.inKernelAddrs {
		if !wantAddrs[a] {
			if err := fl.f.SelectAddr(a, false); err != nil {
				return err
			}
			delete(fl.inKernelAddrs, a)
		}
	}
	return nil
}
