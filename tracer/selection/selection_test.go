package selection

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// fakeFilters records what the kernel maps would hold.
type fakeFilters struct {
	mu    sync.Mutex
	netns map[uint32]bool
	devs  map[Device]bool
	addrs map[netip.Addr]bool
	ports map[Port]bool
}

func newFakeFilters() *fakeFilters {
	return &fakeFilters{netns: map[uint32]bool{}, devs: map[Device]bool{}, addrs: map[netip.Addr]bool{}, ports: map[Port]bool{}}
}

func set[K comparable](mu *sync.Mutex, m map[K]bool, k K, on bool) error {
	mu.Lock()
	defer mu.Unlock()
	if on {
		m[k] = true
	} else {
		delete(m, k)
	}
	return nil
}

func (f *fakeFilters) SelectNetns(inode uint32, on bool) error { return set(&f.mu, f.netns, inode, on) }
func (f *fakeFilters) SelectDevice(netns uint32, ifindex int, on bool) error {
	return set(&f.mu, f.devs, Device{netns, ifindex}, on)
}
func (f *fakeFilters) SelectAddr(a netip.Addr, on bool) error { return set(&f.mu, f.addrs, a, on) }
func (f *fakeFilters) SelectPort(proto uint8, port uint16, on bool) error {
	return set(&f.mu, f.ports, Port{proto, port}, on)
}

func (f *fakeFilters) state() (netns []uint32, addrs []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n := range f.netns {
		netns = append(netns, n)
	}
	for a := range f.addrs {
		addrs = append(addrs, a.String())
	}
	return netns, addrs
}

// fakeResolver serves a resolve.Static whose links the test changes.
type fakeResolver struct {
	mu sync.Mutex
	*resolve.Static
	changes chan struct{}
}

func (r *fakeResolver) Links(netns uint32) []resolve.Link {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []resolve.Link
	for _, l := range r.Static.Links[netns] {
		out = append(out, l)
	}
	return out
}
func (r *fakeResolver) Namespaces() []resolve.Namespace {
	r.mu.Lock()
	defer r.mu.Unlock()
	var nss []resolve.Namespace
	for _, ns := range r.Static.Namespaces {
		nss = append(nss, ns)
	}
	return nss
}
func (r *fakeResolver) Namespace(inode uint32) (resolve.Namespace, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Static.Namespace(inode)
}

// setNamespace adds, replaces (ok) or drops (!ok) a namespace and says so.
func (r *fakeResolver) setNamespace(ns resolve.Namespace, ok bool) {
	r.mu.Lock()
	if ok {
		r.Static.Namespaces[ns.Inode] = ns
	} else {
		delete(r.Static.Namespaces, ns.Inode)
	}
	r.mu.Unlock()
	r.changes <- struct{}{}
}
func (r *fakeResolver) Refresh()                 {}
func (r *fakeResolver) Changes() <-chan struct{} { return r.changes }
func (r *fakeResolver) setAddrs(netns uint32, ifindex int, addrs ...string) {
	r.mu.Lock()
	l := r.Static.Links[netns][ifindex]
	l.Addrs = prefixes(addrs...)
	r.Static.AddLink(l)
	r.mu.Unlock()
	r.changes <- struct{}{}
}

