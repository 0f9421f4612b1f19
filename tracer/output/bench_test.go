package output

import (
	"io"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// benchPath is a five-hop UDP path from ns-a to ns-b across br0, as Describe
// builds it.
func benchPath() *path.Path {
	hop := func(netns, ifname, kind, dir, bridge, hook string, ts uint64) path.Hop {
		return path.Hop{Netns: netns, NetnsInode: 4026532200, Ifindex: 2, Ifname: ifname, Kind: resolve.Kind(kind), Direction: event.Direction(dir),
			Bridge: bridge, Hook: event.Tracepoint(hook), TsNs: ts, DeltaNs: 2500, SinceNs: ts - 1_000_000_000, Skb: "0xffff888100000100"}
	}
	return &path.Path{
		ID: 123456, Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), Proto: "UDP",
		Src: "10.77.0.2", Dst: "10.77.0.3", Sport: 40000, Dport: 5201, Len: 92,
		Summary: "UDP 10.77.0.2:40000 > 10.77.0.3:5201 len=92", Verdict: path.Delivered,
		End: "delivered to a socket in ns-b",
		Hops: []path.Hop{
			hop("ns-a", "eth0", "veth", "egress", "", "net_dev_queue", 1_000_000_000),
			hop("host", "veth-a", "veth", "ingress", "br0", "netif_receive_skb", 1_000_002_500),
			hop("host", "br0", "bridge", "forward", "br0", "bridge_forward", 1_000_004_000),
			hop("host", "veth-b", "veth", "egress", "br0", "net_dev_queue", 1_000_004_000),
			hop("ns-b", "eth0", "veth", "ingress", "", "netif_receive_skb", 1_000_006_500),
		},
		Ends: []path.EndEvent{
			{Hook: "skb_copy_datagram", Netns: "ns-b", NetnsInode: 4026532201, TsNs: 1_000_009_000, Skb: "0xffff888100000100"},
			{Hook: "consume_skb", Netns: "ns-b", NetnsInode: 4026532201, TsNs: 1_000_009_800, Location: "udp_recvmsg", Skb: "0xffff888100000100"},
		},
	}
}

// BenchmarkPathJSON writes one path as a JSON line (trace --output json).
func BenchmarkPathJSON(b *testing.B) {
	w := NewWriter(io.Discard, JSON)
	p := benchPath()
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Path(p); err != nil {
			b.Fatal(err)
		}
	}
	w.Flush()
}

// BenchmarkPathText writes one path as a text block (trace's default).
func BenchmarkPathText(b *testing.B) {
	w := NewWriter(io.Discard, Text)
	p := benchPath()
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Path(p); err != nil {
			b.Fatal(err)
		}
	}
	w.Flush()
}
