package path

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

const (
	hostNS = 1
	nsA    = 100
	nsB    = 200
)

// testNames is the topology of ns-a and ns-b on bridge br0.
var testNames = resolve.NewStatic(hostNS, []resolve.Namespace{
	{Inode: nsA, Label: "ns-a"},
	{Inode: nsB, Label: "ns-b", Owner: "web"},
	{Inode: hostNS, Label: "host"},
},
	resolve.Link{Netns: nsA, Index: 2, Name: "eth0", Kind: "veth", PeerIndex: 10, PeerNetns: hostNS},
	resolve.Link{Netns: nsB, Index: 2, Name: "eth0", Kind: "veth", PeerIndex: 11, PeerNetns: hostNS},
	resolve.Link{Netns: hostNS, Index: 5, Name: "br0", Kind: "bridge"},
	resolve.Link{Netns: hostNS, Index: 10, Name: "veth-a", Kind: "veth", MasterIndex: 5, MasterName: "br0"},
	resolve.Link{Netns: hostNS, Index: 11, Name: "veth-b", Kind: "veth", MasterIndex: 5, MasterName: "br0"},
	resolve.Link{Netns: hostNS, Index: 3, Name: "eth1", Kind: "device"},
)

type fakeSyms map[uint64]string

func (f fakeSyms) Name(a uint64) string { return f[a] }

type fakeDrops map[uint32]string

func (f fakeDrops) Name(r uint32) string { return f[r] }

func (f fakeDrops) Available() bool { return true }

func (f fakeDrops) Has(name string) bool {
	for _, n := range f {
		if n == name {
			return true
		}
	}
	return false
}

const (
	locIcmpRcv = 0x1000
	locNft     = 0x2000
	locPingRcv = 0x3000
	locNeigh   = 0x4000
	locPurge   = 0x5000
	locTpacket = 0x6000
	locTxDone  = 0x7000
	locIcmp    = 0x8000
	locMcIn6   = 0x9000
	locIPFin   = 0xa000
	locTCPRcv  = 0xb000
)

func ev(id, ts uint64, hook event.Hook, netns, ifindex uint32) event.Event {
	e := event.Event{TsNs: ts, PktId: id, Skb: 0xffff0001, Hook: uint8(hook), Netns: netns, Ifindex: ifindex}
	e.Meta.EthProto = event.EthIPv4
	e.Meta.L4Proto = event.ProtoICMP
	e.Meta.IcmpType = 8
	copy(e.Meta.Saddr[:], []byte{10, 77, 0, 2})
	copy(e.Meta.Daddr[:], []byte{10, 77, 0, 3})
	e.Meta.IpLen = 84
	return e
}

func describer() *Describer {
	return &Describer{
		Names: testNames,
		Symbols: fakeSyms{locIcmpRcv: "icmp_rcv", locNft: "nft_do_chain", locPingRcv: "ping_rcv", locNeigh: "__neigh_event_send",
			locPurge: "sk_stream_kill_queues", locTpacket: "tpacket_rcv", locTxDone: "dummy_xmit", locIcmp: "icmp_rcv",
			locMcIn6: "ip6_mc_input", locIPFin: "ip_rcv_finish_core.constprop.0",
			locTCPRcv: "tcp_v4_rcv"},
		Drops: fakeDrops{5: "NETFILTER_DROP", 2: "NO_SOCKET", 3: "OTHERHOST", 6: "QUEUE_PURGE", 7: "NEIGH_FAILED",
			8: "NOT_SPECIFIED"},
	}
}

// assemble feeds events in the given order and flushes everything.
func assemble(t *testing.T, evs ...event.Event) Path {
	t.Helper()
	a := NewAssembler(1000, 1_000_000)
	for i := range evs {
		a.Add(&evs[i])
	}
	ps := a.Flush(true)
	if len(ps) != 1 {
		t.Fatalf("got %d packets, want 1", len(ps))
	}
	got := describer().Describe(ps[0])
	// The trace describes into one path reused from packet to packet,
	// with names cached: that must describe every packet the same.
	reusedDescriber.DescribeInto(ps[0], &reusedPath)
	reusedDescriber.ForgetNames()
	if !samePath(got, reusedPath) {
		t.Fatalf("described into a reused path:\n%+v\nfresh:\n%+v", reusedPath, got)
	}
	return got
}