func prefixes(cidrs ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cidrs {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 2s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFilterKinds(t *testing.T) {
	dyn := make(chan NetnsChange)
	for _, tc := range []struct {
		sel  Selection
		want loader.FilterKind
	}{
		{Selection{}, 0},
		{Selection{Netns: []uint32{5}}, loader.FilterNetns | loader.FilterAddr},
		{Selection{Dynamic: dyn}, loader.FilterNetns | loader.FilterAddr | loader.FilterPort}, // containers: their published ports too
		{Selection{Netns: []uint32{5}, Devices: []Device{{5, 2}}}, loader.FilterDev},
	} {
		if got := tc.sel.FilterKinds(); got != tc.want {
			t.Errorf("%+v: FilterKinds = %v, want %v", tc.sel, got, tc.want)
		}
	}
}

func TestFollow(t *testing.T) {
	names := &fakeResolver{changes: make(chan struct{}), Static: resolve.NewStatic(1, nil,
		resolve.Link{Netns: 10, Index: 2, Name: "eth0", Addrs: prefixes("10.1.0.2/24", "127.0.0.1/8")},
		resolve.Link{Netns: 20, Index: 2, Name: "eth0", Addrs: prefixes("10.1.0.3/24")},
	)}
	f := newFakeFilters()
	dyn := make(chan NetnsChange)
	fl, err := Follow(context.Background(), f, names, Selection{Netns: []uint32{10}, Dynamic: dyn}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	// Set when Follow returns; loopback never selects.
	if netns, addrs := f.state(); len(netns) != 1 || netns[0] != 10 || len(addrs) != 1 || addrs[0] != "10.1.0.2" {
		t.Fatalf("after Follow: netns %v, addrs %v; want [10] [10.1.0.2]", netns, addrs)
	}
	dyn <- NetnsChange{Inode: 20, Selected: true}
	eventually(t, "namespace 20 selected with its address", func() bool {
		netns, addrs := f.state()
		return len(netns) == 2 && len(addrs) == 2
	})
	names.setAddrs(10, 2, "10.1.0.9/24")
	eventually(t, "10.1.0.2 replaced by 10.1.0.9", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.addrs[netip.MustParseAddr("10.1.0.9")] && !f.addrs[netip.MustParseAddr("10.1.0.2")]
	})
	dyn <- NetnsChange{Inode: 10, Selected: false}
	eventually(t, "namespace 10 and its address unselected", func() bool {
		netns, addrs := f.state()
		return len(netns) == 1 && netns[0] == 20 && len(addrs) == 1 && addrs[0] == "10.1.0.3"
	})
	fl.Close()
	select {
	case err := <-fl.Failed():
		t.Errorf("follower failed: %v", err)
	default:
	}
}

func TestFollowDevices(t *testing.T) {
	names := &fakeResolver{changes: make(chan struct{}), Static: resolve.NewStatic(1, nil)}
	f := newFakeFilters()
	fl, err := Follow(context.Background(), f, names, Selection{Devices: []Device{{10, 2}, {1, 7}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fl.Close()
	if !f.devs[Device{10, 2}] || !f.devs[Device{1, 7}] || len(f.netns) != 0 {
		t.Errorf("devices %v, netns %v; want both devices and no namespace", f.devs, f.netns)
	}
}

// A container's published ports are selected while its namespace is, from
// the feed's first changes on (they are in the filters when Follow returns).
func TestPublishedPortsFollowTheNamespace(t *testing.T) {
	f := newFakeFilters()
	names := &fakeResolver{Static: resolve.NewStatic(1, nil), changes: make(chan struct{})}
	dyn := make(chan NetnsChange, 4)
	web := Port{6, 18080}
	dyn <- NetnsChange{Inode: 7, Selected: true, Ports: []Port{web}}
	fl, err := Follow(context.Background(), f, names, Selection{Dynamic: dyn}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	f.mu.Lock()
	got := f.ports[web] && f.netns[7]
	f.mu.Unlock()
	if !got {
		t.Fatalf("after Follow: ports %v netns %v, want %v and 7", f.ports, f.netns, web)
	}
	dyn <- NetnsChange{Inode: 7, Selected: false}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f.mu.Lock()
		n := len(f.ports)
		f.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("published port still selected after its container stopped")
		}
	}
	if k := (Selection{Dynamic: dyn}).FilterKinds(); k&loader.FilterPort == 0 {
		t.Errorf("filter kinds %v lack the port filter", k)
	}
}

// warnings collects a follower's warnings.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) add(m string) { w.mu.Lock(); w.msgs = append(w.msgs, m); w.mu.Unlock() }
func (w *warnings) has(sub string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// failure waits for the follower to fail.
func failure(t *testing.T, fl *Follower) error {
	t.Helper()
	select {
	case err := <-fl.Failed():
		return err
	case <-time.After(2 * time.Second):
		t.Fatal("the follower did not end within 2s")
		return nil
	}
}

// A named namespace the resolver drops is unselected, with a warning; one
// whose inode now names another namespace (a new Seq) is gone too; once
// none is left the follower ends with ErrNothingLeft.
func TestNamedNamespacesThatGoAway(t *testing.T) {
	a := resolve.Namespace{Inode: 10, Label: "ns-a", Seq: 1}
	b := resolve.Namespace{Inode: 20, Label: "ns-b", Seq: 2}
	names := &fakeResolver{changes: make(chan struct{}), Static: resolve.NewStatic(1, []resolve.Namespace{a, b},
		resolve.Link{Netns: 10, Index: 2, Name: "eth0", Addrs: prefixes("10.1.0.2/24")},
		resolve.Link{Netns: 20, Index: 2, Name: "eth0", Addrs: prefixes("10.1.0.3/24")},
	)}
	f := newFakeFilters()
	var w warnings
	fl, err := Follow(context.Background(), f, names, Selection{Netns: []uint32{10, 20}}, Options{Warn: w.add})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	names.setNamespace(a, false)
	eventually(t, "ns-a unselected", func() bool {
		netns, _ := f.state()
		return len(netns) == 1 && netns[0] == 20
	})
	if !w.has("netns ns-a went away") {
		t.Error("no warning says ns-a went away")
	}
	// a rename of the same namespace (same Seq) is no departure
	names.setNamespace(resolve.Namespace{Inode: 20, Label: "netns:20 (pid 7 sleep)", Seq: 2}, true)
	time.Sleep(50 * time.Millisecond)
	if netns, _ := f.state(); len(netns) != 1 {
		t.Fatalf("ns-b unselected by a rename: %v", netns)
	}
	// ns-b's inode now another namespace's
	names.setNamespace(resolve.Namespace{Inode: 20, Label: "ns-c", Seq: 3}, true)
	err = failure(t, fl)
	if !errors.Is(err, ErrNothingLeft) || !strings.Contains(err.Error(), "netns ns-b went away") {
		t.Fatalf("follower ended with %v, want ns-b gone and ErrNothingLeft", err)
	}
	if netns, addrs := f.state(); len(netns) != 0 || len(addrs) != 0 {
		t.Errorf("still selected after the end: netns %v, addrs %v", netns, addrs)
	}
}

// Devices of a namespace that went away are unselected; a selection that
// also follows a feed (containers) never runs out, it only warns.
func TestDevicesOfAGoneNamespace(t *testing.T) {
	a := resolve.Namespace{Inode: 10, Label: "ns-a", Seq: 1}
	names := &fakeResolver{changes: make(chan struct{}), Static: resolve.NewStatic(1, []resolve.Namespace{a})}
	f := newFakeFilters()
	fl, err := Follow(context.Background(), f, names, Selection{Devices: []Device{{10, 2}, {1, 7}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	names.setNamespace(a, false)
	eventually(t, "ns-a's device unselected", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return !f.devs[Device{10, 2}] && f.devs[Device{1, 7}]
	})
	fl.Close()
	select {
	case err := <-fl.Failed():
		t.Fatalf("the host's device is left, yet the follower ended: %v", err)
	default:
	}

	names = &fakeResolver{changes: make(chan struct{}), Static: resolve.NewStatic(1, []resolve.Namespace{a})}
	var w warnings
	dyn := make(chan NetnsChange)
	fl, err = Follow(context.Background(), newFakeFilters(), names, Selection{Netns: []uint32{10}, Dynamic: dyn}, Options{Warn: w.add})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	names.setNamespace(a, false)
	eventually(t, "a warning that ns-a went away", func() bool { return w.has("netns ns-a went away") })
	select {
	case err := <-fl.Failed():
		t.Fatalf("a selection with a feed ended: %v", err)
	default:
	}
}
