// Package event decodes the records hoptrace's BPF programs write to the
// ring buffer and describes them: hook names, directions, packet summaries.
package event

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"unsafe"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
)

// Event is one observation of one packet at one hook, exactly as the kernel
// wrote it (struct event in bpf/hoptrace.h).
type Event = bpfobj.HoptraceEvent

// Meta is the packet's parsed headers.
type Meta = bpfobj.HoptracePktMeta

// Hook is where the observation was made.
type Hook = bpfobj.HoptraceHook

// Size is the size of one record.
const Size = int(unsafe.Sizeof(Event{}))

// ErrShort means a record is smaller than an event.
var ErrShort = errors.New("event record too short")

// Decode copies a ring buffer record into e. The record layout is the C
// struct's, which the generated Go type mirrors field for field (a test
// holds them together), so this is one copy and no allocation.
func Decode(raw []byte, e *Event) error {
	if len(raw) < Size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrShort, len(raw), Size)
	}
	*e = *(*Event)(unsafe.Pointer(&raw[0]))
	return nil
}

// Flags (enum event_flag).
const (
	FlagNew    = uint8(bpfobj.HoptraceEventFlagEVENT_F_NEW)
	FlagClone  = uint8(bpfobj.HoptraceEventFlagEVENT_F_CLONE)
	FlagCloned = uint8(bpfobj.HoptraceEventFlagEVENT_F_CLONED)
	FlagSockNS = uint8(bpfobj.HoptraceEventFlagEVENT_F_SOCK_NS)
	FlagNat    = uint8(bpfobj.HoptraceEventFlagEVENT_F_NAT)
)

// Hooks.
const (
	HookNetDevQueue     = bpfobj.HoptraceHookHOOK_NET_DEV_QUEUE
	HookNetDevStartXmit = bpfobj.HoptraceHookHOOK_NET_DEV_START_XMIT
	HookNetDevXmit      = bpfobj.HoptraceHookHOOK_NET_DEV_XMIT
	HookNetifRx         = bpfobj.HoptraceHookHOOK_NETIF_RX
	HookGROReceive      = bpfobj.HoptraceHookHOOK_GRO_RECEIVE
	HookNetifReceiveSkb = bpfobj.HoptraceHookHOOK_NETIF_RECEIVE_SKB
	HookKfreeSkb        = bpfobj.HoptraceHookHOOK_KFREE_SKB
	HookConsumeSkb      = bpfobj.HoptraceHookHOOK_CONSUME_SKB
	HookCopyDatagram    = bpfobj.HoptraceHookHOOK_COPY_DATAGRAM
)

// Tracepoint is a hook as output names it: the kernel tracepoint's name,
// or BridgeForward for the hop a bridge's forwarding is inferred at.
type Tracepoint string

// Tracepoints of the hooks, and the inferred bridge hop.
const (
	TPNetDevQueue     Tracepoint = "net_dev_queue"
	TPNetDevStartXmit Tracepoint = "net_dev_start_xmit"
	TPNetDevXmit      Tracepoint = "net_dev_xmit"
	TPNetifRx         Tracepoint = "netif_rx"
	TPGROReceive      Tracepoint = "napi_gro_receive"
	TPNetifReceiveSkb Tracepoint = "netif_receive_skb"
	TPKfreeSkb        Tracepoint = "kfree_skb"
	TPConsumeSkb      Tracepoint = "consume_skb"
	TPCopyDatagram    Tracepoint = "skb_copy_datagram"
	BridgeForward     Tracepoint = "bridge_forward"
)

var hookNames = [...]Tracepoint{
	HookNetDevQueue:     TPNetDevQueue,
	HookNetDevStartXmit: TPNetDevStartXmit,
	HookNetDevXmit:      TPNetDevXmit,
	HookNetifRx:         TPNetifRx,
	HookGROReceive:      TPGROReceive,
	HookNetifReceiveSkb: TPNetifReceiveSkb,
	HookKfreeSkb:        TPKfreeSkb,
	HookConsumeSkb:      TPConsumeSkb,
	HookCopyDatagram:    TPCopyDatagram,
}

// TracepointOf is the hook's tracepoint.
func TracepointOf(h Hook) Tracepoint {
	if int(h) < len(hookNames) && hookNames[h] != "" {
		return hookNames[h]
	}
	return Tracepoint(fmt.Sprintf("hook%d", h))
}

// HookName is the tracepoint's name.
func HookName(h Hook) string { return string(TracepointOf(h)) }

// Direction of travel at a hook.
type Direction string

const (
	Egress  Direction = "egress"
	Ingress Direction = "ingress"
	Forward Direction = "forward" // across a bridge, between two of its ports
	Local   Direction = "local"   // up the stack of the device (delivered to the host)
	End     Direction = "end"
)

