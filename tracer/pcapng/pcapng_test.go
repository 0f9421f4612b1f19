package pcapng

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// record builds a ring buffer record: an event, then its frame snapshot.
func record(e *event.Event, s event.Snap, data []byte, snapLen int) []byte {
	raw := make([]byte, event.Size+event.SnapSize+snapLen)
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(e)), event.Size))
	copy(raw[event.Size:], unsafe.Slice((*byte)(unsafe.Pointer(&s)), event.SnapSize))
	copy(raw[event.Size+event.SnapSize:], data)
	return raw
}

func TestWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, err := New(&buf, 32)
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 60)
	for i := range frame {
		frame[i] = byte(i)
	}
	ev1 := event.Event{TsNs: 1000, PktId: 7, Skb: 0xa, Hook: uint8(event.HookNetDevQueue)}
	ev2 := event.Event{TsNs: 5000, PktId: 7, Skb: 0xa, Hook: uint8(event.HookNetifReceiveSkb), PktType: 1}
	ev3 := event.Event{TsNs: 6000, PktId: 7, Skb: 0xb, Hook: uint8(event.HookNetifReceiveSkb)}
	ev3.Meta.EthProto = event.EthIPv4
	w.Keep(&ev1, record(&ev1, event.Snap{Len: 60, Caplen: 32}, frame, 32))
	w.Keep(&ev2, record(&ev2, event.Snap{Len: 60, Caplen: 32}, frame, 32))
	w.Keep(&ev3, record(&ev3, event.Snap{Len: 46, Caplen: 10, L3: 1}, frame[14:], 32)) // no link-layer header
	w.Keep(&event.Event{PktId: 8, TsNs: 1}, nil)                                       // no snapshot: ignored
	start := time.Unix(1700000000, 0)
	p := path.Path{ID: 7, Time: start, Verdict: path.Dropped, DropReason: "NETFILTER_DROP", DropLocation: "nft_do_chain", End: "dropped in host", Hops: []path.Hop{
		{Netns: "ns-a", NetnsInode: 11, Container: "web", Ifindex: 2, Ifname: "eth0", Kind: "veth", Direction: "egress", Hook: "net_dev_queue", TsNs: 1000, Skb: path.SkbString(0xa)},
		{Netns: "host", NetnsInode: 1, Ifindex: 9, Ifname: "veth1a2b", Kind: "veth", Direction: "ingress", Bridge: "br0", Hook: "netif_receive_skb", TsNs: 5000, DeltaNs: 4000, SinceNs: 4000, Skb: path.SkbString(0xa), Note: "port of br0"},
		{Netns: "host", NetnsInode: 1, Ifindex: 12, Ifname: "tun0", Kind: "tun", Direction: "ingress", Hook: "netif_receive_skb", TsNs: 6000, DeltaNs: 1000, SinceNs: 5000, Skb: path.SkbString(0xb)},
	}}
	if err := w.Path(&p); err != nil {
		t.Fatal(err)
	}
	if len(w.frames) != 0 { // packet 8 had no snapshot, 7 was written
		t.Errorf("frames kept after the path: %v", w.frames)
	}
	if err := w.Close(output.Summary{Packets: 1, Lost: 3}); err != nil {
		t.Fatal(err)
	}

	r, err := pcapgo.NewNgReader(bytes.NewReader(buf.Bytes()), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	wantIface := []string{"eth0@web", "veth1a2b@host", "tun0@host"}
	for i := 0; i < 3; i++ {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		in, _ := r.Interface(ci.InterfaceIndex)
		if in.Name != wantIface[i] {
			t.Errorf("packet %d on %q, want %q", i, in.Name, wantIface[i])
		}
		if got := ci.Timestamp.Sub(start); got != time.Duration(p.Hops[i].SinceNs) {
			t.Errorf("packet %d at +%v, want +%dns", i, got, p.Hops[i].SinceNs)
		}
		if len(opts.Comments) != 1 || !strings.HasPrefix(opts.Comments[0], "hoptrace packet 7 hop ") {
			t.Errorf("packet %d comments %q", i, opts.Comments)
		}
		if opts.PacketID == nil || *opts.PacketID != 7 {
			t.Errorf("packet %d id %v", i, opts.PacketID)
		}
		switch i {
		case 0:
			if !bytes.Equal(data, frame[:32]) || ci.Length != 60 || opts.Flags == nil || opts.Flags.Direction != pcapgo.NgEpbFlagDirectionOutbound {
				t.Errorf("egress hop: %d/%d bytes %x flags %+v", len(data), ci.Length, data, opts.Flags)
			}
			if !strings.Contains(in.Description, "container web") || !strings.Contains(in.Description, "netns ns-a") {
				t.Errorf("description %q", in.Description)
			}
		case 1:
			if opts.Flags == nil || opts.Flags.Direction != pcapgo.NgEpbFlagDirectionInbound || opts.Flags.Reception != pcapgo.NgEpbFlagReceptionTypeBroadcast {
				t.Errorf("ingress hop flags %+v", opts.Flags)
			}
			if !strings.Contains(opts.Comments[0], "+4.000us") || !strings.Contains(in.Description, "port of br0") {
				t.Errorf("comment %q, description %q", opts.Comments[0], in.Description)
			}
		case 2:
			// a blank Ethernet header with the packet's ethertype before the network header
			if len(data) != 24 || ci.Length != 60 || data[12] != 0x08 || data[13] != 0 || !bytes.Equal(data[14:], frame[14:24]) {
				t.Errorf("layer-3 hop: %d/%d bytes %x", len(data), ci.Length, data)
			}
			if !strings.HasSuffix(opts.Comments[0], "; dropped NETFILTER_DROP at nft_do_chain: dropped in host") {
				t.Errorf("last hop comment %q lacks the verdict", opts.Comments[0])
			}
		}
	}
	if _, _, err := r.ReadPacketData(); err == nil {
		t.Error("more packets than hops")
	}
	in, _ := r.Interface(0)
	if in.Name != "hoptrace" || in.Statistics.PacketsDropped != 3 || in.Statistics.PacketsReceived != 1 {
		t.Errorf("summary interface %q statistics %+v, want 1 packet and 3 lost events", in.Name, in.Statistics)
	}
}
