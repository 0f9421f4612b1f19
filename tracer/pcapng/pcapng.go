// Package pcapng writes traced packets as a pcapng capture for Wireshark and
// tshark: every hop of every path is an Enhanced Packet Block holding the
// frame's headers as the kernel held them at that hop, on an interface named
// after the device and where it lives ("eth0@web", "veth1a2b3c@host"), with
// the hop's direction in its flags and, in its comment, the packet id, hop
// index, hook, time since the previous hop and, on the last hop, the verdict.
package pcapng

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// DefaultSnapLen is how many bytes of each frame are kept unless told otherwise.
const DefaultSnapLen = 128

// frame is one hop's snapshot.
type frame struct {
	data    []byte
	wire    uint32
	pktType uint8
}

type frameKey struct {
	ts  uint64
	skb string // as hops hold it (path.SkbString)
}

type ifaceKey struct {
	netns   uint32
	ifindex int
	name    string // ifindex 0 (no device) is told apart by name
}

// Writer writes a pcapng stream. It is not safe for concurrent use.
type Writer struct {
	ng      *pcapgo.NgWriter
	snapLen int
	start   time.Time
	ifaces  map[ifaceKey]int
	counts  []uint64 // packet blocks per interface id
	frames  map[uint64]map[frameKey]frame
	packets uint64
}

// summaryIface is interface 0: no packets, its statistics carry the trace's
// summary (packets in isb_ifrecv, lost events in isb_ifdrop).
const summaryIface = 0

// New writes the section header and the summary interface to w.
func New(w io.Writer, snapLen int) (*Writer, error) {
	if snapLen <= 0 {
		snapLen = DefaultSnapLen
	}
	ng, err := pcapgo.NewNgWriterInterface(w, pcapgo.NgInterface{
		Name:        "hoptrace",
		Description: "hoptrace trace summary: its statistics count traced packets (received) and events lost in the kernel (dropped)",
		OS:          runtime.GOOS,
		LinkType:    layers.LinkTypeEthernet,
		SnapLength:  uint32(snapLen),
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware:    runtime.GOARCH,
		OS:          runtime.GOOS,
		Application: "hoptrace",
		Comment:     "every hop of every traced packet; one interface per (namespace, device)",
	}})
	if err != nil {
		return nil, fmt.Errorf("write pcapng header: %w", err)
	}
	// Readers of a pipe (wireshark -k -i -) see the header at once.
	if err := ng.Flush(); err != nil {
		return nil, fmt.Errorf("write pcapng header: %w", err)
	}
	return &Writer{
		ng: ng, snapLen: snapLen, start: time.Now(),
		ifaces: map[ifaceKey]int{}, counts: []uint64{0},
		frames: map[uint64]map[frameKey]frame{},
	}, nil
}

// SnapLen is the number of bytes kept of each frame.
func (w *Writer) SnapLen() int { return w.snapLen }

// Keep stores the frame snapshot that follows a hop event in its ring
// buffer record, until its packet's path is written or discarded.
func (w *Writer) Keep(e *event.Event, raw []byte) {
	if event.IsEnd(event.Hook(e.Hook)) {
		return
	}
	snap, data, ok := event.Snapshot(raw)
	if !ok {
		return
	}
	f := frame{wire: snap.Len, pktType: e.PktType}
	if snap.L3 != 0 {
		// the device has no link-layer header: a blank Ethernet header
		// with the packet's ethertype keeps every frame Ethernet
		f.data = make([]byte, 14, 14+len(data))
		f.data[12], f.data[13] = byte(e.Meta.EthProto>>8), byte(e.Meta.EthProto)
		f.data = append(f.data, data...)
		f.wire += 14
	} else {
		f.data = append([]byte(nil), data...)
	}
	m := w.frames[e.PktId]
	if m == nil {
		m = map[frameKey]frame{}
		w.frames[e.PktId] = m
	}
	m[frameKey{e.TsNs, path.SkbString(e.Skb)}] = f
}

// Discard forgets the frames of a packet whose path is not written.
func (w *Writer) Discard(id uint64) { delete(w.frames, id) }

// Path writes one packet block per hop of a path and forgets its frames.
func (w *Writer) Path(p *path.Path) error {
	frames := w.frames[p.ID]
	delete(w.frames, p.ID)
	w.packets++
	for i := range p.Hops {
		h := &p.Hops[i]
		id, err := w.iface(h)
		if err != nil {
			return err
		}
		// an inferred hop (the bridge forwarding) shows the frame of the
		// egress hop it was inferred from: same time, same skb
		f, ok := frames[frameKey{h.TsNs, h.Skb}]
		if !ok {
			f = blankFrame(p)
		}
		n := len(f.data)
		if n > w.snapLen {
			n = w.snapLen
		}
		wire := int(f.wire)
		if wire < n {
			wire = n
		}
		flags := epbFlags(h, f.pktType)
		ci := gopacket.CaptureInfo{
			Timestamp:      p.Time.Add(time.Duration(h.SinceNs)),
			CaptureLength:  n,
			Length:         wire,
			InterfaceIndex: id,
		}
		pid := p.ID
		opts := pcapgo.NgPacketOptions{Comments: []string{Comment(p, i)}, Flags: &flags, PacketID: &pid}
		if err := w.ng.WritePacketWithOptions(ci, f.data[:n], opts); err != nil {
			return fmt.Errorf("write pcapng packet: %w", err)
		}
		w.counts[id]++
	}
	return nil
}

