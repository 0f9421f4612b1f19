package loader_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

// The engine follows the kernel: tcx exactly where tcx exists (Linux 6.6+),
// the tracepoints elsewhere; asking for tcx where there is none is a clear
// error, not a silent fallback. Runs on every kernel of the matrix.
func TestEngineOnThisKernel(t *testing.T) {
	privtest.RequireRoot(t)
	rel, v, err := kernel.Release()
	if err != nil {
		t.Fatal(err)
	}
	wantTCX := v.AtLeast(6, 6)
	auto, err := loader.ResolveEngine(loader.EngineAuto)
	if err != nil {
		t.Fatal(err)
	}
	want := map[bool]loader.Engine{true: loader.EngineTCX, false: loader.EngineTracepoint}[wantTCX]
	if auto != want {
		t.Errorf("auto engine on %s: %s, want %s", rel, auto, want)
	}
	if e, err := loader.ResolveEngine(loader.EngineTracepoint); err != nil || e != loader.EngineTracepoint {
		t.Errorf("tracepoint engine on %s: %v, %v", rel, e, err)
	}
	e, err := loader.ResolveEngine(loader.EngineTCX)
	if wantTCX && (err != nil || e != loader.EngineTCX) {
		t.Errorf("tcx engine on %s: %v, %v", rel, e, err)
	}
	if !wantTCX && err == nil {
		t.Errorf("tcx engine on %s (no tcx): no error", rel)
	}
	if !wantTCX {
		return
	}
	// The tcx engine loads the two tcx programs in place of the two hop
	// tracepoints, and the end tracepoints as before.
	tr, err := loader.Load(loader.Options{Engine: loader.EngineTCX})
	if err != nil {
		t.Fatalf("load tcx engine: %v", err)
	}
	defer tr.Close()
	if tr.Engine() != loader.EngineTCX {
		t.Errorf("loaded engine %s", tr.Engine())
	}
	if n := len(privtest.ProgramsOf(t, os.Getpid())); n != len(loader.HopHooks)+len(loader.EndHooks) {
		t.Errorf("%d programs loaded, want %d", n, len(loader.HopHooks)+len(loader.EndHooks))
	}
}

// Devices attached with the tcx engine show a packet's hops as the
// tracepoints do (egress as net_dev_queue, ingress as netif_receive_skb, one
// identity, ingress length without the Ethernet header), a device is never
// attached twice, and Close leaves no tcx link.
func TestTCXAttachDevices(t *testing.T) {
	privtest.RequireTCX(t, "")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	tr, err := loader.Load(loader.Options{Engine: loader.EngineTCX, FilterKinds: loader.FilterNetns})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	closed := false
	defer func() {
		if !closed {
			tr.Close()
		}
	}()
	if err := tr.SelectNetns(a.Inode, true); err != nil {
		t.Fatal(err)
	}
	host := loader.NetnsRef{Inode: topo.HostInode(), Path: "/proc/self/ns/net"}
	for _, d := range []struct {
		ns  loader.NetnsRef
		idx []int
	}{
		{loader.NetnsRef{Inode: a.Inode, Path: a.Path}, []int{a.Ifindex}},
		{loader.NetnsRef{Inode: b.Inode, Path: b.Path}, []int{b.Ifindex}},
		{host, []int{a.HostVethIndex, b.HostVethIndex, topo.BridgeIndex}},
	} {
		done, err := tr.AttachDevices(d.ns, d.idx)
		if err != nil || len(done) != len(d.idx) {
			t.Fatalf("attach %v in %d: %v, %v", d.idx, d.ns.Inode, done, err)
		}
		if again, err := tr.AttachDevices(d.ns, d.idx); err != nil || len(again) != 0 {
			t.Errorf("second attach of %v: %v, %v", d.idx, again, err)
		}
	}
	// A device that does not exist is skipped, not an error.
	if done, err := tr.AttachDevices(host, []int{1 << 30}); err != nil || len(done) != 0 {
		t.Errorf("attach a missing device: %v, %v", done, err)
	}
	progs := privtest.ProgramsOf(t, os.Getpid())
	links := privtest.TCXLinksOf(t, progs)
	if len(links) != 2*5 {
		t.Fatalf("%d tcx links, want 10 (ingress and egress on 5 devices)", len(links))
	}

	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), 7411), []byte("tcx")); err != nil {
		t.Fatal(err)
	}
	type seen struct {
		hook    event.Hook
		netns   uint32
		ifindex uint32
	}
	var got []seen
	ids := map[uint64]bool{}
	lens := map[event.Hook]uint32{}
	readEvents(t, rd, 3*time.Second, func(e *event.Event) bool {
		if e.Meta.L4Proto != event.ProtoUDP || e.Meta.Dport != 7411 || event.IsEnd(event.Hook(e.Hook)) {
			return false
		}
		got = append(got, seen{event.Hook(e.Hook), e.Netns, e.Ifindex})
		ids[e.PktId] = true
		lens[event.Hook(e.Hook)] = e.Len
		return len(got) == 4
	})
	h := topo.HostInode()
	want := []seen{
		{event.HookNetDevQueue, a.Inode, uint32(a.Ifindex)},
		{event.HookNetifReceiveSkb, h, uint32(a.HostVethIndex)},
		{event.HookNetDevQueue, h, uint32(b.HostVethIndex)},
		{event.HookNetifReceiveSkb, b.Inode, uint32(b.Ifindex)},
	}
	if len(got) != len(want) {
		t.Fatalf("hops %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("hop %d: %v, want %v", i, got[i], want[i])
		}
	}
	if len(ids) != 1 {
		t.Errorf("%d packet identities across the hops, want 1", len(ids))
	}
	// 3 bytes of payload, 8 UDP, 20 IP; egress also counts the 14-byte Ethernet header
	if lens[event.HookNetDevQueue] != 45 || lens[event.HookNetifReceiveSkb] != 31 {
		t.Errorf("lengths %v: want 45 at egress, 31 at ingress", lens)
	}

	if err := tr.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	closed = true
	if left := privtest.WaitLinksGone(links, 5*time.Second); len(left) != 0 {
		t.Fatalf("tcx links %v left after Close", left)
	}
}

