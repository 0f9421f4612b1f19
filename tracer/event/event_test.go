package event

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func sample() Event {
	e := Event{TsNs: 123456789, PktId: 42, Skb: 0xffff888100001234, Location: 0xffffffff81000000,
		Netns: 4026531840, Ifindex: 7, Iif: 5, Len: 98, DropReason: 5, Cpu: 1,
		Hook: uint8(HookKfreeSkb), Flags: FlagNew | FlagCloned, PktType: 3}
	copy(e.Ifname[:], []int8{'v', 'e', 't', 'h', '0'})
	e.Meta.EthProto = EthIPv4
	e.Meta.L4Proto = ProtoTCP
	copy(e.Meta.Saddr[:], []byte{10, 77, 0, 2})
	copy(e.Meta.Daddr[:], []byte{10, 77, 0, 3})
	e.Meta.Sport, e.Meta.Dport = 40000, 80
	e.Meta.TcpSeq, e.Meta.TcpAck, e.Meta.TcpFlags = 1000, 2000, 0x18
	e.Meta.IpLen = 60
	return e
}

// Decode must agree with the portable encoding of the generated type: this
// holds the unsafe copy to the C layout.
func TestDecodeMatchesBinaryLayout(t *testing.T) {
	want := sample()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &want); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != Size {
		t.Fatalf("binary size %d, Size %d", buf.Len(), Size)
	}
	var got Event
	if err := Decode(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("decoded %+v\nwant %+v", got, want)
	}
	if Ifname(&got) != "veth0" {
		t.Errorf("Ifname %q", Ifname(&got))
	}
	if err := Decode(buf.Bytes()[:Size-1], &got); !errors.Is(err, ErrShort) {
		t.Errorf("short record: err %v, want ErrShort", err)
	}
}

func TestSummaries(t *testing.T) {
	e := sample()
	if s := Summary(&e.Meta); s != "TCP 10.77.0.2:40000 > 10.77.0.3:80 [P.] seq=1000 ack=2000 len=60" {
		t.Errorf("tcp summary %q", s)
	}
	e.Meta.L4Proto, e.Meta.IcmpType, e.Meta.IcmpId, e.Meta.IcmpSeq, e.Meta.IpLen = ProtoICMP, 8, 7, 1, 84
	if s := Summary(&e.Meta); s != "ICMP 10.77.0.2 > 10.77.0.3 echo request id=7 seq=1 len=84" {
		t.Errorf("icmp summary %q", s)
	}
	if sp, dp := Ports(&e.Meta); sp != 0 || dp != 0 {
		t.Errorf("ICMP ports %d %d, want 0 0", sp, dp)
	}
	e.Meta = Meta{EthProto: EthARP, ArpOp: 1}
	copy(e.Meta.Saddr[:], []byte{10, 77, 0, 2})
	copy(e.Meta.Daddr[:], []byte{10, 77, 0, 1})
	if s := Summary(&e.Meta); s != "ARP who-has 10.77.0.1 tell 10.77.0.2" {
		t.Errorf("arp summary %q", s)
	}
	if HookDirection(HookNetDevQueue) != Egress || HookDirection(HookNetifReceiveSkb) != Ingress || !IsEnd(HookKfreeSkb) {
		t.Error("hook directions wrong")
	}
}

func BenchmarkDecode(b *testing.B) {
	want := sample()
	var buf bytes.Buffer
	_ = binary.Write(&buf, binary.LittleEndian, &want)
	raw := buf.Bytes()
	var e Event
	b.ReportAllocs()
	for b.Loop() {
		if err := Decode(raw, &e); err != nil {
			b.Fatal(err)
		}
	}
}

