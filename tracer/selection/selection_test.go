package selection

import (
	"context"
	"net/netip"
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
}

func newFakeFilters() *fakeFilters {
	return &fakeFilters{netns: map[uint32]bool{}, devs: map[Device]bool{}, addrs: map[netip.Addr]bool{}}
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
		{Selection{Dynamic: dyn}, loader.FilterNetns | loader.FilterAddr},
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
	fl, err := Follow(context.Background(), f, names, Selection{Netns: []uint32{10}, Dynamic: dyn})
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
	fl, err := Follow(context.Background(), f, names, Selection{Devices: []Device{{10, 2}, {1, 7}}})
	if err != nil {
		t.Fatal(err)
	}
	fl.Close()
	if !f.devs[Device{10, 2}] || !f.devs[Device{1, 7}] || len(f.netns) != 0 {
		t.Errorf("devices %v, netns %v; want both devices and no namespace", f.devs, f.netns)
	}
}