var (
	reusedDescriber = func() *Describer { d := describer(); d.CacheNames = true; return d }()
	reusedPath      Path
)

// samePath compares paths, an empty list of ends the same as none.
func samePath(a, b Path) bool {
	if len(a.Ends) == 0 {
		a.Ends = nil
	}
	if len(b.Ends) == 0 {
		b.Ends = nil
	}
	return reflect.DeepEqual(a, b)
}

func TestCachedNamesUntilForgotten(t *testing.T) {
	names := resolve.NewStatic(hostNS, []resolve.Namespace{{Inode: nsA, Label: "ns-a"}, {Inode: hostNS, Label: "host"}},
		resolve.Link{Netns: nsA, Index: 2, Name: "eth0", Kind: "veth"})
	d := &Describer{Names: names, CacheNames: true}
	e := ev(1, 100, event.HookNetDevQueue, nsA, 2)
	if h := d.Hop(&e); h.Ifname != "eth0" || h.Netns != "ns-a" {
		t.Fatalf("hop named %s:%s, want ns-a:eth0", h.Netns, h.Ifname)
	}
	names.Namespaces[nsA] = resolve.Namespace{Inode: nsA, Label: "ns-renamed"}
	names.Links[nsA][2] = resolve.Link{Netns: nsA, Index: 2, Name: "eth9", Kind: "veth"}
	if h := d.Hop(&e); h.Ifname != "eth0" || h.Netns != "ns-a" {
		t.Fatalf("hop named %s:%s before ForgetNames, want the cached ns-a:eth0", h.Netns, h.Ifname)
	}
	d.ForgetNames()
	if h := d.Hop(&e); h.Ifname != "eth9" || h.Netns != "ns-renamed" {
		t.Fatalf("hop named %s:%s after ForgetNames, want ns-renamed:eth9", h.Netns, h.Ifname)
	}
	d.CacheNames = false
	names.Links[nsA][2] = resolve.Link{Netns: nsA, Index: 2, Name: "eth7", Kind: "veth"}
	if h := d.Hop(&e); h.Ifname != "eth7" {
		t.Fatalf("hop named %s without CacheNames, want eth7", h.Ifname)
	}
}

type hopWant struct{ netns, ifname, kind, dir, bridge string }

func checkHops(t *testing.T, p Path, want []hopWant) {
	t.Helper()
	var got []hopWant
	for _, h := range p.Hops {
		got = append(got, hopWant{h.Netns, h.Ifname, string(h.Kind), string(h.Direction), h.Bridge})
	}
	if len(got) != len(want) {
		t.Fatalf("hops:\n got %v\nwant %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("hop %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

func TestBridgedPathInfersForwardAndIsDelivered(t *testing.T) {
	consume := ev(1, 50_000, event.HookConsumeSkb, nsB, 2)
	consume.Location = locIcmpRcv
	// Out of order on purpose: the ring buffer is ordered per CPU only.
	p := assemble(t,
		ev(1, 20_000, event.HookNetDevQueue, hostNS, 11),
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		consume,
		ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2),
	)
	checkHops(t, p, []hopWant{
		{"ns-a", "eth0", "veth", "egress", ""},
		{"host", "veth-a", "veth", "ingress", "br0"},
		{"host", "br0", "bridge", "forward", "br0"},
		{"host", "veth-b", "veth", "egress", "br0"},
		{"ns-b", "eth0", "veth", "ingress", ""},
	})
	if !p.Hops[2].Inferred || p.Hops[2].Note != "veth-a -> veth-b" {
		t.Errorf("forward hop: inferred=%v note=%q", p.Hops[2].Inferred, p.Hops[2].Note)
	}
	if p.Hops[4].Container != "web" {
		t.Errorf("container of ns-b hop = %q, want web", p.Hops[4].Container)
	}
	wantDelta := []uint64{0, 9_000, 11_000, 0, 10_000}
	for i, h := range p.Hops {
		if h.DeltaNs != wantDelta[i] {
			t.Errorf("hop %d delta %d, want %d", i, h.DeltaNs, wantDelta[i])
		}
	}
	if p.Verdict != Delivered || !strings.Contains(p.End, "icmp_rcv") {
		t.Errorf("verdict %q end %q, want delivered by icmp_rcv", p.Verdict, p.End)
	}
	if p.Proto != "ICMP" || p.Src != "10.77.0.2" || p.Dst != "10.77.0.3" || p.Sport != 0 || p.Len != 84 {
		t.Errorf("packet fields: %+v", p)
	}
}

func TestNetfilterDropOnForwardPath(t *testing.T) {
	drop := ev(1, 40_000, event.HookKfreeSkb, hostNS, 11)
	drop.Location, drop.DropReason = locNft, 5
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		drop,
	)
	if p.Verdict != Dropped || p.DropReason != "NETFILTER_DROP" || p.DropLocation != "nft_do_chain" {
		t.Fatalf("verdict %q reason %q at %q", p.Verdict, p.DropReason, p.DropLocation)
	}
	if !strings.Contains(p.End, "veth-b") {
		t.Errorf("end %q should name the egress port the drop was charged to", p.End)
	}
}

func TestLocalDeliveryThroughBridge(t *testing.T) {
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		ev(1, 12_000, event.HookNetifReceiveSkb, hostNS, 5),
	)
	checkHops(t, p, []hopWant{
		{"ns-a", "eth0", "veth", "egress", ""},
		{"host", "veth-a", "veth", "ingress", "br0"},
		{"host", "br0", "bridge", "local", "br0"},
	})
	if p.Verdict != Delivered || !strings.Contains(p.End, "host stack") {
		t.Errorf("verdict %q end %q", p.Verdict, p.End)
	}
}

