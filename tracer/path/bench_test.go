package path

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Benchmarks of the userspace hot path: every traced packet is decoded,
// stitched (Assembler.Add, then Flush) and described. The stream is UDP
// between two namespaces on a bridge, as the kernel reports it: four hop
// events (eth0 egress in ns-a, veth-a ingress, veth-b egress, eth0 ingress
// in ns-b) and two end events (copy to the socket, consume), which Describe
// turns into a five-hop path (the bridge hop is inferred). Packets start
// every 6 µs (1M events/s of event time) and overlap, and the assembler is
// flushed every 20 ms of event time, like the trace loop's poll interval.

const (
	benchPackets  = 16384      // packets in the prepared stream; reused with new ids
	benchSpacing  = 6_000      // ns between packet starts
	benchFlushGap = 20_000_000 // ns of event time between flushes
	benchLinger   = 50_000_000 // trace's defaults
	benchIdle     = 300_000_000
)

// benchNames resolves like the resolver does: a read lock and a copy of the
// Link out of a map.
type benchNames struct {
	mu    sync.RWMutex
	links map[[2]uint32]*resolve.Link
	nss   map[uint32]resolve.Namespace
}

func newBenchNames() *benchNames {
	n := &benchNames{links: map[[2]uint32]*resolve.Link{}, nss: map[uint32]resolve.Namespace{}}
	for _, l := range []resolve.Link{
		{Netns: nsA, Index: 2, Name: "eth0", Kind: "veth", PeerIndex: 10, PeerNetns: hostNS, Addrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24")}},
		{Netns: nsB, Index: 2, Name: "eth0", Kind: "veth", PeerIndex: 11, PeerNetns: hostNS, Addrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.3/24")}},
		{Netns: hostNS, Index: 5, Name: "br0", Kind: "bridge", Addrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}},
		{Netns: hostNS, Index: 10, Name: "veth-a", Kind: "veth", MasterIndex: 5, MasterName: "br0", PortState: "forwarding"},
		{Netns: hostNS, Index: 11, Name: "veth-b", Kind: "veth", MasterIndex: 5, MasterName: "br0", PortState: "forwarding"},
	} {
		l := l
		n.links[[2]uint32{l.Netns, uint32(l.Index)}] = &l
	}
	n.nss[nsA] = resolve.Namespace{Inode: nsA, Label: "ns-a", Path: "/var/run/netns/ns-a"}
	n.nss[nsB] = resolve.Namespace{Inode: nsB, Label: "ns-b", Path: "/var/run/netns/ns-b"}
	n.nss[hostNS] = resolve.Namespace{Inode: hostNS, Label: "host", Path: "/proc/1/ns/net"}
	return n
}

func (n *benchNames) Link(netns uint32, ifindex int) (resolve.Link, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if l := n.links[[2]uint32{netns, uint32(ifindex)}]; l != nil {
		return *l, true
	}
	return resolve.Link{}, false
}

func (n *benchNames) Namespace(inode uint32) (resolve.Namespace, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	ns, ok := n.nss[inode]
	return ns, ok
}

func (n *benchNames) HostInode() uint32 { return hostNS }

const locUDPRecv = 0x5000

// udpPacket returns the six events of one UDP packet from ns-a to ns-b.
func udpPacket(id, start uint64) []event.Event {
	mk := func(dt uint64, hook event.Hook, netns, ifindex uint32, skb uint64) event.Event {
		e := event.Event{TsNs: start + dt, PktId: id, Skb: skb, Hook: uint8(hook), Netns: netns, Ifindex: ifindex, Len: 92, Cpu: uint16(id % 2)}
		for i, c := range []byte("eth0") {
			e.Ifname[i] = int8(c)
		}
		e.Meta.EthProto = event.EthIPv4
		e.Meta.L4Proto = event.ProtoUDP
		copy(e.Meta.Saddr[:], []byte{10, 77, 0, 2})
		copy(e.Meta.Daddr[:], []byte{10, 77, 0, 3})
		e.Meta.Sport, e.Meta.Dport = 40000, 5201
		e.Meta.IpLen = 92
		e.Meta.IpId = uint16(id)
		return e
	}
	skb := 0xffff888100000000 + id*256
	evs := []event.Event{
		mk(0, event.HookNetDevQueue, nsA, 2, skb),
		mk(2_500, event.HookNetifReceiveSkb, hostNS, 10, skb),
		mk(4_000, event.HookNetDevQueue, hostNS, 11, skb),
		mk(6_500, event.HookNetifReceiveSkb, nsB, 2, skb),
		mk(9_000, event.HookCopyDatagram, nsB, 0, skb),
		mk(9_800, event.HookConsumeSkb, nsB, 0, skb),
	}
	evs[0].Flags = event.FlagNew
	evs[5].Location = locUDPRecv
	return evs
}

// udpStream is benchPackets packets' events in the order of their times.
func udpStream() []event.Event {
	var evs []event.Event
	for i := uint64(0); i < benchPackets; i++ {
		evs = append(evs, udpPacket(i+1, 1_000_000_000+i*benchSpacing)...)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].TsNs < evs[j].TsNs })
	return evs
}

// encode writes events as the ring buffer holds them.
func encode(tb testing.TB, evs []event.Event) [][]byte {
	out := make([][]byte, len(evs))
	for i := range evs {
		var buf bytes.Buffer
		if err := binary.Write(&buf, binary.LittleEndian, &evs[i]); err != nil {
			tb.Fatal(err)
		}
		out[i] = buf.Bytes()
	}
	return out
}

