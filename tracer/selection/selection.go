// Package selection says which packets a trace or latency session tracks
// and keeps the tracer's in-kernel filters equal to it: the selected
// namespaces (and the addresses their interfaces have right now), or
// devices, with namespaces coming and going while the session runs
// (containers starting and stopping).
package selection

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

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
	// Ports are the host ports published for the namespace's container:
	// packets to them are selected from their first hop on the host,
	// before DNAT gives them the container's address.
	Ports []Port
}

// Port is a TCP or UDP destination port.
type Port struct {
	Proto uint8 // 6 (TCP) or 17 (UDP)
	Port  uint16
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
	case s.Dynamic != nil:
		return loader.FilterNetns | loader.FilterAddr | loader.FilterPort
	case len(s.Netns) > 0:
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
	Namespaces() []resolve.Namespace
	Refresh()
	Changes() <-chan struct{}
}

// Filters are the in-kernel filters a selection sets.
type Filters interface {
	SelectNetns(inode uint32, on bool) error
	SelectDevice(netns uint32, ifindex int, on bool) error
	SelectAddr(a netip.Addr, on bool) error
	SelectPort(proto uint8, port uint16, on bool) error
}

// Options are what a session adds to following a selection.
type Options struct {
	// Devices, when set, carries the tcx engine's programs on every device
	// of every namespace the resolver knows, attached before the filters
	// follow each change (nil with the tracepoint engine).
	Devices Devices
	// Warn receives attach failures after the first (which Follow returns),
	// and says when devices are attached after Follow returns.
	Warn func(string)
	// ForegroundDevices bounds the devices Follow attaches before it
	// returns beyond those a selected packet crosses first (see
	// firstDevices); when more are waiting, they are attached after it
	// returns, by the Follower's goroutine. The kernel commits tcx links one
	// at a time with an RCU grace period each (~15 ms here): a host with
	// hundreds of containers would otherwise wait many seconds before the
	// first selected packet is seen. 0: DefaultForegroundDevices.
	ForegroundDevices int
	// OnAddrs, when set, receives the selection's addresses whenever they
	// change (trace --rules keeps its nftables sets equal to them).
	OnAddrs func([]netip.Addr) error
}

// DefaultForegroundDevices is Options.ForegroundDevices' default: one to
// two seconds of tcx commits.
const DefaultForegroundDevices = 64

// TracerOptions are the options for following a selection on tr: its
// devices carry the programs under the tcx engine.
func TracerOptions(tr *loader.Tracer, warn func(string)) Options {
	opts := Options{Warn: warn}
	if tr.Engine() == loader.EngineTCX {
		opts.Devices = tr
	}
	return opts
}

// ErrNothingLeft ends a session (through Failed) whose selection named
// namespaces, and every one of them went away: nothing it selected can be
// seen any more, and an inode the kernel gives to a new namespace is not
// the one selected.
var ErrNothingLeft = errors.New("nothing selected is left to trace")

// Follower keeps a tracer's filters equal to a selection: the namespaces
// selected now, and the addresses their interfaces have now. It owns one
// goroutine, stopped by Close.
type Follower struct {
	f       Filters
	names   Resolver
	att     *attachments
	onAddrs func([]netip.Addr) error
	netns   map[uint32]bool
	// the namespaces of the selected devices
	devNetns map[uint32]bool
	devices  []Device
	// named: the namespaces the selection named (sel.Netns and the
	// devices'), as the resolver knew them when the session began; see
	// dropGone. dynamic: a feed may select more (the session never runs
	// out of selection).
	named   map[uint32]resolve.Namespace
	dynamic bool
	ports   map[uint32][]Port // published ports, by the namespace they lead to
	// what the kernel maps hold
	inKernelNetns map[uint32]bool
	inKernelAddrs map[netip.Addr]bool
	inKernelPorts map[Port]bool

	failed chan error
	cancel context.CancelFunc
	wg     sync.WaitGroup
	warn   func(string)
}

