package selection

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Devices is what the tcx engine needs to carry its programs on devices;
// *loader.Tracer implements it.
type Devices interface {
	AttachNetns(ctx context.Context, sets []loader.NetnsDevices) []loader.NetnsAttached
	ForgetDevice(k loader.DevKey) error
	PruneMoved() error
}

// attachments keeps the tcx engine's programs on every device of every
// namespace the resolver knows: a packet is tracked from its first hop
// where it matches the selection and followed everywhere after, so every
// device a path can cross carries the programs (an untracked packet costs
// them one or two map lookups). Devices that appear while a session runs
// (a new container) are attached when the resolver reports them, and
// detached when they go. Only the Follower's goroutine calls sync after
// Follow returns.
type attachments struct {
	devs  Devices
	names Resolver
	// what is attached: the namespace path and interface name it was
	// attached under, so that a namespace inode or ifindex reused by
	// another namespace or device is attached again
	have   map[loader.DevKey]attachedAs
	warnFn func(string)
	synced bool
	// unattached counts the devices the resolver knew and the last sync
	// left without the programs (any goroutine may read it)
	unattached atomic.Int64
	// known is what the resolver listed at the last sync
	known map[loader.DevKey]bool
}

type attachedAs struct {
	path, name string
}

// sync attaches the devices the resolver knows and the tracer does not
// carry yet, only those only takes when it is not nil, and, on a full
// sync (only nil), detaches those that are gone. Until the first full
// sync it returns an attach failure; later ones warn and go on with the
// other devices. Once ctx is done it attaches no further device.
func (a *attachments) sync(ctx context.Context, only func(loader.DevKey) bool) error {
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
	if only == nil {
		// Forget first: a device that moved between namespaces keeps its
		// links (they follow it) and is found carrying them in its new one.
		for k, as := range a.have {
			if w, ok := want[k]; !ok || w != as {
				if err := a.devs.ForgetDevice(k); err != nil {
					a.warn(fmt.Sprintf("detach tcx programs from ifindex %d in netns %d: %v", k.Ifindex, k.Netns, err))
				}
				delete(a.have, k)
			}
		}
		if err := a.devs.PruneMoved(); err != nil {
			a.warn(fmt.Sprintf("close tcx links of removed devices: %v", err))
		}
	}
	var sets []loader.NetnsDevices
	for _, ns := range nss {
		var todo []int
		for _, l := range byNs[ns.Inode] {
			k := loader.DevKey{Netns: ns.Inode, Ifindex: l.Index}
			if _, ok := a.have[k]; !ok && (only == nil || only(k)) {
				todo = append(todo, l.Index)
			}
		}
		if len(todo) > 0 {
			sets = append(sets, loader.NetnsDevices{Netns: loader.NetnsRef{Inode: ns.Inode, Path: paths[ns.Inode]}, Ifindexes: todo})
		}
	}
	var first error
	for i, r := range a.devs.AttachNetns(ctx, sets) {
		for _, idx := range r.Ifindexes {
			k := loader.DevKey{Netns: sets[i].Netns.Inode, Ifindex: idx}
			a.have[k] = want[k]
		}
		if r.Err != nil {
			if !a.synced && first == nil {
				first = r.Err
			}
			a.warn(r.Err.Error())
		}
	}
	left := 0
	a.known = make(map[loader.DevKey]bool, len(want))
	for k := range want {
		a.known[k] = true
		if _, ok := a.have[k]; !ok {
			left++
		}
	}
	a.unattached.Store(int64(left))
	if only == nil {
		a.synced = true
	}
	return first
}

// firstDevices are the devices a packet of these namespaces crosses on
// its way out of them: every device of the namespaces, the far ends of
// their veths, and every device of those ends' namespaces that is not a
// veth (the bridges the ends are ports of, the host's uplinks, loopback).
// What is left out is the other containers' devices: a path from a
// selected container to another one lacks the last hops until they carry
// the programs too.
func (a *attachments) firstDevices(selected map[uint32]bool) func(loader.DevKey) bool {
	first := map[loader.DevKey]bool{}
	edges := map[uint32]bool{}
	for ns := range selected {
		for _, l := range a.names.Links(ns) {
			first[loader.DevKey{Netns: ns, Ifindex: l.Index}] = true
			if l.PeerNetns != 0 && l.PeerIndex != 0 {
				first[loader.DevKey{Netns: l.PeerNetns, Ifindex: l.PeerIndex}] = true
				edges[l.PeerNetns] = true
			}
		}
	}
	for ns := range edges {
		for _, l := range a.names.Links(ns) {
			if l.Kind != resolve.KindVeth {
				first[loader.DevKey{Netns: ns, Ifindex: l.Index}] = true
			}
		}
	}
	return func(k loader.DevKey) bool { return first[k] }
}

// fresh takes the devices the resolver did not list at the last sync.
func (a *attachments) fresh() func(loader.DevKey) bool {
	known := a.known
	return func(k loader.DevKey) bool { return !known[k] }
}

func (a *attachments) warn(msg string) {
	if a.warnFn != nil && a.synced {
		a.warnFn(msg)
	}
}
