package selection

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// fakeDevices records the tcx engine's attachments: each AttachNetns call's
// devices, in order. block, when set, holds every call after the first
// until its context is done (an attach the Follower must be able to stop).
type fakeDevices struct {
	mu       sync.Mutex
	calls    [][]loader.DevKey
	attached map[loader.DevKey]bool
	block    bool
	stopped  chan struct{}
	onCall   func(i int) // called at the start of call i, before it attaches
}

func newFakeDevices() *fakeDevices {
	return &fakeDevices{attached: map[loader.DevKey]bool{}, stopped: make(chan struct{}, 8)}
}

func (d *fakeDevices) AttachNetns(ctx context.Context, sets []loader.NetnsDevices) []loader.NetnsAttached {
	d.mu.Lock()
	n := len(d.calls)
	var call []loader.DevKey
	for _, s := range sets {
		for _, idx := range s.Ifindexes {
			call = append(call, loader.DevKey{Netns: s.Netns.Inode, Ifindex: idx})
		}
	}
	d.calls = append(d.calls, call)
	d.mu.Unlock()
	if d.onCall != nil {
		d.onCall(n)
	}
	res := make([]loader.NetnsAttached, len(sets))
	if d.block && n > 0 {
		select {
		case <-ctx.Done():
			d.stopped <- struct{}{}
		case <-time.After(5 * time.Second): // never stopped: the test fails
		}
		return res // nothing attached
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, s := range sets {
		res[i].Ifindexes = s.Ifindexes
		for _, idx := range s.Ifindexes {
			d.attached[loader.DevKey{Netns: s.Netns.Inode, Ifindex: idx}] = true
		}
	}
	return res
}

func (d *fakeDevices) ForgetDevice(k loader.DevKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.attached, k)
	return nil
}

func (d *fakeDevices) PruneMoved() error { return nil }

func (d *fakeDevices) snapshot() ([][]loader.DevKey, map[loader.DevKey]bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls), maps.Clone(d.attached)
}

const (
	hostNs = 1
	webNs  = 10 // the selected container
)

// hostWithContainers is a host namespace (loopback, an uplink, a bridge,
// one veth per container) and n containers (eth0 and loopback each); the
// first container, web, is netns 10, the others 11, 12, ...
func hostWithContainers(n int) *fakeResolver {
	nss := []resolve.Namespace{{Inode: hostNs, Path: "/proc/1/ns/net"}}
	links := []resolve.Link{
		{Netns: hostNs, Index: 1, Name: "lo", Kind: resolve.KindDevice},
		{Netns: hostNs, Index: 2, Name: "uplink0", Kind: resolve.KindDevice},
		{Netns: hostNs, Index: 3, Name: "docker0", Kind: resolve.KindBridge},
	}
	for i := range n {
		ns := uint32(webNs + i)
		veth := 100 + i
		nss = append(nss, resolve.Namespace{Inode: ns, Path: fmt.Sprintf("/run/netns/c%d", i)})
		links = append(links,
			resolve.Link{Netns: hostNs, Index: veth, Name: fmt.Sprintf("veth%d", i), Kind: resolve.KindVeth, MasterIndex: 3, PeerNetns: ns, PeerIndex: 2},
			resolve.Link{Netns: ns, Index: 1, Name: "lo", Kind: resolve.KindDevice},
			resolve.Link{Netns: ns, Index: 2, Name: "eth0", Kind: resolve.KindVeth, PeerNetns: hostNs, PeerIndex: veth},
		)
	}
	return &fakeResolver{changes: make(chan struct{}), Static: resolve.NewStatic(hostNs, nss, links...)}
}

func sortedKeys(keys []loader.DevKey) []loader.DevKey {
	out := slices.Clone(keys)
	slices.SortFunc(out, func(a, b loader.DevKey) int {
		if a.Netns != b.Netns {
			return int(a.Netns) - int(b.Netns)
		}
		return a.Ifindex - b.Ifindex
	})
	return out
}