// summaryFmt is Summary as it was written with fmt: AppendSummary must
// render every packet exactly as it does.
func summaryFmt(m *Meta) string {
	src, dst := Src(m), Dst(m)
	switch m.EthProto {
	case EthARP:
		switch m.ArpOp {
		case 1:
			return fmt.Sprintf("ARP who-has %s tell %s", dst, src)
		case 2:
			return fmt.Sprintf("ARP reply %s is-at (to %s)", src, dst)
		}
		return fmt.Sprintf("ARP op %d %s > %s", m.ArpOp, src, dst)
	case EthIPv4, EthIPv6:
	default:
		return Proto(m)
	}
	p := Proto(m)
	switch m.L4Proto {
	case ProtoTCP:
		var fl []byte
		for _, x := range tcpFlagLetters {
			if m.TcpFlags&x.bit != 0 {
				fl = append(fl, x.c)
			}
		}
		flags := string(fl)
		if len(fl) == 0 {
			flags = "none"
		}
		return fmt.Sprintf("TCP %s > %s [%s] seq=%d ack=%d len=%d",
			netip.AddrPortFrom(src, m.Sport), netip.AddrPortFrom(dst, m.Dport), flags, m.TcpSeq, m.TcpAck, m.IpLen)
	case ProtoUDP:
		return fmt.Sprintf("UDP %s > %s len=%d", netip.AddrPortFrom(src, m.Sport), netip.AddrPortFrom(dst, m.Dport), m.IpLen)
	case ProtoICMP, ProtoICMPv6:
		echo := func(what string) string { return fmt.Sprintf("echo %s id=%d seq=%d", what, m.IcmpId, m.IcmpSeq) }
		text := fmt.Sprintf("type=%d code=%d", m.IcmpType, m.IcmpCode)
		if m.L4Proto == ProtoICMP {
			switch m.IcmpType {
			case 8:
				text = echo("request")
			case 0:
				text = echo("reply")
			case 3:
				text = fmt.Sprintf("unreachable code=%d", m.IcmpCode)
			case 11:
				text = "time exceeded"
			}
		} else {
			switch m.IcmpType {
			case 128:
				text = echo("request")
			case 129:
				text = echo("reply")
			case 1:
				text = fmt.Sprintf("unreachable code=%d", m.IcmpCode)
			case 130:
				text = "multicast listener query"
			case 131, 143:
				text = "multicast listener report"
			case 133:
				text = "router solicitation"
			case 134:
				text = "router advertisement"
			case 135:
				text = "neighbor solicitation"
			case 136:
				text = "neighbor advertisement"
			}
		}
		return fmt.Sprintf("%s %s > %s %s len=%d", p, src, dst, text, m.IpLen)
	}
	return fmt.Sprintf("%s %s > %s len=%d", p, src, dst, m.IpLen)
}

func TestSummaryMatchesFmt(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	protos := []uint16{EthIPv4, EthIPv6, EthARP, 0, 0x88cc}
	l4 := []uint8{ProtoICMP, ProtoTCP, ProtoUDP, ProtoICMPv6, 47, 0}
	icmpTypes := []uint8{0, 1, 3, 8, 11, 128, 129, 130, 131, 133, 134, 135, 136, 143, 200}
	seen := map[string]bool{}
	for i := 0; i < 20000; i++ {
		var m Meta
		m.EthProto = protos[rng.IntN(len(protos))]
		m.L4Proto = l4[rng.IntN(len(l4))]
		m.IcmpType = icmpTypes[rng.IntN(len(icmpTypes))]
		m.IcmpCode = uint8(rng.IntN(4))
		m.IcmpId, m.IcmpSeq = uint16(rng.Uint32()), uint16(rng.Uint32())
		m.Sport, m.Dport, m.IpLen = uint16(rng.Uint32()), uint16(rng.Uint32()), uint16(rng.Uint32())
		m.TcpSeq, m.TcpAck, m.TcpFlags = rng.Uint32(), rng.Uint32(), uint8(rng.Uint32())
		m.ArpOp = uint16(rng.IntN(4))
		switch rng.IntN(4) {
		case 0: // zeros: unspecified addresses
		case 1: // an IPv4-mapped IPv6 address
			copy(m.Saddr[:], netip.MustParseAddr("::ffff:10.1.2.3").AsSlice())
			copy(m.Daddr[:], netip.MustParseAddr("fe80::1").AsSlice())
		default:
			for j := range m.Saddr {
				m.Saddr[j], m.Daddr[j] = uint8(rng.Uint32()), uint8(rng.Uint32())
			}
		}
		want := summaryFmt(&m)
		if got := Summary(&m); got != want {
			t.Fatalf("Summary(%+v) = %q, want %q", m, got, want)
		}
		if got := string(AppendSummary([]byte("x"), &m)); got != "x"+want {
			t.Fatalf("AppendSummary appends %q, want %q", got, "x"+want)
		}
		seen[strings.SplitN(want, " ", 2)[0]] = true
	}
	for _, w := range []string{"TCP", "UDP", "ICMP", "ICMPv6", "ARP", "IPv4/47", "unknown"} {
		if !seen[w] {
			t.Errorf("no %s packet among the generated ones", w)
		}
	}
}