// A tcx link follows its device into another namespace: after the move the
// device is not attached again (no second copy of the programs), the old
// key's links are kept while the device lives and closed once it is gone.
func TestTCXLinkFollowsMovedDevice(t *testing.T) {
	privtest.RequireTCX(t, "")
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	tr, err := loader.Load(loader.Options{Engine: loader.EngineTCX})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()
	// a veth pair of this test's own, created in the host namespace
	name := fmt.Sprintf("htm%x", time.Now().UnixNano()&0xffffff)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "a"}, PeerName: name + "b"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(veth) })
	peer, err := netlink.LinkByName(name + "b")
	if err != nil {
		t.Fatal(err)
	}
	host := loader.NetnsRef{Inode: topo.HostInode(), Path: "/proc/self/ns/net"}
	if done, err := tr.AttachDevices(host, []int{peer.Attrs().Index}); err != nil || len(done) != 1 {
		t.Fatalf("attach %s: %v, %v", name+"b", done, err)
	}
	links := privtest.TCXLinksOf(t, privtest.ProgramsOf(t, os.Getpid()))
	if len(links) != 2 {
		t.Fatalf("%d tcx links, want 2", len(links))
	}

	// move it into the topology's namespace, as Docker moves a container's end
	ns := topo.Hosts[0]
	nsh, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	if err := netlink.LinkSetNsFd(peer, int(nsh)); err != nil {
		t.Fatalf("move %s: %v", name+"b", err)
	}
	if err := tr.ForgetDevice(loader.DevKey{Netns: host.Inode, Ifindex: peer.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	var moved netlink.Link
	err = ns.Do(func() error {
		var err error
		moved, err = netlink.LinkByName(name + "b")
		return err
	})
	if err != nil {
		t.Fatalf("%s in %s: %v", name+"b", ns.Name, err)
	}
	in, eg := ownTCXPrograms(t, ns.Path, name+"b")
	if len(in) != 1 || len(eg) != 1 {
		t.Fatalf("moved device's tcx programs: ingress %v egress %v, want one each (the links follow it)", in, eg)
	}
	newKey := loader.DevKey{Netns: ns.Inode, Ifindex: moved.Attrs().Index}
	if done, err := tr.AttachDevices(loader.NetnsRef{Inode: ns.Inode, Path: ns.Path}, []int{newKey.Ifindex}); err != nil || len(done) != 1 || !tr.Attached(newKey) {
		t.Fatalf("attach the moved device: %v, %v", done, err)
	}
	if in, eg := ownTCXPrograms(t, ns.Path, name+"b"); len(in) != 1 || len(eg) != 1 {
		t.Errorf("moved device attached twice: ingress %v egress %v", in, eg)
	}

	// deleted: the kept links are closed by PruneMoved
	if err := netlink.LinkDel(veth); err != nil {
		t.Fatal(err)
	}
	if err := tr.ForgetDevice(newKey); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := tr.PruneMoved(); err != nil {
			t.Fatal(err)
		}
		if left := privtest.WaitLinksGone(links, 100*time.Millisecond); len(left) == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("links %v of a deleted device still open", left)
		}
	}
}

// readEvents hands each event from the ring buffer to f until f says it has
// seen enough or the time is up.
// ownTCXPrograms is privtest.TCXPrograms without the programs of other
// processes (another tracer on the host attaches to every device too).
func ownTCXPrograms(t *testing.T, nsPath, ifname string) (ingress, egress []ebpf.ProgramID) {
	t.Helper()
	ours := privtest.ProgramsOf(t, os.Getpid())
	in, eg := privtest.TCXPrograms(t, nsPath, ifname)
	keep := func(ids []ebpf.ProgramID) []ebpf.ProgramID {
		var out []ebpf.ProgramID
		for _, id := range ids {
			if slices.Contains(ours, id) {
				out = append(out, id)
			}
		}
		return out
	}
	return keep(in), keep(eg)
}

func readEvents(t *testing.T, rd *ringbuf.Reader, timeout time.Duration, f func(*event.Event) (enough bool)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var e event.Event
		if err := event.Decode(rec.RawSample, &e); err != nil {
			t.Fatal(err)
		}
		if f(&e) {
			return
		}
	}
}
