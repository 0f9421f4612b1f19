package resolve

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/vishvananda/netlink"
)

const helperEnv = "HOPTRACE_RESOLVE_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "wait" {
		// Child process: live in its own network namespace until stdin closes.
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startNetnsProcess starts a child in a new network namespace that is known
// only through /proc. Closing stdin (or the returned stop) ends it.
func startNetnsProcess(t *testing.T) (pid int, inode uint32, stop func()) {
	t.Helper()
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), helperEnv+"=wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper in a new netns: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			in.Close()
			cmd.Wait()
		})
	}
	t.Cleanup(stop)
	pid = cmd.Process.Pid
	inode, err = NetnsInode(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	return pid, inode, stop
}

func newResolver(t *testing.T, opts Options) *Resolver {
	t.Helper()
	opts.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// waitFor waits, on Changes() only, until cond holds.
func waitFor(t *testing.T, r *Resolver, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-r.Changes():
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// The per-event lookups allocate nothing. AllocsPerRun counts the whole
// process's allocations, the resolver's own event loop included, which
// under emulation may be relisting meanwhile.
func TestLinkAndLabelDoNotAllocate(t *testing.T) {
	privtest.RequireRoot(t)
	privtest.SameOnEveryKernel(t, "allocation counting is userspace, and the resolver's background relists under emulation count in it")
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	r := newResolver(t, Options{})
	h0 := topo.Hosts[0]
	waitFor(t, r, 10*time.Second, "eth0 known", func() bool {
		_, ok := r.Link(h0.Inode, h0.Ifindex)
		return ok
	})
	if n := testing.AllocsPerRun(100, func() {
		r.Link(h0.Inode, h0.Ifindex)
		r.Label(h0.Inode)
		r.Link(topo.HostInode(), topo.BridgeIndex)
	}); n != 0 {
		t.Errorf("Link+Label allocate %.1f times per call", n)
	}
}

func TestResolveTopology(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	r := newResolver(t, Options{})
	// A new port takes a moment to forward and its peer to have carrier:
	// the resolver must report both once the kernel does.
	waitFor(t, r, 10*time.Second, "ports forwarding and carrier on eth0", func() bool {
		for _, h := range topo.Hosts {
			hv, ok := r.Link(topo.HostInode(), h.HostVethIndex)
			e, ok2 := r.LinkByName(h.Inode, "eth0")
			if !ok || !ok2 || hv.PortState != "forwarding" || !e.Running {
				return false
			}
		}
		return true
	})

	if r.HostInode() != topo.HostInode() {
		t.Fatalf("HostInode = %d, want %d", r.HostInode(), topo.HostInode())
	}
	if got := r.Label(r.HostInode()); got != "host" {
		t.Errorf("Label(host) = %q, want host", got)
	}
	if got := r.Label(12345); got != "netns:12345" {
		t.Errorf("Label(unknown) = %q", got)
	}

	br, ok := r.Link(topo.HostInode(), topo.BridgeIndex)
	if !ok || br.Name != topo.Bridge || !br.IsBridge() || !br.Up {
		t.Fatalf("bridge: %+v %v", br, ok)
	}
	if !slices.Contains(addrStrings(br.Addrs), topo.Gateway.String()) {
		t.Errorf("bridge addrs %v lack %s", br.Addrs, topo.Gateway)
	}
	if b2, ok := r.LinkByName(topo.HostInode(), topo.Bridge); !ok || b2.Index != topo.BridgeIndex {
		t.Errorf("LinkByName(bridge) = %+v %v", b2, ok)
	}

	for _, h := range topo.Hosts {
		ns, ok := r.Namespace(h.Inode)
		if !ok || ns.Label != h.Name || ns.Path != h.Path || ns.Inode != h.Inode {
			t.Errorf("Namespace(%s) = %+v %v", h.Name, ns, ok)
		}
		if got := r.Label(h.Inode); got != h.Name {
			t.Errorf("Label(%s) = %q", h.Name, got)
		}

		// Host side: veth enslaved to the bridge, peer is eth0 in the netns.
		hv, ok := r.Link(topo.HostInode(), h.HostVethIndex)
		if !ok {
			t.Fatalf("host veth %s not resolved", h.HostVeth)
		}
		want := Link{Netns: topo.HostInode(), Index: h.HostVethIndex, Name: h.HostVeth, Kind: "veth",
			MasterIndex: topo.BridgeIndex, MasterName: topo.Bridge, PortState: "forwarding",
			PeerIndex: h.Ifindex, PeerNetns: h.Inode}
		if hv.Netns != want.Netns || hv.Index != want.Index || hv.Name != want.Name || hv.Kind != want.Kind ||
			hv.MasterIndex != want.MasterIndex || hv.MasterName != want.MasterName || hv.PortState != want.PortState ||
			hv.PeerIndex != want.PeerIndex || hv.PeerNetns != want.PeerNetns || !hv.Up || hv.MTU != 1500 {
			t.Errorf("host veth:\n got %+v\nwant %+v", hv, want)
		}

		// Namespace side: eth0, peer is the host veth.
		e, ok := r.LinkByName(h.Inode, "eth0")
		if !ok {
			t.Fatalf("eth0 in %s not resolved", h.Name)
		}
		if e.Index != h.Ifindex || e.Kind != "veth" || e.PeerIndex != h.HostVethIndex || e.PeerNetns != topo.HostInode() ||
			e.MAC != h.MAC.String() || !e.Up || !e.Running || e.MasterIndex != 0 || e.PortState != "" {
			t.Errorf("%s eth0: %+v (want index %d peer %d@%d mac %s)", h.Name, e, h.Ifindex, h.HostVethIndex, topo.HostInode(), h.MAC)
		}
		if !slices.Contains(addrStrings(e.Addrs), h.Addr.String()) {
			t.Errorf("%s eth0 addrs %v lack %s", h.Name, e.Addrs, h.Addr)
		}
		// Follow the peer both ways.
		if back, ok := r.Link(e.PeerNetns, e.PeerIndex); !ok || back.Name != h.HostVeth {
			t.Errorf("peer of %s/eth0 = %+v", h.Name, back)
		}
		if fwd, ok := r.Link(hv.PeerNetns, hv.PeerIndex); !ok || fwd.Name != "eth0" || fwd.Netns != h.Inode {
			t.Errorf("peer of %s = %+v", h.HostVeth, fwd)
		}

		links := r.Links(h.Inode)
		var names []string
		for i, l := range links {
			names = append(names, l.Name)
			if i > 0 && links[i-1].Index >= l.Index {
				t.Errorf("Links not sorted by index: %v", links)
			}
		}
		if !slices.Contains(names, "lo") || !slices.Contains(names, "eth0") {
			t.Errorf("Links(%s) = %v", h.Name, names)
		}
		if lo, ok := r.LinkByName(h.Inode, "lo"); !ok || lo.Kind != "device" || !slices.Contains(addrStrings(lo.Addrs), "127.0.0.1/8") {
			t.Errorf("lo in %s: %+v", h.Name, lo)
		}
	}

	var found int
	for _, ns := range r.Namespaces() {
		for _, h := range topo.Hosts {
			if ns.Inode == h.Inode {
				found++
			}
		}
	}
	if found != len(topo.Hosts) {
		t.Errorf("Namespaces lists %d of %d test namespaces", found, len(topo.Hosts))
	}
	if nss := r.Namespaces(); len(nss) == 0 || nss[0].Inode != r.HostInode() {
		t.Errorf("Namespaces does not start with host: %v", nss)
	}
}

type fakeAnnotator map[uint32]string

func (f fakeAnnotator) NetnsOwner(ino uint32) (string, bool) {
	o, ok := f[ino]
	return o, ok
}

func TestAnnotator(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	h := topo.Hosts[0]
	r := newResolver(t, Options{Annotator: fakeAnnotator{h.Inode: "web"}})
	if got := r.Label(h.Inode); got != "web" {
		t.Errorf("Label = %q, want web", got)
	}
	ns, ok := r.Namespace(h.Inode)
	if !ok || ns.Owner != "web" || ns.Label != h.Name {
		t.Errorf("Namespace = %+v", ns)
	}
	if got := r.Label(topo.Hosts[1].Inode); got != topo.Hosts[1].Name {
		t.Errorf("Label(unowned) = %q", got)
	}
}

func TestLinkChangesFollowed(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	h := topo.Hosts[0]
	r := newResolver(t, Options{})
	nh := handleIn(t, h.Path)

	// A link created inside the namespace after New.
	if err := nh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "dummy7"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "dummy7 to appear", func() bool {
		l, ok := r.LinkByName(h.Inode, "dummy7")
		return ok && l.Kind == "bridge" && !l.Up
	})
	d, _ := nh.LinkByName("dummy7")
	if l, ok := r.Link(h.Inode, d.Attrs().Index); !ok || l.Name != "dummy7" {
		t.Errorf("Link by index = %+v %v", l, ok)
	}
	// Address and state changes.
	addr, _ := netlink.ParseAddr("10.231.255.9/32")
	if err := nh.AddrAdd(d, addr); err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "dummy7 up with address", func() bool {
		l, _ := r.LinkByName(h.Inode, "dummy7")
		return l.Up && slices.Contains(addrStrings(l.Addrs), "10.231.255.9/32")
	})
	// Rename and delete.
	if err := nh.LinkSetDown(d); err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetName(d, "dummy8"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "rename to dummy8", func() bool {
		_, old := r.LinkByName(h.Inode, "dummy7")
		l, ok := r.LinkByName(h.Inode, "dummy8")
		return !old && ok && l.Index == d.Attrs().Index
	})
	if err := nh.LinkDel(d); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "dummy8 to go", func() bool {
		_, ok := r.Link(h.Inode, d.Attrs().Index)
		return !ok
	})

	// A veth pair added on the host side and enslaved to the bridge later.
	name := "htx" + strconv.Itoa(os.Getpid()%100000)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	})
	v, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMasterByIndex(v, topo.BridgeIndex); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, name+" enslaved to "+topo.Bridge, func() bool {
		l, ok := r.LinkByName(topo.HostInode(), name)
		if !ok || l.MasterName != topo.Bridge {
			return false
		}
		p, ok := r.Link(l.PeerNetns, l.PeerIndex)
		return ok && p.Name == name+"p" && p.PeerIndex == l.Index && l.PeerNetns == topo.HostInode()
	})
}

