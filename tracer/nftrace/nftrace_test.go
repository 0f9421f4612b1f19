package nftrace

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// ipv4ICMP is an IPv4 header (id 0x1234, 10.1.0.2 > 10.1.0.3, ICMP) and an
// echo request (id 7, seq 9).
func ipv4ICMP() (nh, th []byte) {
	nh = []byte{0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 1, 0, 2, 10, 1, 0, 3}
	th = []byte{8, 0, 0, 0, 0, 7, 0, 9}
	return
}

func traceMessage(t *testing.T, fam uint8, typ uint32, verdict int32, handle uint64, nh, th []byte) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TRACE_TABLE, "filter")
	ae.String(unix.NFTA_TRACE_CHAIN, "DOCKER-USER")
	if handle != 0 {
		ae.Uint64(unix.NFTA_TRACE_RULE_HANDLE, handle)
	}
	ae.Uint32(unix.NFTA_TRACE_TYPE, typ)
	ae.Uint32(unix.NFTA_TRACE_ID, 0xabcdef)
	if typ == traceTypePolicy {
		ae.Uint32(unix.NFTA_TRACE_POLICY, uint32(verdict))
	} else {
		ae.Nested(unix.NFTA_TRACE_VERDICT, func(nae *netlink.AttributeEncoder) error {
			nae.Uint32(unix.NFTA_VERDICT_CODE, uint32(verdict))
			return nil
		})
	}
	if nh != nil {
		ae.Bytes(unix.NFTA_TRACE_NETWORK_HEADER, nh)
		ae.Bytes(unix.NFTA_TRACE_TRANSPORT_HEADER, th)
	}
	ae.Uint32(unix.NFTA_TRACE_IIF, 5)
	ae.Uint32(unix.NFTA_TRACE_OIF, 6)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{fam, 0, 0, 0}, b...)
}