func TestLostFromSight(t *testing.T) {
	p := assemble(t, ev(1, 0, event.HookNetDevQueue, nsA, 2))
	if p.Verdict != Unfinished || !strings.Contains(p.End, "eth0") {
		t.Errorf("verdict %q end %q", p.Verdict, p.End)
	}
}

func TestLeavesThroughPhysicalDevice(t *testing.T) {
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		ev(1, 12_000, event.HookNetDevQueue, hostNS, 3),
	)
	if p.Verdict != Forwarded {
		t.Errorf("verdict %q end %q, want forwarded", p.Verdict, p.End)
	}
}

func TestPingReplyRawSocketIsNotADrop(t *testing.T) {
	drop := ev(1, 20_000, event.HookKfreeSkb, nsA, 2)
	drop.Location, drop.DropReason = locPingRcv, 2
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsB, 2),
		ev(1, 10_000, event.HookNetifReceiveSkb, nsA, 2),
		drop,
	)
	if p.Verdict != Delivered {
		t.Errorf("verdict %q end %q, want delivered", p.Verdict, p.End)
	}
}

func TestNeighbourQueueConsumeIsNotTheEnd(t *testing.T) {
	c := ev(1, 5_000, event.HookConsumeSkb, nsA, 2)
	c.Location = locNeigh
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		c,
	)
	if p.Verdict != Unfinished {
		t.Errorf("verdict %q end %q, want unfinished", p.Verdict, p.End)
	}
}

func TestAssemblerLingerIdleAndLateEvents(t *testing.T) {
	a := NewAssembler(1_000, 100_000)
	e1 := ev(1, 0, event.HookNetDevQueue, nsA, 2)
	e2 := ev(2, 0, event.HookNetDevQueue, nsA, 2)
	end := ev(1, 500, event.HookConsumeSkb, nsB, 2)
	a.Add(&e1)
	a.Add(&e2)
	a.Add(&end)
	if got := a.advanceFlush(1_000); len(got) != 0 {
		t.Fatalf("flushed %d packets before the linger passed", len(got))
	}
	got := a.advanceFlush(1_600)
	if len(got) != 1 || got[0].ID != 1 {
		t.Fatalf("after linger: got %v, want packet 1", ids(got))
	}
	late := ev(1, 2_000, event.HookConsumeSkb, nsB, 2)
	a.Add(&late)
	if a.Late() != 1 || a.Pending() != 1 {
		t.Fatalf("late=%d pending=%d, want 1 and 1", a.Late(), a.Pending())
	}
	if got := a.advanceFlush(50_000); len(got) != 0 {
		t.Fatalf("packet 2 flushed before idle")
	}
	if got := a.advanceFlush(100_000); len(got) != 1 || got[0].ID != 2 {
		t.Fatalf("after idle: got %v, want packet 2", ids(got))
	}
}