func TestNamespaceAddedFoundByInotify(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	r := newResolver(t, Options{})
	h := topo.AddHost(t)
	// No Refresh: the directory watch must find it, and the peers of both
	// ends must be resolved once both namespaces are known.
	waitFor(t, r, 5*time.Second, "namespace "+h.Name+" with resolved veth peers", func() bool {
		ns, ok := r.Namespace(h.Inode)
		if !ok || ns.Label != h.Name {
			return false
		}
		e, ok := r.Link(h.Inode, h.Ifindex)
		if !ok || e.PeerNetns != topo.HostInode() || e.PeerIndex != h.HostVethIndex {
			return false
		}
		hv, ok := r.Link(topo.HostInode(), h.HostVethIndex)
		return ok && hv.PeerNetns == h.Inode && hv.PeerIndex == h.Ifindex && hv.MasterName == topo.Bridge
	})

	// Deleting it makes it disappear, links and all.
	if err := topo.RemoveHost(h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "namespace "+h.Name+" to disappear", func() bool {
		_, ok := r.Namespace(h.Inode)
		_, vok := r.Link(topo.HostInode(), h.HostVethIndex)
		return !ok && !vok && len(r.Links(h.Inode)) == 0
	})
	if got := r.Label(h.Inode); got != "netns:"+strconv.FormatUint(uint64(h.Inode), 10) {
		t.Errorf("Label after removal = %q", got)
	}
}

