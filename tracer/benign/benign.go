// Package benign holds the rules that tell a kfree_skb that is no failure of
// the packet (a flood copy for another host, an echo reply a raw socket
// took, a late TCP segment, ...) from a drop. It is the one description both
// ends use: trace (tracer/path) matches ends against it by name, and latency
// mode gets it compiled for the running kernel (Compile: code ranges from
// kallsyms, reason numbers from BTF) into the constants bpf/hoptrace.bpf.c's
// benign_drop() reads. Adding a rule is one entry in Rules.
package benign

import (
	"fmt"
	"math"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// Packet is a condition on the freed packet's headers.
type Packet = bpfobj.HoptraceBenignPacket

// The packet conditions (enum benign_packet in bpf/hoptrace.bpf.c).
const (
	AnyPacket     = bpfobj.HoptraceBenignPacketBENIGN_ANY_PACKET
	EchoReply     = bpfobj.HoptraceBenignPacketBENIGN_ECHO_REPLY // ICMP or ICMPv6 echo reply
	IPv4Multicast = bpfobj.HoptraceBenignPacketBENIGN_IPV4MULTICAST
	IPv6Multicast = bpfobj.HoptraceBenignPacketBENIGN_IPV6MULTICAST
	TCPNoSYN      = bpfobj.HoptraceBenignPacketBENIGN_TCP_NO_SYN // a TCP segment without SYN
)

// PacketIs reports whether a packet's headers meet the condition; the BPF
// side's benign_packet_is() is the same test.
func PacketIs(p Packet, m *event.Meta) bool {
	switch p {
	case AnyPacket:
		return true
	case EchoReply:
		return m.L4Proto == event.ProtoICMP && m.IcmpType == 0 || m.L4Proto == event.ProtoICMPv6 && m.IcmpType == 129
	case IPv4Multicast:
		return m.EthProto == event.EthIPv4 && m.Daddr[0]&0xf0 == 0xe0
	case IPv6Multicast:
		return m.EthProto == event.EthIPv6 && m.Daddr[0] == 0xff
	case TCPNoSYN:
		return m.L4Proto == event.ProtoTCP && m.TcpFlags&tcpSYN == 0
	}
	return false
}

// tcpSYN is SYN in the TCP header's flags byte.
const tcpSYN = 0x02

// Ending is how trace words the end of a branch such a free ends.
type Ending uint8

const (
	// Copy: a copy of the packet for another host (or a packet socket's):
	// the branch was received by the stack where it was freed.
	Copy Ending = iota
	// RawSocket: delivered to a raw socket.
	RawSocket
	// Consumed: consumed by the freeing function.
	Consumed
	// Queued: delivered to a socket, still queued when it closed.
	Queued
)

// Rule is one kind of free that is no drop. A free matches when it happens
// in one of Funcs (any, if none), with one of Reasons (any, if none), of a
// packet Packet accepts.
type Rule struct {
	Name string
	// Funcs are the kernel functions that free it, by base name (a
	// ".constprop.0" copy is the function); nil: anywhere.
	Funcs []string
	// Reasons are drop reason names (enum skb_drop_reason without its
	// SKB_DROP_REASON_ prefix), at most two; nil: any reason.
	Reasons []string
	// NoReason: where the kernel has none of Reasons, a free without a
	// reason matches instead: NOT_SPECIFIED, or none at all before 5.17.
	// Without it the rule never matches on such a kernel.
	NoReason bool
	Packet   Packet
	Ending   Ending
	// Note says why in trace's words, "" for "<REASON> drop of a copy".
	Note string
}

// Discard reports rules latency shows by their reason as a discard
// (StepDiscard in tracer/latency) rather than the kernel counting them as
// consumed: a reason anywhere, of any packet, which the histogram key keeps.
func (r *Rule) Discard() bool {
	return len(r.Funcs) == 0 && r.Packet == AnyPacket && len(r.Reasons) > 0 && !r.NoReason
}

// Rules are the benign frees, in the order trace tries them.
func Rules() []Rule {
	return []Rule{
		{
			// ip_rcv: a bridge's flood copy reaching a namespace whose MAC
			// it was not for, while the packet went on to its destination.
			Name: "flood copy for another host", Reasons: []string{"OTHERHOST"},
		},
		{
			// A bridge floods multicast to every port (IGMP and MLD
			// reports included): not for a namespace that has not joined
			// the group. IPv6: ip6_mc_input's discard.
			Name: "IPv6 multicast not joined", Funcs: []string{"ip6_mc_input"},
			Note: "multicast of a group it has not joined",
		},
		{
			// IPv4: the input route refused in ip_rcv_finish_core.
			Name: "IPv4 multicast not joined", Funcs: []string{"ip_rcv_finish_core"}, Packet: IPv4Multicast,
			Note: "multicast of a group it has not joined",
		},
		{
			// IPv6 multicast a bridge floods to a namespace or device with
			// IPv6 disabled (net.ipv6.conf.<dev>.disable_ipv6=1): none of
			// its business. ip6_rcv_core frees it; before the reason
			// existed, with none.
			Name: "IPv6 multicast where IPv6 is disabled", Funcs: []string{"ip6_rcv_core", "ipv6_rcv", "ipv6_list_rcv"},
			Reasons: []string{"IPV6DISABLED"}, NoReason: true, Packet: IPv6Multicast,
			Note: "IPv6 multicast where IPv6 is disabled",
		},
		{
			// The closing handshake's last FIN or ACK reaching a
			// connection already in TIME_WAIT (answered from there), or a
			// segment not addressed to this host: freed with no reason;
			// real drops there carry one (NO_SOCKET, TCP_CSUM, ...).
			// Before 5.17 no free has a reason: the function and the
			// packet say it alone, and that last segment is never a SYN,
			// while the commonest drop there is (a connection refused:
			// no socket), which stays a drop.
			Name: "late TCP segment", Funcs: []string{"tcp_v4_rcv", "tcp_v6_rcv"},
			Reasons: []string{"NOT_SPECIFIED"}, NoReason: true, Packet: TCPNoSYN, Ending: Consumed,
			Note: "a late segment of a closed connection",
		},
		{
			// An echo reply no ping socket wanted after raw sockets took
			// their clone: ping_rcv frees it.
			Name: "echo reply a raw socket took", Funcs: []string{"ping_rcv"}, Ending: RawSocket,
		},
		{
			// Before 6.3 icmp_rcv / icmpv6_rcv free it, with the NO_SOCKET
			// ping_rcv returned (none before 5.17).
			Name: "echo reply a raw socket took (before 6.3)", Funcs: []string{"icmp_rcv", "icmpv6_rcv"},
			Reasons: []string{"NO_SOCKET"}, NoReason: true, Packet: EchoReply, Ending: RawSocket,
		},
		{
			// A packet still queued on a socket when it closed: it had
			// been delivered (or was TCP's copy kept for retransmission).
			Name: "queued on a closed socket", Reasons: []string{"QUEUE_PURGE"}, Ending: Queued,
		},
		{
			// Packet sockets (tcpdump) free their copies.
			Name: "packet socket's copy", Funcs: []string{"packet_rcv", "tpacket_rcv", "packet_recvmsg"},
		},
	}
}

// Reasons is what a kernel says of its drop reasons; kernel.DropReasons
// implements it.
type Reasons interface {
	// Available: the kernel passes reasons (5.17+).
	Available() bool
	// Has reports whether the kernel has the named reason.
	Has(name string) bool
}

// accept is which reasons a rule matches on one kernel.
type accept uint8

const (
	acceptAny          accept = iota // any reason
	acceptNamed                      // one of Rule.Reasons
	acceptNotSpecified               // NOT_SPECIFIED (the kernel has none of Rule.Reasons)
	acceptNone                       // no reason: a kernel before 5.17
	acceptNever                      // the rule cannot match on this kernel
)

// accepts decides, once per kernel, which reasons a rule matches: Compile
// and Set.Match both follow it.
func (r *Rule) accepts(k Reasons) accept {
	if len(r.Reasons) == 0 {
		return acceptAny
	}
	if !k.Available() {
		if r.NoReason {
			return acceptNone
		}
		return acceptNever
	}
	for _, name := range r.Reasons {
		if k.Has(name) {
			return acceptNamed
		}
	}
	if r.NoReason && k.Has("NOT_SPECIFIED") {
		return acceptNotSpecified
	}
	return acceptNever
}

// Set is the rules as one kernel applies them.
type Set struct {
	rules   []Rule
	accepts []accept
}

// For returns the rules for a kernel with these reasons.
func For(k Reasons) *Set {
	s := &Set{rules: Rules()}
	s.accepts = make([]accept, len(s.rules))
	for i := range s.rules {
		s.accepts[i] = s.rules[i].accepts(k)
	}
	return s
}

// Match returns the rule a free matches, or nil for a drop: fn is the
// freeing function's name (kallsyms; a ".constprop.0" suffix is allowed),
// reason the reason's name ("" when the kernel passes none).
func (s *Set) Match(fn, reason string, m *event.Meta) *Rule {
	base := kernel.BaseName(fn)
	for i := range s.rules {
		r := &s.rules[i]
		if len(r.Funcs) > 0 && !contains(r.Funcs, base) {
			continue
		}
		switch s.accepts[i] {
		case acceptNamed:
			if !contains(r.Reasons, reason) {
				continue
			}
		case acceptNotSpecified:
			if reason != "NOT_SPECIFIED" {
				continue
			}
		case acceptNone:
			if reason != "" {
				continue
			}
		case acceptNever:
			continue
		}
		if PacketIs(r.Packet, m) {
			return r
		}
	}
	return nil
}

// IsDiscard reports whether latency shows a free of this reason as a
// discard: a Discard rule's reason.
func IsDiscard(reason string) bool {
	for _, r := range Rules() {
		if r.Discard() && contains(r.Reasons, reason) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// MaxEntries is how many entries the BPF side holds (BENIGN_MAX).
const MaxEntries = 24

// Entry is one compiled rule at one code range, as benign_drop() reads it.
type Entry struct {
	Rule       string // the rule's name, for messages
	Start, End uint64 // [Start, End); 0, MaxUint64: anywhere
	Reasons    [2]uint32
	AnyReason  bool
	Packet     Packet
}

// Symbols finds a function's code; *kernel.Symbols implements it.
type Symbols interface {
	Range(name string) (kernel.Range, bool)
}

// Compile turns the rules latency needs the kernel to apply (all but the
// Discard ones) into entries for a kernel with these symbols and reasons.
// A function the kernel does not have (inlined, renamed) gives no entry,
// nor does a rule that cannot match there.
func Compile(syms Symbols, reasons kernel.DropReasons) ([]Entry, error) {
	byName := make(map[string]uint32, len(reasons))
	for v, name := range reasons {
		byName[name] = v
	}
	k := dropReasons{reasons, byName}
	var out []Entry
	for _, r := range Rules() {
		if r.Discard() {
			continue
		}
		e := Entry{Rule: r.Name, Packet: r.Packet}
		switch r.accepts(k) {
		case acceptAny:
			e.AnyReason = true
		case acceptNamed:
			if len(r.Reasons) > len(e.Reasons) {
				return nil, fmt.Errorf("benign rule %q: %d reasons, at most %d", r.Name, len(r.Reasons), len(e.Reasons))
			}
			n := 0
			for _, name := range r.Reasons {
				if v, ok := byName[name]; ok {
					e.Reasons[n] = v
					n++
				}
			}
			for ; n < len(e.Reasons); n++ {
				e.Reasons[n] = e.Reasons[0]
			}
		case acceptNotSpecified:
			e.Reasons = [2]uint32{byName["NOT_SPECIFIED"], byName["NOT_SPECIFIED"]}
		case acceptNone:
			e.Reasons = [2]uint32{0, 0}
		case acceptNever:
			continue
		}
		if len(r.Funcs) == 0 {
			e.Start, e.End = 0, math.MaxUint64
			out = append(out, e)
			continue
		}
		for _, fn := range r.Funcs {
			rg, ok := syms.Range(fn)
			if !ok || rg.Start == 0 {
				continue
			}
			fe := e
			fe.Start, fe.End = rg.Start, rg.End
			out = append(out, fe)
		}
	}
	if len(out) > MaxEntries {
		return nil, fmt.Errorf("%d benign drop entries, the BPF programs hold %d (BENIGN_MAX)", len(out), MaxEntries)
	}
	return out, nil
}

// dropReasons is kernel.DropReasons as Reasons.
type dropReasons struct {
	names  kernel.DropReasons
	byName map[string]uint32
}

func (d dropReasons) Available() bool { return d.names.Available() }

func (d dropReasons) Has(name string) bool {
	_, ok := d.byName[name]
	return ok
}