func ids(ps []*Packet) []uint64 {
	var out []uint64
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func TestEndWithoutNamespaceEndsWhereLastSeen(t *testing.T) {
	c := ev(1, 20_000, event.HookConsumeSkb, 0, 0)
	c.Location = locIcmpRcv
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 10_000, event.HookNetifReceiveSkb, nsB, 2),
		c,
	)
	if p.Verdict != Delivered || p.End != "consumed by icmp_rcv in web" {
		t.Errorf("verdict %q end %q, want consumed by icmp_rcv in web", p.Verdict, p.End)
	}
}

// advanceFlush is what a reader does once it has caught up with the ring
// buffer at time now: advance the watermark, then flush.
func (a *Assembler) advanceFlush(now uint64) []*Packet {
	a.Advance(now)
	return a.Flush(false)
}

func tcp(e event.Event, sport, dport uint16) event.Event {
	e.Meta.L4Proto = event.ProtoTCP
	e.Meta.IcmpType = 0
	e.Meta.Sport, e.Meta.Dport = sport, dport
	return e
}

func withSkb(e event.Event, skb uint64, flags uint8) event.Event {
	e.Skb, e.Flags = skb, flags
	return e
}

// A healthy TCP segment: delivered to the socket; TCP's own copy of it,
// purged when the sender closes (an skb that made no hop), is no drop.
func TestQueuePurgeOfACopyIsNoDrop(t *testing.T) {
	cp := tcp(ev(1, 40_000, event.HookCopyDatagram, nsB, 0), 40000, 80)
	purge := withSkb(tcp(ev(1, 90_000, event.HookKfreeSkb, nsA, 0), 40000, 80), 0xffff0002, event.FlagClone)
	purge.Location, purge.DropReason = locPurge, 6
	p := assemble(t,
		tcp(ev(1, 0, event.HookNetDevQueue, nsA, 2), 40000, 80),
		tcp(ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10), 40000, 80),
		tcp(ev(1, 20_000, event.HookNetDevQueue, hostNS, 11), 40000, 80),
		tcp(ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2), 40000, 80),
		cp, purge,
	)
	if p.Verdict != Delivered || p.End != "delivered to a socket in web" {
		t.Errorf("verdict %q end %q, want delivered to a socket in web", p.Verdict, p.End)
	}
	if n := len(p.Ends); n != 2 || !p.Ends[1].Copy || p.Ends[0].Copy {
		t.Errorf("ends %+v: want the purge marked as a copy", p.Ends)
	}
	// The packet itself purged from the receiver's queue: delivered, unread.
	self := tcp(ev(1, 40_000, event.HookKfreeSkb, nsB, 0), 40000, 80)
	self.Location, self.DropReason = locPurge, 6
	p = assemble(t,
		tcp(ev(1, 0, event.HookNetDevQueue, nsA, 2), 40000, 80),
		tcp(ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2), 40000, 80),
		self,
	)
	if p.Verdict != Delivered || !strings.Contains(p.End, "still queued") {
		t.Errorf("purged from the receive queue: verdict %q end %q, want delivered", p.Verdict, p.End)
	}
}

// An IPv6 multicast frame that a namespace has not joined is freed by
// ip6_mc_input (without a reason): not for that host, no drop, whatever
// the kernel says of it. A reasonless free elsewhere stays a drop.
func TestMulticastNotJoinedIsNoDrop(t *testing.T) {
	for _, c := range []struct {
		name, verdict, end string
		loc                uint64
		group4             bool
	}{
		{"ip6_mc_input", Delivered, "received by the stack of web eth0 (multicast of a group it has not joined)", locMcIn6, false},
		{"elsewhere", Dropped, "NOT_SPECIFIED", locNft, false},
		{"IPv4 group, no input route", Delivered, "(multicast of a group it has not joined)", locIPFin, true},
		{"IPv4 unicast, no input route", Dropped, "NOT_SPECIFIED", locIPFin, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			evs := []event.Event{
				ev(1, 0, event.HookNetDevQueue, nsA, 2),
				ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
				ev(1, 20_000, event.HookNetDevQueue, hostNS, 11),
				ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2),
				ev(1, 40_000, event.HookKfreeSkb, nsB, 2),
			}
			evs[4].Location, evs[4].DropReason = c.loc, 8
			if c.group4 {
				for i := range evs {
					copy(evs[i].Meta.Daddr[:], []byte{239, 1, 2, 3})
				}
			}
			p := assemble(t, evs...)
			if p.Verdict != c.verdict || !strings.Contains(p.End, c.end) {
				t.Errorf("verdict %q end %q, want %s with %q", p.Verdict, p.End, c.verdict, c.end)
			}
		})
	}
}