func TestNamespaceFoundByRefresh(t *testing.T) {
	privtest.RequireRoot(t)
	r := newResolver(t, Options{})
	pid, ino, stop := startNetnsProcess(t)
	if _, ok := r.Namespace(ino); ok {
		t.Log("namespace known before Refresh (a concurrent rescan found it)")
	}
	r.Refresh()
	waitFor(t, r, 5*time.Second, "process namespace after Refresh", func() bool {
		_, ok := r.Namespace(ino)
		return ok
	})
	ns, _ := r.Namespace(ino)
	wantLabel := fmt.Sprintf("netns:%d (pid %d", ino, pid)
	if !strings.HasPrefix(ns.Label, wantLabel) || ns.Path != fmt.Sprintf("/proc/%d/ns/net", pid) {
		t.Errorf("Namespace = %+v, want label %q...", ns, wantLabel)
	}
	if lo, ok := r.LinkByName(ino, "lo"); !ok || lo.Up {
		t.Errorf("lo in fresh netns: %+v %v", lo, ok)
	}
	// The process exits: its namespace goes (pidfd triggers the rescan).
	stop()
	waitFor(t, r, 5*time.Second, "process namespace to disappear", func() bool {
		_, ok := r.Namespace(ino)
		return !ok
	})
}

func TestOpenNetns(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	h := topo.Hosts[0]
	r := newResolver(t, Options{})

	for _, spec := range []string{h.Name, h.Path} {
		ns, err := r.OpenNetns(spec)
		if err != nil || ns.Inode != h.Inode || ns.Label != h.Name {
			t.Errorf("OpenNetns(%q) = %+v, %v", spec, ns, err)
		}
	}

	pid, ino, _ := startNetnsProcess(t)
	p := fmt.Sprintf("/proc/%d/ns/net", pid)
	ns, err := r.OpenNetns(p)
	if err != nil || ns.Inode != ino || ns.Path != p || !strings.HasPrefix(ns.Label, fmt.Sprintf("netns:%d (pid %d", ino, pid)) {
		t.Errorf("OpenNetns(%q) = %+v, %v", p, ns, err)
	}
	if _, ok := r.LinkByName(ino, "lo"); !ok {
		t.Errorf("lo of opened namespace unknown")
	}

	_, err = r.OpenNetns("no-such-ns-hoptrace")
	want := `netns "no-such-ns-hoptrace": no such namespace (looked in /var/run/netns, /var/run/docker/netns)`
	if err == nil || err.Error() != want {
		t.Errorf("OpenNetns(bad name) error = %v, want %s", err, want)
	}
	if _, err := r.OpenNetns("/nonexistent/ns"); err == nil || err.Error() != `netns "/nonexistent/ns": no such file` {
		t.Errorf("OpenNetns(bad path) error = %v", err)
	}
	if _, err := r.OpenNetns("/proc/self/ns/uts"); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("OpenNetns(uts ns) error = %v", err)
	}
	if _, err := r.OpenNetns("/proc/self/status"); err == nil || !strings.Contains(err.Error(), "not a namespace file") {
		t.Errorf("OpenNetns(plain file) error = %v", err)
	}
	if _, err := r.OpenNetns(""); err == nil {
		t.Error("OpenNetns(\"\") succeeded")
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	privtest.RequireRoot(t)
	testnet.New(t, testnet.Options{Hosts: 2})
	before := runtime.NumGoroutine()
	ctx := context.Background()
	r, err := New(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if n := runtime.NumGoroutine(); n <= before {
		t.Fatalf("no goroutines started? %d <= %d", n, before)
	}
	r.Refresh()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.Close() // idempotent
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
	if _, ok := r.Link(r.HostInode(), 1); ok {
		t.Error("Link answers after Close")
	}
	if _, err := r.OpenNetns("/proc/self/ns/net"); err == nil {
		t.Error("OpenNetns succeeded after Close")
	}
}

func BenchmarkLink(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	r, err := New(context.Background(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	host := r.HostInode()
	b.ReportAllocs()
	for b.Loop() {
		r.Link(host, 1)
		r.Label(host)
	}
}

func TestDockerSandboxDir(t *testing.T) {
	privtest.RequireRoot(t)
	// The directory does not exist when the resolver starts, as before
	// Docker's first container: its appearance must be noticed too.
	dockerDir := t.TempDir() + "/docker/netns"
	r := newResolver(t, Options{DockerNetnsDir: dockerDir})
	pid, ino, stop := startNetnsProcess(t)

	if err := os.MkdirAll(dockerDir, 0o755); err != nil {
		t.Fatal(err)
	}
	const id = "0123456789ab"
	file := dockerDir + "/" + id
	if err := os.WriteFile(file, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	// Mount after the file exists, as Docker does: mounts raise no inotify
	// event, the resolver has to look again.
	time.Sleep(50 * time.Millisecond)
	if err := syscall.Mount(fmt.Sprintf("/proc/%d/ns/net", pid), file, "none", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount netns: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(file, syscall.MNT_DETACH) })
	t0 := time.Now()
	waitFor(t, r, 10*time.Second, "Docker sandbox namespace", func() bool {
		ns, ok := r.Namespace(ino)
		return ok && ns.Label == "docker:"+id && ns.Path == file
	})
	t.Logf("found %v after the mount", time.Since(t0))
	ns, err := r.OpenNetns(id)
	if err != nil || ns.Inode != ino || ns.Label != "docker:"+id {
		t.Errorf("OpenNetns(sandbox id) = %+v, %v", ns, err)
	}
	_, err = r.OpenNetns("nope")
	if want := `netns "nope": no such namespace (looked in /var/run/netns, ` + dockerDir + `)`; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}

	// The process exits; the bind mount keeps the namespace alive and known.
	stop()
	r.Refresh()
	time.Sleep(3 * refreshInterval)
	if ns, ok := r.Namespace(ino); !ok || ns.Label != "docker:"+id {
		t.Errorf("bind-mounted namespace lost after its process exited: %+v %v", ns, ok)
	}

	// Docker tears the sandbox down: unmount and remove.
	if err := syscall.Unmount(file, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "sandbox namespace to disappear", func() bool {
		_, ok := r.Namespace(ino)
		return !ok
	})
}

// TestIproute2Netns checks the resolver against the real "ip netns", whose
// bind mounts (and mount propagation set-up) differ from testnet's.
func TestIproute2Netns(t *testing.T) {
	privtest.RequireRoot(t)
	ip := privtest.Tool(t, "ip", "iproute2")
	r := newResolver(t, Options{})
	name := fmt.Sprintf("htip%d", os.Getpid()%100000)
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ip, "netns", "del", name).Run() })
	ino, err := NetnsInode(NamedNetnsDir + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, 5*time.Second, "ip netns "+name, func() bool {
		ns, ok := r.Namespace(ino)
		return ok && ns.Label == name
	})
	if out, err := exec.Command(ip, "netns", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	waitFor(t, r, 5*time.Second, "ip netns "+name+" to go", func() bool {
		_, ok := r.Namespace(ino)
		return !ok
	})
}