// Follow sets the filters to the selection and, until ctx is done or Close,
// follows its dynamic feed and the resolver's changes. The filters are set
// when it returns.
func Follow(ctx context.Context, f Filters, names Resolver, sel Selection, opts Options) (*Follower, error) {
	fl := &Follower{
		f: f, names: names, onAddrs: opts.OnAddrs,
		netns:         map[uint32]bool{},
		devNetns:      map[uint32]bool{},
		ports:         map[uint32][]Port{},
		inKernelNetns: map[uint32]bool{},
		inKernelAddrs: map[netip.Addr]bool{},
		inKernelPorts: map[Port]bool{},
		failed:        make(chan error, 1),
		warn:          opts.Warn,
		named:         map[uint32]resolve.Namespace{},
		dynamic:       sel.Dynamic != nil,
		devices:       append([]Device(nil), sel.Devices...),
	}
	for _, d := range sel.Devices {
		if err := f.SelectDevice(d.Netns, d.Ifindex, true); err != nil {
			return nil, err
		}
		fl.devNetns[d.Netns] = true
		fl.remember(d.Netns)
	}
	for _, ns := range sel.Netns {
		fl.set(ns, true, nil)
		fl.remember(ns)
	}
	dynamic := fl.initial(ctx, sel.Dynamic)
	ctx, fl.cancel = context.WithCancel(ctx)
	deferred := 0
	if opts.Devices != nil {
		var err error
		if deferred, err = fl.attachFirst(ctx, opts); err != nil {
			fl.cancel()
			return nil, err
		}
	}
	if err := fl.sync(); err != nil {
		fl.cancel()
		return nil, err
	}
	fl.wg.Add(1)
	go fl.run(ctx, dynamic, deferred)
	return fl, nil
}

// attachFirst carries the programs to the devices the selected packets
// cross first and, unless more than opts.ForegroundDevices others wait,
// to all the others too. It returns how many it left for the goroutine.
func (fl *Follower) attachFirst(ctx context.Context, opts Options) (int, error) {
	fl.att = &attachments{devs: opts.Devices, names: fl.names, have: map[loader.DevKey]attachedAs{}, warnFn: opts.Warn}
	if err := fl.att.sync(ctx, fl.att.firstDevices(fl.selected())); err != nil {
		return 0, err
	}
	limit := opts.ForegroundDevices
	if limit <= 0 {
		limit = DefaultForegroundDevices
	}
	if n := int(fl.att.unattached.Load()); n > limit {
		fl.att.synced = true // failures from here on are warnings
		if fl.warn != nil {
			fl.warn(fmt.Sprintf("%d more devices (other namespaces') get the tcx programs from now on: "+
				"the kernel takes them one at a time; until then a path into them lacks their hops", n))
		}
		return n, nil
	}
	return 0, fl.att.sync(ctx, nil)
}

// Unattached is how many devices the resolver knows that do not carry the
// tcx programs yet (0 with the tracepoint engine).
func (fl *Follower) Unattached() int {
	if fl.att == nil {
		return 0
	}
	return int(fl.att.unattached.Load())
}

// initial takes the dynamic feed's first changes (the containers running
// now), so that the filters cover them when Follow returns: they come
// from a feed, shortly after the start. It returns the feed, nil once closed.
func (fl *Follower) initial(ctx context.Context, dynamic <-chan NetnsChange) <-chan NetnsChange {
	if dynamic == nil {
		return nil
	}
	wait := time.NewTimer(200 * time.Millisecond)
	defer wait.Stop()
	for {
		select {
		case ch, ok := <-dynamic:
			if !ok {
				return nil
			}
			fl.set(ch.Inode, ch.Selected, ch.Ports)
			wait.Reset(20 * time.Millisecond)
		case <-wait.C:
			return dynamic
		case <-ctx.Done():
			return dynamic
		}
	}
}