// streamer replays a stream endlessly, shifting ids and times on each pass
// so that every pass is new packets.
type streamer struct {
	n        int
	span     uint64
	pass     uint64
	i        int
	nextFlsh uint64
}

func newStreamer(n int) *streamer {
	return &streamer{n: n, span: benchPackets * benchSpacing, nextFlsh: 1_000_000_000 + benchFlushGap}
}

// next returns the index of the next event and the id and time offsets to apply.
func (s *streamer) next() (idx int, idOff, tsOff uint64) {
	if s.i == s.n {
		s.i = 0
		s.pass++
	}
	idx = s.i
	s.i++
	return idx, s.pass * benchPackets, s.pass * s.span
}

// flushDue reports whether event time ts has passed the next flush time.
func (s *streamer) flushDue(ts uint64) bool {
	if ts < s.nextFlsh {
		return false
	}
	s.nextFlsh = ts + benchFlushGap
	return true
}

func reportEvents(b *testing.B, events int) {
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAssemble is Add for every event plus the periodic Flush; one op
// is one event.
func BenchmarkAssemble(b *testing.B) {
	stream := udpStream()
	asm := NewAssembler(benchLinger, benchIdle)
	st := newStreamer(len(stream))
	var ev event.Event
	paths := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx, idOff, tsOff := st.next()
		ev = stream[idx]
		ev.PktId += idOff
		ev.TsNs += tsOff
		asm.Add(&ev)
		if st.flushDue(ev.TsNs) {
			paths += len(asm.Flush(false))
		}
	}
	reportEvents(b, b.N)
	b.ReportMetric(float64(asm.Pending()), "pending")
	_ = paths
}

// BenchmarkDecodeStitch is event.Decode of the ring buffer record, Add and
// the periodic Flush: what the trace loop does with every event before the
// packet is described. One op is one event.
func BenchmarkDecodeStitch(b *testing.B) {
	decodeStitchFlush(b, func(asm *Assembler) { asm.Flush(false) })
}

// BenchmarkDecodeStitchDescribe adds Describe of every finished packet: the
// whole per-event userspace cost except writing the output.
func BenchmarkDecodeStitchDescribe(b *testing.B) {
	d := &Describer{Names: newBenchNames(), Symbols: fakeSyms{locUDPRecv: "udp_recvmsg"}}
	hops := 0
	decodeStitchFlush(b, func(asm *Assembler) {
		for _, p := range asm.Flush(false) {
			hops += len(d.Describe(p).Hops)
		}
	})
	if b.N > 100_000 && hops == 0 {
		b.Fatal("no path described")
	}
}

// decodeStitchFlush decodes and stitches b.N events of the stream, calling
// flush at every flush time; it reports events/s.
func decodeStitchFlush(b *testing.B, flush func(*Assembler)) {
	raw := encode(b, udpStream())
	asm := NewAssembler(benchLinger, benchIdle)
	st := newStreamer(len(raw))
	var ev event.Event
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx, idOff, tsOff := st.next()
		if err := event.Decode(raw[idx], &ev); err != nil {
			b.Fatal(err)
		}
		ev.PktId += idOff
		ev.TsNs += tsOff
		asm.Add(&ev)
		if st.flushDue(ev.TsNs) {
			flush(asm)
		}
	}
	reportEvents(b, b.N)
}

// BenchmarkDescribe describes one finished five-hop packet per op.
func BenchmarkDescribe(b *testing.B) {
	d := &Describer{Names: newBenchNames(), Symbols: fakeSyms{locUDPRecv: "udp_recvmsg"}, WallOffset: time.Duration(time.Now().UnixNano())}
	p := &Packet{ID: 1, Events: udpPacket(1, 1_000_000_000), ended: true}
	if got := len(d.Describe(p).Hops); got != 5 {
		b.Fatalf("path has %d hops, want 5", got)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = d.Describe(p)
	}
}

// BenchmarkDecodeStitchDescribeInto is the trace loop's own pattern: names
// cached within a flush, each packet described into one reused path and
// released after. One op is one event.
func BenchmarkDecodeStitchDescribeInto(b *testing.B) {
	d := &Describer{Names: newBenchNames(), Symbols: fakeSyms{locUDPRecv: "udp_recvmsg"}, CacheNames: true}
	var pa Path
	hops := 0
	decodeStitchFlush(b, func(asm *Assembler) {
		d.ForgetNames()
		for _, p := range asm.Flush(false) {
			d.DescribeInto(p, &pa)
			hops += len(pa.Hops)
			asm.Release(p)
		}
	})
	if b.N > 100_000 && hops == 0 {
		b.Fatal("no path described")
	}
}

// BenchmarkDescribeInto describes one finished five-hop packet per op into
// a reused path, names cached, as trace does.
func BenchmarkDescribeInto(b *testing.B) {
	d := &Describer{Names: newBenchNames(), Symbols: fakeSyms{locUDPRecv: "udp_recvmsg"}, WallOffset: time.Duration(time.Now().UnixNano()), CacheNames: true}
	p := &Packet{ID: 1, Events: udpPacket(1, 1_000_000_000), ended: true}
	var pa Path
	if d.DescribeInto(p, &pa); len(pa.Hops) != 5 {
		b.Fatalf("path has %d hops, want 5", len(pa.Hops))
	}
	b.ReportAllocs()
	for b.Loop() {
		d.DescribeInto(p, &pa)
	}
}