// TestManyNamespaces creates 30 namespaces in a burst while the resolver runs:
// dumps get interrupted by concurrent changes and subscriptions see bursts,
// yet every veth pair must end up resolved both ways.
func TestManyNamespaces(t *testing.T) {
	privtest.RequireRoot(t)
	if testing.Short() {
		t.Skip("burst of 30 namespaces skipped in -short mode")
	}
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	r := newResolver(t, Options{})
	var hs []*testnet.Host
	t0 := time.Now()
	for i := 0; i < 30; i++ {
		hs = append(hs, topo.AddHost(t))
	}
	t.Logf("30 namespaces created in %v", time.Since(t0))
	t0 = time.Now()
	defer func() { t.Logf("resolver caught up %v after the last change", time.Since(t0)) }()
	waitFor(t, r, 30*time.Second, "all 30 veth pairs resolved", func() bool {
		for _, h := range hs {
			hv, ok := r.Link(topo.HostInode(), h.HostVethIndex)
			if !ok || hv.PeerNetns != h.Inode || hv.PeerIndex != h.Ifindex || hv.MasterIndex != topo.BridgeIndex {
				return false
			}
			e, ok := r.Link(h.Inode, h.Ifindex)
			if !ok || e.PeerNetns != topo.HostInode() || e.PeerIndex != h.HostVethIndex || !slices.Contains(addrStrings(e.Addrs), h.Addr.String()) {
				return false
			}
		}
		return true
	})
	t.Logf("resolved %v after the last creation", time.Since(t0))
	t0 = time.Now()
	for _, h := range hs[:15] {
		if err := topo.RemoveHost(h); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("15 namespaces removed in %v", time.Since(t0))
	t0 = time.Now()
	waitFor(t, r, 30*time.Second, "15 removed namespaces gone", func() bool {
		for _, h := range hs[:15] {
			if _, ok := r.Namespace(h.Inode); ok {
				return false
			}
			if _, ok := r.Link(topo.HostInode(), h.HostVethIndex); ok {
				return false
			}
		}
		return true
	})
	for _, h := range hs[15:] {
		if _, ok := r.Namespace(h.Inode); !ok {
			t.Errorf("namespace %s lost", h.Name)
		}
	}
}