func (fl *Follower) run(ctx context.Context, dynamic <-chan NetnsChange, deferred int) {
	defer fl.wg.Done()
	if deferred > 0 {
		var ok bool
		if dynamic, ok = fl.attachRest(ctx, dynamic); !ok {
			return
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ch, ok := <-dynamic:
			if !ok {
				dynamic = nil
				continue
			}
			fl.set(ch.Inode, ch.Selected, ch.Ports)
		case <-fl.names.Changes():
		}
		gone, err := fl.dropGone()
		if err != nil {
			fl.failed <- err
			return
		}
		if fl.att != nil {
			_ = fl.att.sync(ctx, nil) // after the first sync, failures are warnings
		}
		if err := fl.sync(); err != nil {
			fl.failed <- err
			return
		}
		fl.warnGone(gone)
	}
}

// restChunk is how many of the devices Follow left attachRest attaches
// before it looks for changes again (about a second of tcx commits).
const restChunk = 32

// attachRest attaches the devices Follow left, restChunk at a time.
// Between chunks it takes the selection's and the resolver's changes and
// serves them first: a container that starts meanwhile has its devices
// attached, and its namespace selected, before the rest goes on, so it is
// traced from its first packet as at any other time. It returns the
// dynamic feed (nil once closed), and false when the following stopped.
func (fl *Follower) attachRest(ctx context.Context, dynamic <-chan NetnsChange) (<-chan NetnsChange, bool) {
	start, before := time.Now(), len(fl.att.have)
	for fl.att.unattached.Load() > 0 && ctx.Err() == nil {
		changed := true
		select {
		case ch, ok := <-dynamic:
			if !ok {
				dynamic = nil
				break
			}
			fl.set(ch.Inode, ch.Selected, ch.Ports)
		case <-fl.names.Changes():
		default:
			changed = false
		}
		if changed {
			gone, err := fl.dropGone()
			if err != nil {
				fl.failed <- err
				return dynamic, false
			}
			first, fresh := fl.att.firstDevices(fl.selected()), fl.att.fresh()
			_ = fl.att.sync(ctx, func(k loader.DevKey) bool { return first(k) || fresh(k) })
			if err := fl.sync(); err != nil {
				fl.failed <- err
				return dynamic, false
			}
			fl.warnGone(gone)
			continue
		}
		n, had := 0, len(fl.att.have)
		_ = fl.att.sync(ctx, func(loader.DevKey) bool { n++; return n <= restChunk })
		if len(fl.att.have) == had {
			break // no progress (failures were warned): the full sync below tries once more
		}
	}
	_ = fl.att.sync(ctx, nil) // and detaches what went away meanwhile
	if ctx.Err() != nil {
		return dynamic, false
	}
	if fl.warn != nil {
		fl.warn(fmt.Sprintf("%d more devices carry the tcx programs now (%.1fs): paths through them are whole from here",
			len(fl.att.have)-before, time.Since(start).Seconds()))
	}
	return dynamic, true
}

// remember notes a namespace the selection names, as the resolver knows it
// now (one it does not know cannot be told gone later, and is left alone).
func (fl *Follower) remember(inode uint32) {
	if ns, ok := fl.names.Namespace(inode); ok && inode != fl.names.HostInode() {
		fl.named[inode] = ns
	}
}

