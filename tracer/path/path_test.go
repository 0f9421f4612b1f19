package path

import (
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

const (
	locIcmpRcv = 0x1000
	locNft     = 0x2000
	locPingRcv = 0x3000
	locNeigh   = 0x4000
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
		Names:   testNames,
		Symbols: fakeSyms{locIcmpRcv: "icmp_rcv", locNft: "nft_do_chain", locPingRcv: "ping_rcv", locNeigh: "__neigh_event_send"},
		Drops:   fakeDrops{5: "NETFILTER_DROP", 2: "NO_SOCKET", 3: "OTHERHOST"},
	}
}

// assemble feeds events in the given order and flushes everything.
func assemble(t *testing.T, evs ...event.Event) Path {
	t.Helper()
	a := NewAssembler(1000, 1_000_000)
	for i := range evs {
		a.Add(&evs[i])
	}
	ps := a.Flush(1<<62, true)
	if len(ps) != 1 {
		t.Fatalf("got %d packets, want 1", len(ps))
	}
	return describer().Describe(ps[0])
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
	if got := a.Flush(1_000, false); len(got) != 0 {
		t.Fatalf("flushed %d packets before the linger passed", len(got))
	}
	got := a.Flush(1_600, false)
	if len(got) != 1 || got[0].ID != 1 {
		t.Fatalf("after linger: got %v, want packet 1", ids(got))
	}
	late := ev(1, 2_000, event.HookConsumeSkb, nsB, 2)
	a.Add(&late)
	if a.Late() != 1 || a.Pending() != 1 {
		t.Fatalf("late=%d pending=%d, want 1 and 1", a.Late(), a.Pending())
	}
	if got := a.Flush(50_000, false); len(got) != 0 {
		t.Fatalf("packet 2 flushed before idle")
	}
	if got := a.Flush(100_000, false); len(got) != 1 || got[0].ID != 2 {
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
