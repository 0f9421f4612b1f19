package output

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/path"
)

// The hand-written encoder must produce exactly what encoding/json does:
// the JSON output is a documented contract.
func TestPathJSONMatchesEncodingJSON(t *testing.T) {
	full := path.Path{
		ID: 42, Time: time.Date(2026, 11, 27, 4, 56, 53, 327334123, time.UTC),
		Proto: "TCP", Src: "10.77.0.2", Dst: "10.77.0.3", Sport: 40000, Dport: 80, Len: 60,
		Summary: `TCP 10.77.0.2:40000 > 10.77.0.3:80 [S] "quoted" <&> tab	nl
 ctl` + "\x01 \u2028 é \xff", Verdict: "dropped", DropReason: "NETFILTER_DROP", DropLocation: "nft_do_chain",
		End: "dropped in host veth-b: NETFILTER_DROP at nft_do_chain",
		Hops: []path.Hop{
			{Netns: "ns-a", NetnsInode: 4026532178, Container: "web", Ifindex: 2, Ifname: "eth0", Kind: "veth",
				Direction: "egress", Hook: "net_dev_queue", TsNs: 1000, Skb: "0xffff888100001234"},
			{Netns: "host", NetnsInode: 4026531833, Ifindex: -1, Ifname: "br0", Kind: "bridge", Direction: "forward",
				Bridge: "br0", Hook: "bridge_forward", TsNs: 2000, DeltaNs: 1000, SinceNs: 1000, Inferred: true, Clone: true,
				Skb: "0x1", Note: "veth-a -> veth-b"},
		},
		Ends: []path.EndEvent{
			{Hook: "kfree_skb", Netns: "host", NetnsInode: 1, Ifname: "veth-b", TsNs: 3000, Reason: "NETFILTER_DROP", Location: "nft_do_chain", Skb: "0x2"},
			{Hook: "consume_skb", Netns: "ns-b", Skb: "0x3"},
		},
	}
	withRule := full
	withRule.Rule = &path.Rule{Family: "ip", Table: "filter", Chain: "DOCKER-USER", Handle: 12,
		Text: `ip saddr 172.17.0.2 meta l4proto icmp drop`, Iptables: `-A DOCKER-USER -s 172.17.0.2/32 -p icmp -j DROP`, Verdict: "drop"}
	policy := full
	policy.Rule = &path.Rule{Family: "ip", Table: "filter", Chain: "FORWARD", Verdict: "drop", Policy: true}
	for name, p := range map[string]path.Path{"full": full, "empty": {}, "no ends": {ID: 1, Hops: []path.Hop{{}}}, "rule": withRule, "policy": policy} {
		want, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendPathJSON(nil, &p); string(got) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

func BenchmarkPathJSONAppend(b *testing.B) {
	p := path.Path{ID: 42, Time: time.Now(), Proto: "ICMP", Src: "10.77.0.2", Dst: "10.77.0.3", Summary: "ICMP 10.77.0.2 > 10.77.0.3 echo request id=7 seq=1 len=84",
		Verdict: "delivered", End: "consumed by icmp_rcv in ns-b", Hops: make([]path.Hop, 5)}
	for i := range p.Hops {
		p.Hops[i] = path.Hop{Netns: "host", NetnsInode: 4026531833, Ifindex: 5, Ifname: "veth-a", Kind: "veth", Direction: "ingress", Bridge: "br0", Hook: "netif_receive_skb", Skb: "0xffff888100001234"}
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = appendPathJSON(buf[:0], &p)
	}
}