// HookDirection is the direction a hook observes.
func HookDirection(h Hook) Direction {
	switch h {
	case HookNetDevQueue, HookNetDevStartXmit, HookNetDevXmit:
		return Egress
	case HookNetifRx, HookGROReceive, HookNetifReceiveSkb:
		return Ingress
	}
	return End
}

// IsEnd reports whether the hook marks the end of an skb's life (or its delivery).
func IsEnd(h Hook) bool { return HookDirection(h) == End }

// IsHop reports whether the hook is one of the two per-device hop hooks
// (egress enqueue, stack receive); the others are detail.
func IsHop(h Hook) bool { return h == HookNetDevQueue || h == HookNetifReceiveSkb }

// Ifname returns the device name the kernel reported.
func Ifname(e *Event) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&e.Ifname[0])), len(e.Ifname))
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Ethertypes and IP protocols.
const (
	EthIPv4 = 0x0800
	EthIPv6 = 0x86dd
	EthARP  = 0x0806

	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Src is the packet's source address (IPv4, IPv6 or ARP sender), if any.
func Src(m *Meta) netip.Addr { return addr(m, m.Saddr) }

// Dst is the packet's destination address (ARP: target), if any.
func Dst(m *Meta) netip.Addr { return addr(m, m.Daddr) }

func addr(m *Meta, b [16]byte) netip.Addr {
	switch m.EthProto {
	case EthIPv4, EthARP:
		a := netip.AddrFrom4([4]byte(b[:4]))
		if m.EthProto == EthARP && a.IsUnspecified() && m.ArpOp == 0 {
			return netip.Addr{}
		}
		return a
	case EthIPv6:
		return netip.AddrFrom16(b)
	}
	return netip.Addr{}
}

// Proto names the packet's protocol: ICMP, TCP, UDP, ICMPv6, ARP, IPv4, IPv6, or the ethertype.
func Proto(m *Meta) string {
	switch m.EthProto {
	case EthARP:
		return "ARP"
	case EthIPv4, EthIPv6:
		switch m.L4Proto {
		case ProtoICMP:
			return "ICMP"
		case ProtoTCP:
			return "TCP"
		case ProtoUDP:
			return "UDP"
		case ProtoICMPv6:
			return "ICMPv6"
		}
		if m.EthProto == EthIPv4 {
			return fmt.Sprintf("IPv4/%d", m.L4Proto)
		}
		return fmt.Sprintf("IPv6/%d", m.L4Proto)
	case 0:
		return "unknown"
	}
	return fmt.Sprintf("ethertype 0x%04x", m.EthProto)
}

// Ports returns the layer-4 ports, zero where the protocol has none.
func Ports(m *Meta) (sport, dport uint16) {
	if m.L4Proto == ProtoTCP || m.L4Proto == ProtoUDP {
		return m.Sport, m.Dport
	}
	return 0, 0
}

// Summary describes the packet in one line, tcpdump-like:
// "ICMP 10.77.0.2 > 10.77.0.3 echo request id=7 seq=1 len=84".
func Summary(m *Meta) string { return string(AppendSummary(nil, m)) }

// AppendSummary appends Summary(m) to b: the trace describes every packet
// with it, without formatting through fmt.
func AppendSummary(b []byte, m *Meta) []byte {
	src, dst := Src(m), Dst(m)
	switch m.EthProto {
	case EthARP:
		switch m.ArpOp {
		case 1:
			b = append(b, "ARP who-has "...)
			b = appendAddr(b, dst)
			b = append(b, " tell "...)
			return appendAddr(b, src)
		case 2:
			b = append(b, "ARP reply "...)
			b = appendAddr(b, src)
			b = append(b, " is-at (to "...)
			b = appendAddr(b, dst)
			return append(b, ')')
		}
		b = append(b, "ARP op "...)
		b = strconv.AppendUint(b, uint64(m.ArpOp), 10)
		b = append(b, ' ')
		b = appendAddr(b, src)
		b = append(b, " > "...)
		return appendAddr(b, dst)
	case EthIPv4, EthIPv6:
	default:
		return append(b, Proto(m)...)
	}
	switch m.L4Proto {
	case ProtoTCP:
		b = append(b, "TCP "...)
		b = appendAddrPort(b, src, m.Sport)
		b = append(b, " > "...)
		b = appendAddrPort(b, dst, m.Dport)
		b = append(b, " ["...)
		b = AppendTCPFlags(b, m.TcpFlags)
		b = append(b, "] seq="...)
		b = strconv.AppendUint(b, uint64(m.TcpSeq), 10)
		b = append(b, " ack="...)
		b = strconv.AppendUint(b, uint64(m.TcpAck), 10)
	case ProtoUDP:
		b = append(b, "UDP "...)
		b = appendAddrPort(b, src, m.Sport)
		b = append(b, " > "...)
		b = appendAddrPort(b, dst, m.Dport)
	case ProtoICMP, ProtoICMPv6:
		b = append(b, Proto(m)...)
		b = append(b, ' ')
		b = appendAddr(b, src)
		b = append(b, " > "...)
		b = appendAddr(b, dst)
		b = append(b, ' ')
		b = appendICMP(b, m)
	default:
		b = append(b, Proto(m)...)
		b = append(b, ' ')
		b = appendAddr(b, src)
		b = append(b, " > "...)
		b = appendAddr(b, dst)
	}
	b = append(b, " len="...)
	return strconv.AppendUint(b, uint64(m.IpLen), 10)
}

// appendAddr appends a.String().
func appendAddr(b []byte, a netip.Addr) []byte {
	if !a.IsValid() {
		return append(b, "invalid IP"...)
	}
	return a.AppendTo(b)
}

// appendAddrPort appends netip.AddrPortFrom(a, port).String().
func appendAddrPort(b []byte, a netip.Addr, port uint16) []byte {
	if !a.IsValid() {
		return append(b, "invalid AddrPort"...)
	}
	return netip.AddrPortFrom(a, port).AppendTo(b)
}

func appendICMP(b []byte, m *Meta) []byte {
	echo := func(what string) []byte {
		b = append(b, "echo "...)
		b = append(b, what...)
		b = append(b, " id="...)
		b = strconv.AppendUint(b, uint64(m.IcmpId), 10)
		b = append(b, " seq="...)
		return strconv.AppendUint(b, uint64(m.IcmpSeq), 10)
	}
	unreachable := func() []byte {
		b = append(b, "unreachable code="...)
		return strconv.AppendUint(b, uint64(m.IcmpCode), 10)
	}
	if m.L4Proto == ProtoICMP {
		switch m.IcmpType {
		case 8:
			return echo("request")
		case 0:
			return echo("reply")
		case 3:
			return unreachable()
		case 11:
			return append(b, "time exceeded"...)
		}
	} else {
		switch m.IcmpType {
		case 128:
			return echo("request")
		case 129:
			return echo("reply")
		case 1:
			return unreachable()
		case 130:
			return append(b, "multicast listener query"...)
		case 131, 143:
			return append(b, "multicast listener report"...)
		case 133:
			return append(b, "router solicitation"...)
		case 134:
			return append(b, "router advertisement"...)
		case 135:
			return append(b, "neighbor solicitation"...)
		case 136:
			return append(b, "neighbor advertisement"...)
		}
	}
	b = append(b, "type="...)
	b = strconv.AppendUint(b, uint64(m.IcmpType), 10)
	b = append(b, " code="...)
	return strconv.AppendUint(b, uint64(m.IcmpCode), 10)
}

// tcpFlagLetters are the TCP flags in tcpdump's order.
var tcpFlagLetters = [...]struct {
	bit uint8
	c   byte
}{{0x02, 'S'}, {0x01, 'F'}, {0x04, 'R'}, {0x08, 'P'}, {0x20, 'U'}, {0x40, 'E'}, {0x80, 'W'}, {0x10, '.'}}

// TCPFlags renders TCP flags tcpdump-style: "S", "S.", "P.", "F.", "R".
func TCPFlags(f uint8) string { return string(AppendTCPFlags(nil, f)) }

// AppendTCPFlags appends TCPFlags(f) to b.
func AppendTCPFlags(b []byte, f uint8) []byte {
	if f == 0 {
		return append(b, "none"...)
	}
	for _, x := range tcpFlagLetters {
		if f&x.bit != 0 {
			b = append(b, x.c)
		}
	}
	return b
}

// Snap describes the frame bytes that follow an event in a record when the
// tracer captures packets (struct frame_snap in bpf/hoptrace.h).
type Snap = bpfobj.HoptraceFrameSnap

// SnapSize is the size of the snapshot header.
const SnapSize = int(unsafe.Sizeof(Snap{}))

// Snapshot returns the frame snapshot after the event in a record: its
// header and the captured bytes (a slice of raw). ok is false when the
// record has none.
func Snapshot(raw []byte) (s Snap, data []byte, ok bool) {
	if len(raw) < Size+SnapSize {
		return s, nil, false
	}
	s = *(*Snap)(unsafe.Pointer(&raw[Size]))
	data = raw[Size+SnapSize:]
	if int(s.Caplen) > len(data) {
		return s, nil, false
	}
	return s, data[:s.Caplen], true
}