// The closing handshake's last segment reaching a connection already in
// TIME_WAIT is freed by tcp_v4_rcv with no reason: consumed, not dropped;
// the same function's real drops carry a reason.
func TestLateTCPSegmentIsNoDrop(t *testing.T) {
	for _, c := range []struct {
		reason  uint32
		verdict string
		end     string
	}{
		{8, Delivered, "consumed by tcp_v4_rcv in web (a late segment of a closed connection)"},
		{2, Dropped, "NO_SOCKET"},
	} {
		free := tcp(ev(1, 40_000, event.HookKfreeSkb, nsB, 0), 40000, 80)
		free.Location, free.DropReason = locTCPRcv, c.reason
		p := assemble(t,
			tcp(ev(1, 0, event.HookNetDevQueue, nsA, 2), 40000, 80),
			tcp(ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2), 40000, 80),
			free,
		)
		if p.Verdict != c.verdict || !strings.Contains(p.End, c.end) {
			t.Errorf("reason %d: verdict %q end %q, want %s with %q", c.reason, p.Verdict, p.End, c.verdict, c.end)
		}
	}
}

// tcpdump's copies (AF_PACKET clones, read from a ring or a socket) change
// no verdict: not a forwarded packet's, not a dropped one's.
func TestPacketSocketCopiesChangeNoVerdict(t *testing.T) {
	tp := withSkb(ev(1, 10_500, event.HookConsumeSkb, hostNS, 3), 0xffff0009, event.FlagClone)
	tp.Location = locTpacket
	read := withSkb(ev(1, 12_000, event.HookCopyDatagram, hostNS, 0), 0xffff000a, event.FlagClone)
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		ev(1, 10_000, event.HookNetDevQueue, hostNS, 3),
		tp, read,
	)
	if p.Verdict != Forwarded {
		t.Errorf("forwarded packet with tcpdump copies: verdict %q end %q", p.Verdict, p.End)
	}
	drop := ev(1, 40_000, event.HookKfreeSkb, hostNS, 11)
	drop.Location, drop.DropReason = locNft, 5
	p = assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		withSkb(ev(1, 9_500, event.HookCopyDatagram, hostNS, 0), 0xffff000a, event.FlagClone),
		drop,
	)
	if p.Verdict != Dropped || p.DropReason != "NETFILTER_DROP" {
		t.Errorf("dropped packet with a tcpdump copy: verdict %q end %q", p.Verdict, p.End)
	}
}

// A device that frees the packet when it has sent it (a NIC's TX
// completion, a dummy device) forwarded it.
func TestTxCompletionIsForwarded(t *testing.T) {
	done := ev(1, 15_000, event.HookConsumeSkb, hostNS, 3)
	done.Location = locTxDone
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 9_000, event.HookNetifReceiveSkb, hostNS, 10),
		ev(1, 12_000, event.HookNetDevQueue, hostNS, 3),
		done,
	)
	if p.Verdict != Forwarded || p.End != "sent out of host eth1 (device)" {
		t.Errorf("verdict %q end %q, want forwarded out of eth1", p.Verdict, p.End)
	}
}

// Verdict text names a namespace as the hop rows do: the container.
func TestVerdictNamesTheContainerLikeTheHops(t *testing.T) {
	p := assemble(t,
		ev(1, 0, event.HookNetDevQueue, nsA, 2),
		ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2),
	)
	if p.End != "received by the stack of web eth0" {
		t.Errorf("end %q, want the container's name as in the hop row", p.End)
	}
}