// On a host with many containers, Follow attaches first what a selected
// container's packets cross on their way out (its own devices, its host
// veth, the host's bridge, uplink and loopback), returns, and attaches the
// other containers' devices after; with few devices waiting it attaches
// everything before it returns.
func TestFollowAttachesTheSelectedPathFirst(t *testing.T) {
	dk := func(ns uint32, idx int) loader.DevKey { return loader.DevKey{Netns: ns, Ifindex: idx} }
	wantFirst := []loader.DevKey{dk(hostNs, 1), dk(hostNs, 2), dk(hostNs, 3), dk(hostNs, 100), dk(webNs, 1), dk(webNs, 2)}
	const containers = 20 // 3 + 3 per container devices in all
	all := 3 + 3*containers

	t.Run("deferred", func(t *testing.T) {
		names := hostWithContainers(containers)
		devs := newFakeDevices()
		var warnings []string
		var wmu sync.Mutex
		warn := func(s string) { wmu.Lock(); warnings = append(warnings, s); wmu.Unlock() }
		fl, err := Follow(context.Background(), newFakeFilters(), names, Selection{Netns: []uint32{webNs}},
			Options{Devices: devs, ForegroundDevices: 8, Warn: warn})
		if err != nil {
			t.Fatal(err)
		}
		defer fl.Close()
		calls, _ := devs.snapshot()
		if len(calls) == 0 || !slices.Equal(sortedKeys(calls[0]), wantFirst) {
			t.Fatalf("first attach %v, want %v", calls, wantFirst)
		}
		eventually(t, "the other containers' devices attached", func() bool {
			_, attached := devs.snapshot()
			return len(attached) == all && fl.Unattached() == 0
		})
		calls, _ = devs.snapshot()
		seen := map[loader.DevKey]bool{}
		for _, c := range calls[1:] {
			if len(c) > restChunk {
				t.Errorf("a call of %d devices after Follow returned, want at most %d", len(c), restChunk)
			}
			for _, k := range c {
				if seen[k] || slices.Contains(wantFirst, k) {
					t.Errorf("%v attached twice", k)
				}
				seen[k] = true
			}
		}
		if len(seen) != all-len(wantFirst) {
			t.Errorf("%d devices attached after Follow returned, want the %d others", len(seen), all-len(wantFirst))
		}
		eventually(t, "the warnings", func() bool {
			wmu.Lock()
			defer wmu.Unlock()
			return len(warnings) == 2
		})
		wmu.Lock()
		t.Logf("warnings: %q", warnings)
		if want := fmt.Sprintf("%d more devices", all-len(wantFirst)); !containsAll(warnings, "get the tcx programs from now on", want, "carry the tcx programs now") {
			t.Errorf("warnings %q: want a start note and %q done", warnings, want)
		}
		wmu.Unlock()
	})

	t.Run("foreground", func(t *testing.T) {
		names := hostWithContainers(containers)
		devs := newFakeDevices()
		fl, err := Follow(context.Background(), newFakeFilters(), names, Selection{Netns: []uint32{webNs}},
			Options{Devices: devs, ForegroundDevices: all})
		if err != nil {
			t.Fatal(err)
		}
		calls, attached := devs.snapshot()
		unattached := fl.Unattached()
		fl.Close()
		if len(attached) != all || unattached != 0 || len(calls) != 2 || !slices.Equal(sortedKeys(calls[0]), wantFirst) || len(calls[1]) != all-len(wantFirst) {
			t.Errorf("when Follow returned: %d of %d attached (%d unattached), calls %v; want all, the selected path first",
				len(attached), all, unattached, calls)
		}
	})

	// A container that starts while the rest is being attached is served
	// first: its devices and its host veth are attached before the next
	// chunk, and, selected by the dynamic feed, its namespace is in the
	// filters then.
	t.Run("a new container first", func(t *testing.T) {
		names := hostWithContainers(containers)
		names.changes = make(chan struct{}, 1)
		devs := newFakeDevices()
		dyn := make(chan NetnsChange, 1)
		const newNs, newVeth = 99, 199
		f := newFakeFilters()
		devs.onCall = func(i int) {
			if i != 1 { // the first chunk of the rest
				return
			}
			names.mu.Lock()
			names.Static.Namespaces[newNs] = resolve.Namespace{Inode: newNs, Path: "/run/netns/new"}
			names.Static.AddLink(resolve.Link{Netns: hostNs, Index: newVeth, Name: "vethnew", Kind: resolve.KindVeth, PeerNetns: newNs, PeerIndex: 2})
			names.Static.AddLink(resolve.Link{Netns: newNs, Index: 1, Name: "lo", Kind: resolve.KindDevice})
			names.Static.AddLink(resolve.Link{Netns: newNs, Index: 2, Name: "eth0", Kind: resolve.KindVeth, PeerNetns: hostNs, PeerIndex: newVeth})
			names.mu.Unlock()
			names.changes <- struct{}{}
			dyn <- NetnsChange{Inode: newNs, Selected: true}
		}
		fl, err := Follow(context.Background(), f, names, Selection{Netns: []uint32{webNs}, Dynamic: dyn},
			Options{Devices: devs, ForegroundDevices: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer fl.Close()
		eventually(t, "every device attached", func() bool {
			_, attached := devs.snapshot()
			return len(attached) == all+3 && fl.Unattached() == 0
		})
		calls, _ := devs.snapshot()
		want := []loader.DevKey{dk(hostNs, newVeth), dk(newNs, 1), dk(newNs, 2)}
		if len(calls) < 3 || !slices.Equal(sortedKeys(calls[2]), want) {
			t.Fatalf("attach calls %v: want the new container's devices %v right after the first chunk", calls, want)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.netns[newNs] || !f.netns[webNs] {
			t.Errorf("selected namespaces %v, want %d and %d", f.netns, webNs, newNs)
		}
	})

	// Close stops an attach in progress: the Follower's goroutine gives up
	// its call when the context is done, and Close waits for it.
	t.Run("close stops it", func(t *testing.T) {
		names := hostWithContainers(containers)
		devs := newFakeDevices()
		devs.block = true
		fl, err := Follow(context.Background(), newFakeFilters(), names, Selection{Netns: []uint32{webNs}},
			Options{Devices: devs, ForegroundDevices: 1})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the deferred attach started", func() bool {
			calls, _ := devs.snapshot()
			return len(calls) == 2
		})
		fl.Close()
		select {
		case <-devs.stopped:
		case <-time.After(time.Second):
			t.Fatal("Close returned and the deferred attach was not stopped")
		}
		if n := fl.Unattached(); n != all-len(wantFirst) {
			t.Errorf("unattached after a stopped attach: %d, want %d", n, all-len(wantFirst))
		}
	})
}

func containsAll(msgs []string, subs ...string) bool {
	for _, s := range subs {
		if !slices.ContainsFunc(msgs, func(m string) bool { return strings.Contains(m, s) }) {
			return false
		}
	}
	return true
}