// blankFrame stands in for a hop whose snapshot is missing: an Ethernet
// header with the packet's ethertype and nothing after it.
func blankFrame(p *path.Path) frame {
	f := frame{data: make([]byte, 14)}
	var et uint16
	switch {
	case p.Proto == "ARP":
		et = event.EthARP
	case strings.Contains(p.Src, ":"):
		et = event.EthIPv6
	case p.Src != "":
		et = event.EthIPv4
	}
	f.data[12], f.data[13] = byte(et>>8), byte(et)
	f.wire = 14 + p.Len
	return f
}

// epbFlags: the hop's direction, and for received frames how they were addressed.
func epbFlags(h *path.Hop, pktType uint8) pcapgo.NgEpbFlags {
	var f pcapgo.NgEpbFlags
	switch event.Direction(h.Direction) {
	case event.Egress:
		f.Direction = pcapgo.NgEpbFlagDirectionOutbound
	case event.Ingress, event.Local:
		f.Direction = pcapgo.NgEpbFlagDirectionInbound
		switch pktType {
		case 0:
			f.Reception = pcapgo.NgEpbFlagReceptionTypeUnicast
		case 1:
			f.Reception = pcapgo.NgEpbFlagReceptionTypeBroadcast
		case 2:
			f.Reception = pcapgo.NgEpbFlagReceptionTypeMulticast
		case 3:
			f.Reception = pcapgo.NgEpbFlagReceptionTypePromiscuous
		}
	}
	return f
}

// Comment is hop i's packet comment: "hoptrace packet 7 hop 2/3
// netif_receive_skb ingress +4.487us", and on the last hop the verdict
// ("; dropped NETFILTER_DROP at nft_do_chain: ...").
func Comment(p *path.Path, i int) string {
	h := &p.Hops[i]
	var b strings.Builder
	fmt.Fprintf(&b, "hoptrace packet %d hop %d/%d %s %s", p.ID, i+1, len(p.Hops), h.Hook, h.Direction)
	if i > 0 {
		fmt.Fprintf(&b, " +%.3fus", float64(h.DeltaNs)/1000)
	}
	if h.Inferred {
		b.WriteString(" (inferred)")
	}
	if h.Note != "" {
		b.WriteString(" [" + h.Note + "]")
	}
	if i == len(p.Hops)-1 {
		b.WriteString("; " + p.Verdict)
		if p.DropReason != "" {
			b.WriteString(" " + p.DropReason)
		}
		if p.DropLocation != "" {
			b.WriteString(" at " + p.DropLocation)
		}
		if p.End != "" {
			b.WriteString(": " + p.End)
		}
	}
	return b.String()
}

// IfaceName names a hop's interface for people: "eth0@web" (the
// container), "veth1a2b3c@host", "eth0@ns-a".
func IfaceName(h *path.Hop) string {
	where := h.Netns
	if h.Container != "" {
		where = h.Container
	}
	ifname := h.Ifname
	if ifname == "" {
		ifname = fmt.Sprintf("if%d", h.Ifindex)
	}
	return ifname + "@" + where
}

func (w *Writer) iface(h *path.Hop) (int, error) {
	k := ifaceKey{netns: h.NetnsInode, ifindex: h.Ifindex}
	if h.Ifindex == 0 {
		k.name = h.Ifname
	}
	if id, ok := w.ifaces[k]; ok {
		return id, nil
	}
	desc := []string{}
	if h.Container != "" {
		desc = append(desc, "container "+h.Container)
	}
	desc = append(desc, fmt.Sprintf("netns %s (inode %d)", h.Netns, h.NetnsInode))
	desc = append(desc, fmt.Sprintf("ifindex %d", h.Ifindex))
	if h.Kind != "" {
		desc = append(desc, string(h.Kind))
	}
	if h.Bridge != "" && h.Bridge != h.Ifname {
		desc = append(desc, "port of "+h.Bridge)
	}
	id, err := w.ng.AddInterface(pcapgo.NgInterface{
		Name:        IfaceName(h),
		Description: strings.Join(desc, ", "),
		OS:          runtime.GOOS,
		LinkType:    layers.LinkTypeEthernet,
		SnapLength:  uint32(w.snapLen),
	})
	if err != nil {
		return 0, fmt.Errorf("write pcapng interface: %w", err)
	}
	w.ifaces[k] = id
	w.counts = append(w.counts, 0)
	return id, nil
}

// Flush writes out what is buffered (a reader on a pipe sees every path
// written so far).
func (w *Writer) Flush() error { return w.ng.Flush() }

// Close ends the capture: an Interface Statistics Block per interface
// (packet blocks written) and, on the summary interface, the trace's
// packets and lost events. It does not close the underlying writer.
func (w *Writer) Close(sum output.Summary) error {
	end := time.Now()
	for id, n := range w.counts {
		st := pcapgo.NgInterfaceStatistics{
			LastUpdate:      end,
			StartTime:       w.start,
			EndTime:         end,
			PacketsReceived: n,
			PacketsDropped:  pcapgo.NgNoValue64,
		}
		if id == summaryIface {
			st.PacketsReceived = sum.Packets
			st.PacketsDropped = sum.Lost
		}
		if err := w.ng.WriteInterfaceStats(id, st); err != nil {
			return fmt.Errorf("write pcapng statistics: %w", err)
		}
	}
	return w.Flush()
}