// A drop with no hop before it starts a path of its own; a benign one does not.
func TestDropBeforeTheFirstHop(t *testing.T) {
	k := withSkb(ev(1, 3_000_000_000, event.HookKfreeSkb, nsB, 2), 0xffff0001, event.FlagNew)
	k.Location, k.DropReason = locNeigh, 7
	p := assemble(t, k)
	if p.Verdict != Dropped || p.DropReason != "NEIGH_FAILED" || !EarlyDrop(&p) {
		t.Fatalf("verdict %q reason %q early %v", p.Verdict, p.DropReason, EarlyDrop(&p))
	}
	if want := "dropped before its first hop: in web eth0: NEIGH_FAILED at __neigh_event_send"; p.End != want {
		t.Errorf("end %q, want %q", p.End, want)
	}
	o := withSkb(ev(2, 1000, event.HookKfreeSkb, nsB, 2), 0xffff0001, event.FlagNew)
	o.DropReason = 3
	if p := assemble(t, o); EarlyDrop(&p) {
		t.Errorf("an OTHERHOST free is shown as an early drop: %q", p.End)
	}
}

// A published port: the client's SYN arrives on a host device, is DNATed,
// routed to the container's veth, and keeps its id; the hop where the
// rewrite is first seen says what changed.
func TestDNATRowAndRoutedHop(t *testing.T) {
	in := tcp(ev(1, 0, event.HookNetifReceiveSkb, hostNS, 3), 40000, 18080)
	copy(in.Meta.Saddr[:], []byte{10, 213, 9, 2})
	copy(in.Meta.Daddr[:], []byte{10, 213, 9, 1})
	out := tcp(ev(1, 20_000, event.HookNetDevQueue, hostNS, 11), 40000, 80)
	copy(out.Meta.Saddr[:], []byte{10, 213, 9, 2})
	copy(out.Meta.Daddr[:], []byte{172, 17, 0, 2})
	out.Flags = event.FlagNat
	rcv := out
	rcv.TsNs, rcv.Hook, rcv.Netns, rcv.Ifindex, rcv.Flags = 30_000, uint8(event.HookNetifReceiveSkb), nsB, 2, 0
	p := assemble(t, in, out, rcv)
	checkHops(t, p, []hopWant{
		{"host", "eth1", "device", "ingress", ""},
		{"host", "", "routed", "forward", ""},
		{"host", "veth-b", "veth", "egress", "br0"},
		{"ns-b", "eth0", "veth", "ingress", ""},
	})
	if got, want := p.Hops[2].NAT, "DNAT 10.213.9.1:18080 -> 172.17.0.2:80"; got != want {
		t.Errorf("nat %q, want %q", got, want)
	}
	if p.Hops[1].Note != "eth1 -> veth-b" || p.Hops[0].NAT != "" || p.Hops[3].NAT != "" {
		t.Errorf("routed note %q; nat on other hops %q %q", p.Hops[1].Note, p.Hops[0].NAT, p.Hops[3].NAT)
	}
	if p.Dport != 18080 || p.Dst != "10.213.9.1" {
		t.Errorf("path names the packet as first seen: dst %s:%d", p.Dst, p.Dport)
	}
}

func TestNATChangeNames(t *testing.T) {
	a := tcp(ev(1, 0, event.HookNetDevQueue, nsA, 2), 40000, 80)
	copy(a.Meta.Saddr[:], []byte{172, 17, 0, 2})
	copy(a.Meta.Daddr[:], []byte{10, 213, 9, 2})
	b := a
	copy(b.Meta.Saddr[:], []byte{10, 213, 9, 1})
	b.Meta.Sport = 1024
	if got, want := NATChange(&a.Meta, &b.Meta), "SNAT 172.17.0.2:40000 -> 10.213.9.1:1024"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	c := b
	copy(c.Meta.Daddr[:], []byte{172, 17, 0, 3})
	if got, want := NATChange(&a.Meta, &c.Meta), "DNAT 10.213.9.2:80 -> 172.17.0.3:80; SNAT 172.17.0.2:40000 -> 10.213.9.1:1024"; got != want {
		t.Errorf("hairpin: got %q, want %q", got, want)
	}
	if got := NATChange(&a.Meta, &a.Meta); got != "" {
		t.Errorf("no rewrite: got %q", got)
	}
}

