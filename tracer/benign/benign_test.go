package benign

import (
	"math"
	"strings"
	"testing"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// fakeSyms places every function at 0x1000 * (its index + 1), 0x100 long;
// ip6_rcv_core is inlined (absent) as on some kernels.
type fakeSyms map[string]uint64

func (f fakeSyms) Range(name string) (kernel.Range, bool) {
	a, ok := f[name]
	return kernel.Range{Start: a, End: a + 0x100}, ok
}

func symsFor() fakeSyms {
	s := fakeSyms{}
	for i, fn := range []string{"ping_rcv", "icmp_rcv", "icmpv6_rcv", "ip6_mc_input", "ip_rcv_finish_core",
		"tcp_v4_rcv", "tcp_v6_rcv", "packet_rcv", "tpacket_rcv", "packet_recvmsg", "ipv6_rcv", "ipv6_list_rcv",
		"__udp4_lib_rcv", "nft_do_chain"} {
		s[fn] = uint64(i+1) * 0x1000
	}
	return s
}

// The kernels hoptrace knows, by their drop reasons: 5.10 has none, an
// early one with reasons has no IPV6DISABLED, a later one has it (values
// differ between them, as between releases).
func kernels() map[string]kernel.DropReasons {
	return map[string]kernel.DropReasons{
		"5.10": {},
		"5.17": {1: "NOT_SPECIFIED", 2: "NO_SOCKET", 3: "TCP_CSUM", 4: "OTHERHOST", 5: "QUEUE_PURGE"},
		"6.18": {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 5: "TCP_CSUM", 13: "OTHERHOST", 40: "QUEUE_PURGE", 56: "IPV6DISABLED"},
	}
}

func meta(eth uint16, l4 uint8, dst ...byte) *event.Meta {
	m := &event.Meta{EthProto: eth, L4Proto: l4}
	copy(m.Daddr[:], dst)
	return m
}

type free struct {
	name   string
	fn     string
	reason string // by name; "" none
	m      *event.Meta
}

func frees() []free {
	echoReply := meta(event.EthIPv4, event.ProtoICMP, 10, 0, 0, 1)
	echoRequest := meta(event.EthIPv4, event.ProtoICMP, 10, 0, 0, 1)
	echoRequest.IcmpType = 8
	echoReply6 := meta(event.EthIPv6, event.ProtoICMPv6, 0xfd)
	echoReply6.IcmpType = 129
	tcpFin := meta(event.EthIPv4, event.ProtoTCP, 10, 0, 0, 1)
	tcpFin.TcpFlags = 0x11
	tcpSyn := meta(event.EthIPv4, event.ProtoTCP, 10, 0, 0, 1)
	tcpSyn.TcpFlags = 0x02
	udp := meta(event.EthIPv4, event.ProtoUDP, 10, 0, 0, 1)
	mc4 := meta(event.EthIPv4, event.ProtoUDP, 239, 1, 2, 3)
	mc6 := meta(event.EthIPv6, event.ProtoUDP, 0xff, 0x02)
	uc6 := meta(event.EthIPv6, event.ProtoUDP, 0xfd, 0x68)
	var out []free
	for _, reason := range []string{"", "NOT_SPECIFIED", "NO_SOCKET", "TCP_CSUM", "OTHERHOST", "QUEUE_PURGE", "IPV6DISABLED"} {
		for _, f := range []free{
			{"echo reply at ping_rcv", "ping_rcv", reason, echoReply},
			{"echo reply at icmp_rcv", "icmp_rcv", reason, echoReply},
			{"echo request at icmp_rcv", "icmp_rcv", reason, echoRequest},
			{"ICMPv6 echo reply at icmpv6_rcv", "icmpv6_rcv", reason, echoReply6},
			{"FIN at tcp_v4_rcv", "tcp_v4_rcv", reason, tcpFin},
			{"SYN at tcp_v4_rcv", "tcp_v4_rcv", reason, tcpSyn},
			{"FIN at tcp_v6_rcv", "tcp_v6_rcv", reason, tcpFin},
			{"IPv4 multicast at ip_rcv_finish_core", "ip_rcv_finish_core.constprop.0", reason, mc4},
			{"IPv4 unicast at ip_rcv_finish_core", "ip_rcv_finish_core.constprop.0", reason, udp},
			{"IPv6 multicast at ip6_mc_input", "ip6_mc_input", reason, mc6},
			{"IPv6 multicast at ipv6_rcv", "ipv6_rcv", reason, mc6},
			{"IPv6 unicast at ipv6_rcv", "ipv6_rcv", reason, uc6},
			{"UDP at __udp4_lib_rcv", "__udp4_lib_rcv", reason, udp},
			{"UDP at nft_do_chain", "nft_do_chain", reason, udp},
			{"copy at tpacket_rcv", "tpacket_rcv", reason, udp},
		} {
			f.name += " (" + reason + ")"
			out = append(out, f)
		}
	}
	return out
}

// bpfMatch is benign_drop() of bpf/hoptrace.bpf.c over compiled entries.
func bpfMatch(entries []Entry, loc uint64, reason uint32, m *event.Meta) bool {
	for _, e := range entries {
		if loc < e.Start || loc >= e.End {
			continue
		}
		if !e.AnyReason && reason != e.Reasons[0] && reason != e.Reasons[1] {
			continue
		}
		if PacketIs(e.Packet, m) {
			return true
		}
	}
	return false
}

// Trace (Set.Match, by name) and latency (the kernel's entries, by address
// and number) classify every free alike on every kernel, but for the
// reasons latency keeps as discards, which only trace sees here.
func TestCompileAgreesWithMatch(t *testing.T) {
	syms := symsFor()
	for kname, reasons := range kernels() {
		entries, err := Compile(syms, reasons)
		if err != nil {
			t.Fatalf("%s: %v", kname, err)
		}
		set := For(reasons)
		byName := map[string]uint32{}
		for v, n := range reasons {
			byName[n] = v
		}
		for _, f := range frees() {
			if f.reason != "" && !reasons.Has(f.reason) || f.reason == "" && reasons.Available() {
				continue // this kernel never passes that
			}
			r := set.Match(f.fn, f.reason, f.m)
			loc := syms[kernel.BaseName(f.fn)] + 0x10
			inBPF := bpfMatch(entries, loc, byName[f.reason], f.m)
			if inLatency := inBPF || IsDiscard(f.reason); (r != nil) != inLatency {
				t.Errorf("%s: %s: trace %v, latency %v (kernel side %v)", kname, f.name, r, inLatency, inBPF)
			}
			if r != nil && r.Discard() && !IsDiscard(f.reason) {
				t.Errorf("%s: %s: rule %q is a discard but latency does not discard %s", kname, f.name, r.Name, f.reason)
			}
		}
	}
}

// What each rule says on each kernel, free by free.
func TestMatch(t *testing.T) {
	want := map[string]map[string]string{ // kernel -> free -> rule ("" for a drop)
		"6.18": {
			"echo reply at ping_rcv (NO_SOCKET)":                   "echo reply a raw socket took",
			"echo reply at icmp_rcv (NO_SOCKET)":                   "echo reply a raw socket took (before 6.3)",
			"echo request at icmp_rcv (NO_SOCKET)":                 "",
			"ICMPv6 echo reply at icmpv6_rcv (NO_SOCKET)":          "echo reply a raw socket took (before 6.3)",
			"FIN at tcp_v4_rcv (NOT_SPECIFIED)":                    "late TCP segment",
			"FIN at tcp_v6_rcv (NOT_SPECIFIED)":                    "late TCP segment",
			"FIN at tcp_v4_rcv (NO_SOCKET)":                        "",
			"FIN at tcp_v4_rcv (TCP_CSUM)":                         "",
			"SYN at tcp_v4_rcv (NOT_SPECIFIED)":                    "",
			"IPv4 multicast at ip_rcv_finish_core (NOT_SPECIFIED)": "IPv4 multicast not joined",
			"IPv4 unicast at ip_rcv_finish_core (NOT_SPECIFIED)":   "",
			"IPv6 multicast at ip6_mc_input (NOT_SPECIFIED)":       "IPv6 multicast not joined",
			"IPv6 multicast at ipv6_rcv (IPV6DISABLED)":            "IPv6 multicast where IPv6 is disabled",
			"IPv6 multicast at ipv6_rcv (NOT_SPECIFIED)":           "",
			"IPv6 unicast at ipv6_rcv (IPV6DISABLED)":              "",
			"UDP at __udp4_lib_rcv (NO_SOCKET)":                    "",
			"UDP at nft_do_chain (OTHERHOST)":                      "flood copy for another host",
			"UDP at __udp4_lib_rcv (QUEUE_PURGE)":                  "queued on a closed socket",
			"copy at tpacket_rcv (NOT_SPECIFIED)":                  "packet socket's copy",
			"UDP at nft_do_chain (NOT_SPECIFIED)":                  "",
			"IPv6 multicast at ip6_mc_input (IPV6DISABLED)":        "IPv6 multicast not joined",
			"ICMPv6 echo reply at icmpv6_rcv (NOT_SPECIFIED)":      "",
			"IPv4 multicast at ip_rcv_finish_core (IPV6DISABLED)":  "IPv4 multicast not joined",
			"echo reply at ping_rcv (NOT_SPECIFIED)":               "echo reply a raw socket took",
			"IPv6 multicast at ipv6_rcv (NO_SOCKET)":               "",
			"FIN at tcp_v6_rcv (NO_SOCKET)":                        "",
			"copy at tpacket_rcv (NO_SOCKET)":                      "packet socket's copy",
			"UDP at __udp4_lib_rcv (OTHERHOST)":                    "flood copy for another host",
			"echo reply at icmp_rcv (NOT_SPECIFIED)":               "",
			"IPv4 unicast at ip_rcv_finish_core (OTHERHOST)":       "flood copy for another host",
			"IPv6 unicast at ipv6_rcv (NOT_SPECIFIED)":             "",
			"SYN at tcp_v4_rcv (NO_SOCKET)":                        "",
			"echo request at icmp_rcv (NOT_SPECIFIED)":             "",
			"IPv6 multicast at ip6_mc_input (NO_SOCKET)":           "IPv6 multicast not joined",
			"IPv4 multicast at ip_rcv_finish_core (NO_SOCKET)":     "IPv4 multicast not joined",
			"IPv4 unicast at ip_rcv_finish_core (NO_SOCKET)":       "",
			"UDP at nft_do_chain (NO_SOCKET)":                      "",
			"copy at tpacket_rcv (OTHERHOST)":                      "flood copy for another host",
			"FIN at tcp_v4_rcv (QUEUE_PURGE)":                      "queued on a closed socket",
			"IPv6 multicast at ipv6_rcv (OTHERHOST)":               "flood copy for another host",
			"ICMPv6 echo reply at icmpv6_rcv (IPV6DISABLED)":       "",
			"UDP at __udp4_lib_rcv (NOT_SPECIFIED)":                "",
			"echo reply at icmp_rcv (TCP_CSUM)":                    "",
			"IPv6 unicast at ipv6_rcv (NO_SOCKET)":                 "",
			"SYN at tcp_v4_rcv (TCP_CSUM)":                         "",
			"FIN at tcp_v6_rcv (TCP_CSUM)":                         "",
			"IPv6 multicast at ipv6_rcv (TCP_CSUM)":                "",
			"UDP at nft_do_chain (TCP_CSUM)":                       "",
			"echo request at icmp_rcv (TCP_CSUM)":                  "",
			"IPv4 unicast at ip_rcv_finish_core (TCP_CSUM)":        "",
			"IPv4 multicast at ip_rcv_finish_core (TCP_CSUM)":      "IPv4 multicast not joined",
			"ICMPv6 echo reply at icmpv6_rcv (TCP_CSUM)":           "",
			"IPv6 unicast at ipv6_rcv (TCP_CSUM)":                  "",
			"UDP at __udp4_lib_rcv (TCP_CSUM)":                     "",
			"copy at tpacket_rcv (TCP_CSUM)":                       "packet socket's copy",
			"IPv6 multicast at ip6_mc_input (TCP_CSUM)":            "IPv6 multicast not joined",
			"echo reply at ping_rcv (TCP_CSUM)":                    "echo reply a raw socket took",
			"FIN at tcp_v4_rcv (OTHERHOST)":                        "flood copy for another host",
			"ICMPv6 echo reply at icmpv6_rcv (OTHERHOST)":          "flood copy for another host",
			"IPv6 unicast at ipv6_rcv (OTHERHOST)":                 "flood copy for another host",
			"UDP at nft_do_chain (QUEUE_PURGE)":                    "queued on a closed socket",
			"IPv6 multicast at ipv6_rcv (QUEUE_PURGE)":             "queued on a closed socket",
			"echo request at icmp_rcv (IPV6DISABLED)":              "",
			"UDP at __udp4_lib_rcv (IPV6DISABLED)":                 "",
			"SYN at tcp_v4_rcv (IPV6DISABLED)":                     "",
			"IPv4 unicast at ip_rcv_finish_core (IPV6DISABLED)":    "",
			"copy at tpacket_rcv (IPV6DISABLED)":                   "packet socket's copy",
			"IPv6 unicast at ipv6_rcv (QUEUE_PURGE)":               "queued on a closed socket",
		},
		"5.17": { // no IPV6DISABLED yet: ip6_rcv_core frees with NOT_SPECIFIED
			"IPv6 multicast at ipv6_rcv (NOT_SPECIFIED)": "IPv6 multicast where IPv6 is disabled",
			"IPv6 unicast at ipv6_rcv (NOT_SPECIFIED)":   "",
			"FIN at tcp_v4_rcv (NOT_SPECIFIED)":          "late TCP segment",
			"FIN at tcp_v4_rcv (NO_SOCKET)":              "",
			"echo reply at icmp_rcv (NO_SOCKET)":         "echo reply a raw socket took (before 6.3)",
			"UDP at nft_do_chain (OTHERHOST)":            "flood copy for another host",
		},
		"5.10": { // no reasons: the function and the packet alone
			"IPv6 multicast at ipv6_rcv ()":           "IPv6 multicast where IPv6 is disabled",
			"IPv6 unicast at ipv6_rcv ()":             "",
			"FIN at tcp_v4_rcv ()":                    "late TCP segment",
			"FIN at tcp_v6_rcv ()":                    "late TCP segment",
			"SYN at tcp_v4_rcv ()":                    "",
			"echo reply at icmp_rcv ()":               "echo reply a raw socket took (before 6.3)",
			"echo request at icmp_rcv ()":             "",
			"echo reply at ping_rcv ()":               "echo reply a raw socket took",
			"IPv4 multicast at ip_rcv_finish_core ()": "IPv4 multicast not joined",
			"IPv4 unicast at ip_rcv_finish_core ()":   "",
			"IPv6 multicast at ip6_mc_input ()":       "IPv6 multicast not joined",
			"UDP at __udp4_lib_rcv ()":                "",
			"UDP at nft_do_chain ()":                  "",
			"copy at tpacket_rcv ()":                  "packet socket's copy",
		},
	}
	all := map[string]free{}
	for _, f := range frees() {
		all[f.name] = f
	}
	for kname, cases := range want {
		set := For(kernels()[kname])
		for name, rule := range cases {
			f, ok := all[name]
			if !ok {
				t.Fatalf("no free %q", name)
			}
			got := ""
			if r := set.Match(f.fn, f.reason, f.m); r != nil {
				got = r.Name
			}
			if got != rule {
				t.Errorf("%s: %s: rule %q, want %q", kname, name, got, rule)
			}
		}
	}
}

// The entries a kernel gets: functions it lacks give none, rules that
// cannot match there give none, the reasons are that kernel's numbers.
func TestCompile(t *testing.T) {
	syms := symsFor()
	delete(syms, "ipv6_list_rcv")
	for kname, reasons := range kernels() {
		entries, err := Compile(syms, reasons)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]Entry{}
		for _, e := range entries {
			if e.Start == 0 || e.End == math.MaxUint64 {
				t.Errorf("%s: %q anywhere: no rule the kernel applies holds anywhere", kname, e.Rule)
			}
			got[e.Rule] = append(got[e.Rule], e)
		}
		if n := len(got["IPv6 multicast where IPv6 is disabled"]); n != 1 {
			t.Errorf("%s: %d IPv6-disabled entries, want 1 (ipv6_rcv: ip6_rcv_core inlined, ipv6_list_rcv absent)", kname, n)
		}
		if _, ok := got["flood copy for another host"]; ok {
			t.Errorf("%s: OTHERHOST compiled: latency keeps it as a discard by its reason", kname)
		}
		late := got["late TCP segment"]
		if len(late) != 2 {
			t.Fatalf("%s: late TCP entries %+v", kname, late)
		}
		wantReason := uint32(0)
		for v, n := range reasons {
			if n == "NOT_SPECIFIED" {
				wantReason = v
			}
		}
		if late[0].AnyReason || late[0].Reasons != [2]uint32{wantReason, wantReason} || late[0].Start != syms["tcp_v4_rcv"] {
			t.Errorf("%s: late TCP entry %+v, want reason %d at %#x", kname, late[0], wantReason, syms["tcp_v4_rcv"])
		}
		dis := got["IPv6 multicast where IPv6 is disabled"][0]
		if want := map[string]uint32{"5.10": 0, "5.17": 1, "6.18": 56}[kname]; dis.Reasons[0] != want {
			t.Errorf("%s: IPv6-disabled reason %d, want %d", kname, dis.Reasons[0], want)
		}
		if p := got["echo reply a raw socket took"]; len(p) != 1 || !p[0].AnyReason {
			t.Errorf("%s: ping_rcv entries %+v, want one of any reason", kname, p)
		}
	}
	if len(Rules()) == 0 || !strings.Contains(Rules()[0].Name, "flood") {
		t.Errorf("rules: %+v", Rules())
	}
}

func TestIsDiscard(t *testing.T) {
	for reason, want := range map[string]bool{"OTHERHOST": true, "QUEUE_PURGE": true, "NOT_SPECIFIED": false,
		"NO_SOCKET": false, "IPV6DISABLED": false, "": false} {
		if got := IsDiscard(reason); got != want {
			t.Errorf("IsDiscard(%q) = %v, want %v", reason, got, want)
		}
	}
}

// The BPF object holds MaxEntries entries, of the sizes Compile fills.
func TestEntriesFitTheObject(t *testing.T) {
	spec, err := bpfobj.LoadHoptrace()
	if err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]uint32{
		"benign_start": 8 * MaxEntries, "benign_end": 8 * MaxEntries, "benign_reason": 8 * MaxEntries,
		"benign_any_reason": MaxEntries, "benign_packet_of": 4 * MaxEntries, "benign_count": 4,
	} {
		v, ok := spec.Variables[name]
		if !ok {
			t.Fatalf("no variable %s in the BPF object", name)
		}
		if v.Size() != size || !v.Constant() {
			t.Errorf("%s: %d bytes (constant %v), want %d, constant", name, v.Size(), v.Constant(), size)
		}
	}
}