// dropGone takes out of the selection the named namespaces the resolver
// no longer knows as the ones selected: dropped (deleted, or their
// container's sandbox removed), or their inode now another namespace's;
// sync then takes them out of the kernel's filters. (The resolver closes
// its handles before it tells: a namespace made within those milliseconds
// that takes the freed inode is selected until then.) It returns their
// names for warnGone, and ErrNothingLeft once none is left of a selection
// no feed adds to.
func (fl *Follower) dropGone() (string, error) {
	var gone []string
	for ino, was := range fl.named {
		if now, ok := fl.names.Namespace(ino); ok && now.Seq == was.Seq {
			continue
		}
		delete(fl.named, ino)
		gone = append(gone, "netns "+was.Label)
		if fl.netns[ino] {
			fl.set(ino, false, nil)
		}
		if fl.devNetns[ino] {
			delete(fl.devNetns, ino)
			kept := fl.devices[:0]
			for _, d := range fl.devices {
				if d.Netns != ino {
					kept = append(kept, d)
					continue
				}
				if err := fl.f.SelectDevice(d.Netns, d.Ifindex, false); err != nil {
					return "", err
				}
			}
			fl.devices = kept
		}
	}
	if len(gone) == 0 {
		return "", nil
	}
	sort.Strings(gone)
	what := strings.Join(gone, ", ")
	if !fl.dynamic && len(fl.netns) == 0 && len(fl.devices) == 0 {
		// out of the kernel's filters too, for the moments the session takes to end
		if err := fl.sync(); err != nil {
			return what, err
		}
		return what, fmt.Errorf("%s went away: %w", what, ErrNothingLeft)
	}
	return what, nil
}

// warnGone says which named namespaces went away, once the filters no
// longer select them.
func (fl *Follower) warnGone(what string) {
	if what != "" && fl.warn != nil {
		fl.warn(what + " went away: no longer selected")
	}
}

// selected lists the namespaces selected now, those of selected devices
// included.
func (fl *Follower) selected() map[uint32]bool {
	out := map[uint32]bool{}
	for ns := range fl.netns {
		out[ns] = true
	}
	for ns := range fl.devNetns {
		out[ns] = true
	}
	return out
}

// Failed delivers the error that stopped the following (a filter map that
// could not be updated).
func (fl *Follower) Failed() <-chan error { return fl.failed }

// Close stops following and waits for the goroutine.
func (fl *Follower) Close() {
	fl.cancel()
	fl.wg.Wait()
}

// set selects (or unselects) a namespace and the published ports leading
// to it; sync applies it.
func (fl *Follower) set(inode uint32, on bool, ports []Port) {
	if on {
		fl.netns[inode] = true
	} else {
		delete(fl.netns, inode)
	}
	if on && len(ports) > 0 {
		fl.ports[inode] = ports
	} else {
		delete(fl.ports, inode)
	}
}

// sync makes the kernel's filters match the selection and the current
// addresses of the selected namespaces.
func (fl *Follower) sync() error {
	wantAddrs := map[netip.Addr]bool{}
	changed := false
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
	wantPorts := map[Port]bool{}
	for ns, ports := range fl.ports {
		if fl.netns[ns] {
			for _, p := range ports {
				wantPorts[p] = true
			}
		}
	}
	for p := range wantPorts {
		if !fl.inKernelPorts[p] {
			if err := fl.f.SelectPort(p.Proto, p.Port, true); err != nil {
				return err
			}
			fl.inKernelPorts[p] = true
		}
	}
	for p := range fl.inKernelPorts {
		if !wantPorts[p] {
			if err := fl.f.SelectPort(p.Proto, p.Port, false); err != nil {
				return err
			}
			delete(fl.inKernelPorts, p)
		}
	}
	for a := range wantAddrs {
		if !fl.inKernelAddrs[a] {
			if err := fl.f.SelectAddr(a, true); err != nil {
				return err
			}
			fl.inKernelAddrs[a] = true
			changed = true
		}
	}
	for a := range fl.inKernelAddrs {
		if !wantAddrs[a] {
			if err := fl.f.SelectAddr(a, false); err != nil {
				return err
			}
			delete(fl.inKernelAddrs, a)
			changed = true
		}
	}
	if changed && fl.onAddrs != nil {
		addrs := make([]netip.Addr, 0, len(fl.inKernelAddrs))
		for a := range fl.inKernelAddrs {
			addrs = append(addrs, a)
		}
		return fl.onAddrs(addrs)
	}
	return nil
}
