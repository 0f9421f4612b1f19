package loader

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/event"
)

// parseFrame is a test frame and what its headers must give.
type parseFrame struct {
	name         string
	frame        []byte
	ethProto     uint16
	l4           uint8
	sport, dport uint16
}

// ethFrame is an Ethernet header with ethertype proto, then payload.
func ethFrame(proto uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], proto)
	return append(f, payload...)
}

// ipv4 is an IPv4 header of ihl words (options zero) carrying l4.
func ipv4(ihl int, proto uint8, frag uint16, l4 []byte) []byte {
	ip := make([]byte, ihl*4, ihl*4+len(l4))
	ip[0], ip[8], ip[9] = 0x40|byte(ihl), 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], 0x4321)
	binary.BigEndian.PutUint16(ip[6:], frag)
	copy(ip[12:16], []byte{10, 231, 0, 2})
	copy(ip[16:20], []byte{10, 231, 0, 3})
	return append(ip, l4...)
}

// ipv6 is an IPv6 header with next header next carrying rest.
func ipv6(next uint8, rest []byte) []byte {
	ip := make([]byte, 40, 40+len(rest))
	ip[0], ip[2], ip[3] = 0x60, 0xab, 0xcd // flow label low bits: the id
	binary.BigEndian.PutUint16(ip[4:], uint16(len(rest)))
	ip[6], ip[7] = next, 64
	ip[8], ip[23] = 0xfd, 2
	ip[24], ip[39] = 0xfd, 3
	return append(ip, rest...)
}

func tcpHdr(sport, dport uint16) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint32(h[4:], 0x01020304)
	binary.BigEndian.PutUint32(h[8:], 0x05060708)
	h[12], h[13] = 5<<4, 0x18 // PSH|ACK
	return h
}

func udpHdr(sport, dport uint16) []byte {
	h := make([]byte, 8+16)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(len(h)))
	return h
}

func echoHdr(typ uint8) []byte {
	h := make([]byte, 8+32)
	h[0] = typ
	binary.BigEndian.PutUint16(h[4:], 0x77)
	binary.BigEndian.PutUint16(h[6:], 9)
	return h
}

func parseFrames() []parseFrame {
	vlan := append([]byte{0, 100, 0x08, 0x00}, ipv4(5, 6, 0, tcpHdr(40001, 80))...)
	hopByHop := append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, udpHdr(40002, 53)...)
	arp := make([]byte, 28)
	binary.BigEndian.PutUint16(arp[0:], 1)
	binary.BigEndian.PutUint16(arp[2:], 0x0800)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], 1)
	copy(arp[14:18], []byte{10, 231, 0, 2})
	copy(arp[24:28], []byte{10, 231, 0, 3})
	return []parseFrame{
		{"ipv4 udp", udpFrame(), 0x0800, 17, 40000, 5201},
		{"ipv4 tcp, ip options", ethFrame(0x0800, ipv4(7, 6, 0, tcpHdr(40003, 443))), 0x0800, 6, 40003, 443},
		{"ipv4 later fragment", ethFrame(0x0800, ipv4(5, 17, 0x2000|185, make([]byte, 64))), 0x0800, 17, 0, 0},
		{"icmp echo", ethFrame(0x0800, ipv4(5, 1, 0, echoHdr(8))), 0x0800, 1, 0, 0},
		{"ipv6 udp after hop-by-hop", ethFrame(0x86dd, ipv6(0, hopByHop)), 0x86dd, 17, 40002, 53},
		{"icmpv6 echo", ethFrame(0x86dd, ipv6(58, echoHdr(128))), 0x86dd, 58, 0, 0},
		{"vlan ipv4 tcp", ethFrame(0x8100, vlan), 0x0800, 6, 40001, 80},
		{"arp", ethFrame(0x0806, arp), 0x0806, 0, 0, 0},
		// the TCP header ends past the frame: the tcx program hands it to parse()
		{"ipv4 tcp cut short", ethFrame(0x0800, ipv4(5, 6, 0, tcpHdr(40004, 22)[:12])), 0x0800, 6, 40004, 22},
		{"lldp", ethFrame(0x88cc, make([]byte, 46)), 0x88cc, 0, 0, 0},
	}
}

// The tcx programs read a packet's headers from the packet itself; the
// tracepoint programs, which cannot, with probe reads (parse()). A packet's
// hops at both must give the same headers, or its fingerprint changes
// between them and the path breaks. Each frame goes through the tcx egress
// program twice, once parsed from the packet and once as the tracepoints
// parse it (tcx_probe_parse), and the two records' headers must be equal.
func TestTCXParseMatchesProbeParse(t *testing.T) {
	privtest.RequireTCX(t, "")
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	ifindex := uint32(topo.Hosts[0].HostVethIndex)
	metas := func(probe bool) map[string]event.Meta {
		tr, err := Load(Options{Engine: EngineTCX, Mode: ModeEvents, probeParse: probe})
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		defer tr.Close()
		rd, err := ringbuf.NewReader(tr.Events())
		if err != nil {
			t.Fatal(err)
		}
		defer rd.Close()
		got := map[string]event.Meta{}
		for _, f := range parseFrames() {
			ro := ebpf.RunOptions{Data: f.frame, Context: skbCtx{Ifindex: ifindex}}
			if _, err := tr.tcx.egress.Run(&ro); err != nil {
				t.Fatalf("%s: test run: %v", f.name, err)
			}
			rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				rec, err := rd.Read()
				if err != nil {
					break
				}
				var e event.Event
				if err := event.Decode(rec.RawSample, &e); err != nil {
					t.Fatal(err)
				}
				if e.Hook == uint8(event.HookNetDevQueue) && e.Ifindex == ifindex {
					got[f.name] = e.Meta
				}
			}
		}
		return got
	}
	direct, probed := metas(false), metas(true)
	for _, f := range parseFrames() {
		d, ok := direct[f.name]
		if !ok {
			t.Errorf("%s: no record from the tcx program", f.name)
			continue
		}
		p, ok := probed[f.name]
		if !ok {
			t.Errorf("%s: no record with probe-read parsing", f.name)
			continue
		}
		if d != p {
			t.Errorf("%s: headers from the packet %+v, from probe reads %+v", f.name, d, p)
		}
		if d.EthProto != f.ethProto || d.L4Proto != f.l4 || d.Sport != f.sport || d.Dport != f.dport {
			t.Errorf("%s: ethertype %#x proto %d ports %d > %d, want %#x %d %d > %d", f.name,
				d.EthProto, d.L4Proto, d.Sport, d.Dport, f.ethProto, f.l4, f.sport, f.dport)
		}
	}
}