func TestDecodeTraceEvent(t *testing.T) {
	nh, th := ipv4ICMP()
	ev, err := decodeEvent(traceMessage(t, unix.NFPROTO_IPV4, traceTypeRule, verdictDrop, 12, nh, th))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Table != "filter" || ev.Chain != "DOCKER-USER" || ev.Handle != 12 || ev.Type != traceTypeRule ||
		ev.Verdict != verdictDrop || ev.ID != 0xabcdef || ev.IIf != 5 || ev.OIf != 6 || FamilyName(ev.Family) != "ip" {
		t.Fatalf("decoded %+v", ev)
	}
	want := Key{Src: netip.MustParseAddr("10.1.0.2"), Dst: netip.MustParseAddr("10.1.0.3"), Proto: 1, IPID: 0x1234, Sport: 7, Dport: 9, ICMPType: 8}
	if !ev.HasHeaders || ev.Key != want {
		t.Fatalf("key %v, want %v", ev.Key, want)
	}

	// The tracer's own metadata for the same packet gives the same key.
	m := event.Meta{EthProto: event.EthIPv4, L4Proto: 1, IpId: 0x1234, IcmpType: 8, IcmpId: 7, IcmpSeq: 9}
	copy(m.Saddr[:], []byte{10, 1, 0, 2})
	copy(m.Daddr[:], []byte{10, 1, 0, 3})
	if got := MetaKey(&m); got != want {
		t.Fatalf("MetaKey %v, want %v", got, want)
	}

	// A policy event carries the policy as its verdict.
	ev, err = decodeEvent(traceMessage(t, unix.NFPROTO_IPV4, traceTypePolicy, verdictDrop, 0, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != traceTypePolicy || !isDrop(ev.Verdict) || ev.HasHeaders {
		t.Fatalf("policy event %+v", ev)
	}
	if _, err := decodeEvent([]byte{1}); err == nil {
		t.Fatal("a truncated message decoded")
	}
}

func TestHeaderKeyTCPAndIPv6(t *testing.T) {
	nh := make([]byte, 40)
	nh[0] = 0x60
	nh[2], nh[3] = 0xbe, 0xef
	nh[6] = unix.IPPROTO_TCP
	copy(nh[8:24], netip.MustParseAddr("fd00::2").AsSlice())
	copy(nh[24:40], netip.MustParseAddr("fd00::3").AsSlice())
	th := []byte{0x9c, 0x40, 0, 80, 0, 0, 0, 42}
	k, ok := headerKey(nh, th)
	want := Key{Src: netip.MustParseAddr("fd00::2"), Dst: netip.MustParseAddr("fd00::3"), Proto: 6, IPID: 0xbeef, Sport: 40000, Dport: 80, TCPSeq: 42}
	if !ok || k != want {
		t.Fatalf("key %v, want %v", k, want)
	}
	if _, ok := headerKey([]byte{0x45, 0}, nil); ok {
		t.Fatal("a short IPv4 header gave a key")
	}
}

func TestVerdictNames(t *testing.T) {
	for v, want := range map[int32]string{0: "drop", 1: "accept", -3: "jump", -5: "return", 0x10000: "drop"} {
		if got := VerdictName(v); got != want {
			t.Errorf("VerdictName(%d) = %s, want %s", v, got, want)
		}
	}
	if !isDrop(0x10000) || isDrop(verdictAccept) || isDrop(verdictJump) {
		t.Error("isDrop")
	}
}

func TestStoreKeepsDropsClosestInTime(t *testing.T) {
	s := newStore()
	k := Key{Proto: 1, IPID: 1}
	s.add(k, 1000, Event{Type: traceTypeRule, Verdict: verdictAccept, Handle: 1})
	s.add(k, 1000, Event{Type: traceTypeRule, Verdict: verdictJump, Handle: 2})
	if _, ok := s.lookup(k, 1000, window); ok {
		t.Fatal("accept and jump verdicts were kept as drops")
	}
	s.add(k, 5_000_000_000, Event{Type: traceTypeRule, Verdict: verdictDrop, Handle: 3})
	s.add(k, 9_000_000_000, Event{Type: traceTypePolicy, Verdict: verdictDrop})
	ev, ok := s.lookup(k, 5_100_000_000, window)
	if !ok || ev.Handle != 3 {
		t.Fatalf("lookup near the first drop: %+v %v", ev, ok)
	}
	if _, ok := s.lookup(k, 30_000_000_000, window); ok {
		t.Fatal("a drop 21s away was claimed")
	}
	if _, ok := s.lookup(Key{Proto: 6}, 5_000_000_000, window); ok {
		t.Fatal("another packet's drop was claimed")
	}
	s.prune(5_000_000_000 + uint64(keep) + 1)
	if _, ok := s.lookup(k, 5_000_000_000, window); ok {
		t.Fatal("pruned drop still found")
	}
	if _, ok := s.lookup(k, 9_000_000_000, window); !ok {
		t.Fatal("recent drop pruned")
	}
}

const nftOut = `table ip filter { # handle 1
	chain DOCKER-USER { # handle 3
		meta l4proto icmp ip saddr 172.17.0.2 ip daddr 172.17.0.3 counter packets 4 bytes 336 drop # handle 12
		ip saddr { 10.0.0.1, 10.0.0.2 } counter packets 0 bytes 0 accept # handle 14
		counter packets 10 bytes 840 return # handle 5
	}
}
`

const saveOut = `# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -s 172.17.0.2/32 -d 172.17.0.3/32 -p icmp -j DROP
-A DOCKER-USER -m set --match-set x src -j ACCEPT
-A DOCKER-USER -j RETURN
-A DOCKER-USER-2 -j RETURN
COMMIT
`

func TestRuleTexts(t *testing.T) {
	var calls []string
	rt := newRuleTexts()
	rt.run = func(name string, args ...string) ([]byte, error) {
		calls = append(calls, name+" "+strings.Join(args, " "))
		if name == "nft" {
			return []byte(nftOut), nil
		}
		return []byte(saveOut), nil
	}
	nft, ipt := rt.text("ip", "filter", "DOCKER-USER", 12)
	if nft != "meta l4proto icmp ip saddr 172.17.0.2 ip daddr 172.17.0.3 drop" {
		t.Errorf("nft text %q", nft)
	}
	if ipt != "-A DOCKER-USER -s 172.17.0.2/32 -d 172.17.0.3/32 -p icmp -j DROP" {
		t.Errorf("iptables text %q", ipt)
	}
	if nft, _ := rt.text("ip", "filter", "DOCKER-USER", 5); nft != "return" {
		t.Errorf("handle 5: %q", nft)
	}
	if len(calls) != 2 || calls[0] != "nft -a list chain ip filter DOCKER-USER" || calls[1] != "iptables-nft-save -t filter" {
		t.Errorf("commands run: %q (a known chain is listed once)", calls)
	}
	// A table iptables does not manage has no iptables form.
	calls = nil
	if _, ipt := rt.text("inet", "mine", "input", 12); ipt != "" || len(calls) != 1 {
		t.Errorf("inet table: iptables %q, calls %q", ipt, calls)
	}
}

func TestRuleString(t *testing.T) {
	r := path.Rule{Family: "ip", Table: "filter", Chain: "DOCKER-USER", Handle: 12, Text: "ip saddr 1.2.3.4 drop", Iptables: "-A DOCKER-USER -s 1.2.3.4/32 -j DROP", Verdict: "drop"}
	if got, want := r.String(), "dropped by ip filter DOCKER-USER handle 12: ip saddr 1.2.3.4 drop (iptables: -A DOCKER-USER -s 1.2.3.4/32 -j DROP)"; got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	p := path.Rule{Family: "ip", Table: "filter", Chain: "FORWARD", Verdict: "drop", Policy: true}
	if got, want := p.String(), "policy drop of ip filter FORWARD"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}
