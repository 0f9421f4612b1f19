package event

import (
	"bytes"
	"encoding/binary"
	"errors"
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
