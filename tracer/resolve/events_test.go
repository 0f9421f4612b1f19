package resolve

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// subscriptionOf tells how the resolver hears about the namespace ino: on
// a socket of its own, or on the shared one under the host's nsid for it.
func subscriptionOf(r *Resolver, ino uint32) (own bool, nsid int32, known bool) {
	r.mu.RLock()
	st := r.nss[ino]
	r.mu.RUnlock()
	if st == nil {
		return false, -1, false
	}
	r.ev.mu.Lock()
	defer r.ev.mu.Unlock()
	return st.sub != nil, st.hostNsid, true
}

// hostNsidOf asks the host namespace, on a socket of the test's own, for
// the nsid it gives the namespace at path (-1: none).
func hostNsidOf(t *testing.T, r *Resolver, path string) int32 {
	t.Helper()
	host, err := netns.GetFromPath(r.hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	sock, err := nl.GetNetlinkSocketAt(host, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	sh := &nl.SocketHandle{Socket: sock}
	defer sh.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	id, err := getNsid(sh, int(target))
	if err != nil {
		t.Fatalf("RTM_GETNSID: %v", err)
	}
	return id
}

// The namespaces of a bridge topology (veth pairs to the host) are heard on
// the one shared socket; the resolver keeps no socket of their own.
func TestSharedSubscription(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 3})
	r := newResolver(t, Options{})
	for _, h := range topo.Hosts {
		own, nsid, known := subscriptionOf(r, h.Inode)
		want := hostNsidOf(t, r, h.Path)
		if !known || own || want < 0 || nsid != want {
			t.Errorf("%s: own socket %v, routed by nsid %d (host numbers it %d), known %v; want the shared socket", h.Name, own, nsid, want, known)
		}
	}
	// A namespace added while running: its changes are seen, and it ends up
	// on the shared socket. (The directory watch may find it before its
	// veth exists, without an nsid: it then starts on a socket of its own
	// and moves with the first notification the shared socket carries.)
	h := topo.AddHost(t)
	addLinkIn(t, h.Path, "hxs0")
	waitFor(t, r, 5*time.Second, "hxs0 in "+h.Name, func() bool {
		_, ok := r.LinkByName(h.Inode, "hxs0")
		return ok
	})
	waitRouted(t, r, h.Inode)
}

// waitRouted waits until the namespace ino is heard on the shared socket.
func waitRouted(t *testing.T, r *Resolver, ino uint32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		own, nsid, _ := subscriptionOf(r, ino)
		if !own && nsid >= 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %d still on its own socket (nsid %d) after it got an nsid", ino, nsid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A namespace the host has no nsid for gets a socket of its own; the
// resolver does not give it an nsid. Once the kernel numbers it (a veth to
// the host), it moves to the shared socket and is still followed.
func TestNamespaceWithoutNsid(t *testing.T) {
	privtest.RequireRoot(t)
	r := newResolver(t, Options{})
	pid, ino, _ := startNetnsProcess(t)
	path := fmt.Sprintf("/proc/%d/ns/net", pid)
	if _, err := r.OpenNetns(path); err != nil {
		t.Fatal(err)
	}
	if own, _, known := subscriptionOf(r, ino); !known || !own {
		t.Fatalf("namespace without nsid: own socket %v, known %v", own, known)
	}
	if id := hostNsidOf(t, r, path); id >= 0 {
		t.Fatalf("the host numbers the new namespace %d after the resolver opened it; it must not assign nsids", id)
	}

	nh := addLinkIn(t, path, "hxn0")
	waitFor(t, r, 5*time.Second, "hxn0 on the namespace's own socket", func() bool {
		_, ok := r.LinkByName(ino, "hxn0")
		return ok
	})
	d, err := nh.LinkByName("hxn0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.231.254.7/32")
	if err := nh.AddrAdd(d, addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "hxn0's address", func() bool {
		l, _ := r.LinkByName(ino, "hxn0")
		return slices.Contains(addrStrings(l.Addrs), "10.231.254.7/32")
	})

	// A veth to the host: the kernel numbers the namespace in the host.
	name := fmt.Sprintf("htn%05d", rand.IntN(100000))
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "hxp0", PeerNamespace: netlink.NsFd(nsh)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	})
	if id := hostNsidOf(t, r, path); id < 0 {
		t.Fatalf("no nsid for the namespace after a veth to the host was created")
	}
	// Notifications now come on the shared socket too; the first one moves
	// the namespace there.
	p, err := nh.LinkByName("hxp0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetUp(p); err != nil {
		t.Fatal(err)
	}
	waitRouted(t, r, ino)
	waitFor(t, r, 5*time.Second, "veth peer hxp0 up and resolved", func() bool {
		l, ok := r.LinkByName(ino, "hxp0")
		return ok && l.Up && l.PeerNetns == r.HostInode()
	})
	addLinkIn(t, path, "hxn1")
	waitFor(t, r, 5*time.Second, "hxn1 on the shared socket", func() bool {
		_, ok := r.LinkByName(ino, "hxn1")
		return ok
	})
}

// handleIn returns a netlink handle in the namespace at path, closed when
// the test ends.
func handleIn(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	nh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	return nh
}

// addLinkIn creates a bridge called name in the namespace at path (which the
// test created) and returns a handle in that namespace.
func addLinkIn(t *testing.T, path, name string) *netlink.Handle {
	t.Helper()
	nh := handleIn(t, path)
	if err := nh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return nh
}

// The resolver's goroutines do not grow with the number of namespaces.
func TestGoroutinesIndependentOfNamespaces(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	r := newResolver(t, Options{})
	before := runtime.NumGoroutine()
	var hs []*testnet.Host
	for range 20 {
		hs = append(hs, topo.AddHost(t))
	}
	waitFor(t, r, 10*time.Second, "20 namespaces", func() bool {
		for _, h := range hs {
			if _, ok := r.Link(h.Inode, h.Ifindex); !ok {
				return false
			}
		}
		return true
	})
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Errorf("%d goroutines with 20 more namespaces, %d before", n, before)
	}
}