// Paths finish in event time: a reader that lags (no newer event read, the
// ring buffer not known to be drained) does not cut a quiet path short.
func TestAssemblerFinishesInEventTime(t *testing.T) {
	a := NewAssembler(1_000, 100_000)
	e1 := ev(1, 0, event.HookNetDevQueue, nsA, 2)
	a.Add(&e1)
	if got := a.Flush(false); len(got) != 0 {
		t.Fatalf("flushed before any newer event or clock advance")
	}
	e2 := ev(2, 150_000, event.HookNetDevQueue, nsA, 2)
	a.Add(&e2)
	if got := a.Flush(false); len(got) != 1 || got[0].ID != 1 {
		t.Fatalf("after a newer event past idle: got %v, want packet 1", ids(got))
	}
	late := ev(1, 160_000, event.HookNetifReceiveSkb, hostNS, 10)
	a.Add(&late)
	if a.Late() != 1 {
		t.Errorf("late = %d, want 1", a.Late())
	}
	loop := NewAssembler(1_000, 100_000)
	for i := 0; i < 300; i++ {
		e := ev(3, uint64(i), event.HookNetDevQueue, nsA, 2)
		loop.Add(&e)
	}
	if loop.Capped() != 300-256 {
		t.Errorf("capped = %d, want %d", loop.Capped(), 300-256)
	}
}

// Before 6.3 icmp_rcv frees the echo reply with the NO_SOCKET ping_rcv
// returned: the same benign drop; an echo request dropped there is not.
func TestPingReplyFreedByIcmpRcvIsNotADrop(t *testing.T) {
	reply := func(typ uint8) Path {
		drop := ev(1, 20_000, event.HookKfreeSkb, nsA, 2)
		drop.Location, drop.DropReason = locIcmp, 2
		evs := []event.Event{ev(1, 0, event.HookNetDevQueue, nsB, 2), ev(1, 10_000, event.HookNetifReceiveSkb, nsA, 2), drop}
		for i := range evs {
			evs[i].Meta.IcmpType = typ
		}
		return assemble(t, evs...)
	}
	if p := reply(0); p.Verdict != Delivered || p.End != "delivered to a raw socket in ns-a" {
		t.Errorf("echo reply: verdict %q end %q", p.Verdict, p.End)
	}
	if p := reply(8); p.Verdict != Dropped {
		t.Errorf("echo request freed by icmp_rcv with NO_SOCKET: verdict %q end %q, want dropped", p.Verdict, p.End)
	}
}

// Hairpin NAT done by the bridge (br_netfilter) to a neighbour not yet
// resolved: the DNATed frame leaves through the bridge device and comes
// back in, then on from the port it arrived on. The bridge device's egress
// is no forward between ports; the forward is from the first port to the
// last.
func TestBridgedDNATThroughTheBridgeDevice(t *testing.T) {
	req := tcp(ev(1, 0, event.HookNetDevQueue, nsA, 2), 40000, 18080)
	copy(req.Meta.Saddr[:], []byte{172, 17, 0, 3})
	copy(req.Meta.Daddr[:], []byte{10, 213, 9, 1})
	in := req
	in.TsNs, in.Hook, in.Netns, in.Ifindex = 5_000, uint8(event.HookNetifReceiveSkb), hostNS, 10
	br := tcp(ev(1, 9_000, event.HookNetDevQueue, hostNS, 5), 40000, 80)
	copy(br.Meta.Saddr[:], []byte{172, 17, 0, 3})
	copy(br.Meta.Daddr[:], []byte{172, 17, 0, 2})
	br.Flags = event.FlagNat
	out := br
	out.TsNs, out.Ifindex, out.Flags = 12_000, 11, 0
	rcv := out
	rcv.TsNs, rcv.Hook, rcv.Netns, rcv.Ifindex = 14_000, uint8(event.HookNetifReceiveSkb), nsB, 2
	p := assemble(t, req, in, br, out, rcv)
	checkHops(t, p, []hopWant{
		{"ns-a", "eth0", "veth", "egress", ""},
		{"host", "veth-a", "veth", "ingress", "br0"},
		{"host", "br0", "bridge", "egress", "br0"},
		{"host", "br0", "bridge", "forward", "br0"},
		{"host", "veth-b", "veth", "egress", "br0"},
		{"ns-b", "eth0", "veth", "ingress", ""},
	})
	if got, want := p.Hops[2].NAT, "DNAT 10.213.9.1:18080 -> 172.17.0.2:80"; got != want {
		t.Errorf("nat %q, want %q", got, want)
	}
	if p.Hops[3].Note != "veth-a -> veth-b" {
		t.Errorf("forward note %q, want veth-a -> veth-b", p.Hops[3].Note)
	}
}
