package path

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Verdicts: how a path ended.
const (
	Delivered  = "delivered"  // to a socket or to the stack of its last device
	Forwarded  = "forwarded"  // left through a device hoptrace does not see beyond
	Dropped    = "dropped"    // freed by the kernel with a drop reason
	Unfinished = "unfinished" // lost from sight: no further event, no end
)

// Names resolves what events report by number. *resolve.Resolver implements it.
type Names = resolve.Names

// Symbolizer names kernel code addresses (where a packet was freed).
type Symbolizer interface {
	Name(addr uint64) string
}

// DropNamer names drop reasons; "" when the kernel has none (before 5.17).
type DropNamer interface {
	Name(reason uint32) string
}

// NoDropReason is what a path's end says for a drop on a kernel without
// drop reasons: kfree_skb passes only the dropping function before 5.17.
const NoDropReason = "no reason on this kernel"

// Path is one packet's journey. Its JSON form is hoptrace's stable output
// contract (see the README); add fields, never rename or remove them.
type Path struct {
	ID      uint64    `json:"id"`
	Time    time.Time `json:"time"`
	Proto   string    `json:"proto"`
	Src     string    `json:"src"`
	Dst     string    `json:"dst"`
	Sport   uint16    `json:"sport"`
	Dport   uint16    `json:"dport"`
	Len     uint32    `json:"len"`
	Summary string    `json:"summary"`
	Verdict string    `json:"verdict"`
	// DropReason is the kernel's name for the drop (NETFILTER_DROP, ...), or empty.
	DropReason string `json:"drop_reason"`
	// DropLocation is the kernel function that dropped it, when known.
	DropLocation string `json:"drop_location,omitempty"`
	// End says in words where the path ended ("consumed by icmp_rcv in ns-b").
	End  string `json:"end"`
	Hops []Hop  `json:"hops"`
	// Ends are the end-of-life events seen (drops, consumes, socket copies).
	Ends []EndEvent `json:"ends,omitempty"`
	// Rule is the netfilter rule or chain policy that dropped the packet,
	// when rule naming is on (see package nftrace).
	Rule *Rule `json:"rule,omitempty"`
}

// Hop is one point on the path.
type Hop struct {
	Netns      string           `json:"netns"`
	NetnsInode uint32           `json:"netns_inode"`
	Container  string           `json:"container"`
	Ifindex    int              `json:"ifindex"`
	Ifname     string           `json:"ifname"`
	Kind       resolve.Kind     `json:"kind"`
	Direction  event.Direction  `json:"direction"`
	Bridge     string           `json:"bridge"`
	Hook       event.Tracepoint `json:"hook"`
	TsNs       uint64           `json:"ts_ns"`
	DeltaNs    uint64           `json:"delta_ns"`
	SinceNs    uint64           `json:"since_first_ns"`
	Inferred   bool             `json:"inferred,omitempty"`
	Clone      bool             `json:"clone,omitempty"`
	Skb        string           `json:"skb"`
	Note       string           `json:"note,omitempty"`
}

// EndEvent is one end-of-life observation.
type EndEvent struct {
	Hook       event.Tracepoint `json:"hook"`
	Netns      string           `json:"netns"`
	NetnsInode uint32           `json:"netns_inode"`
	Ifname     string           `json:"ifname,omitempty"`
	TsNs       uint64           `json:"ts_ns"`
	Reason     string           `json:"reason,omitempty"`
	Location   string           `json:"location,omitempty"`
	Skb        string           `json:"skb"`
}

// Describer turns packets into paths.
type Describer struct {
	Names   Names
	Symbols Symbolizer // may be nil
	Drops   DropNamer  // may be nil
	// WallOffset converts event times (CLOCK_MONOTONIC ns) to wall clock.
	WallOffset time.Duration
}

// consumeNotEnd are kernel functions that consume an skb without ending the
// packet's journey: a GSO original replaced by its segments, the copy of a
// packet queued for neighbour resolution.
var consumeNotEnd = map[string]bool{
	"validate_xmit_skb":  true,
	"__neigh_event_send": true,
	"neigh_probe":        true,
	"skb_segment":        true,
}

// Describe builds the path of a finished packet.
func (d *Describer) Describe(p *Packet) Path {
	var path Path
	path.ID = p.ID
	if len(p.Events) == 0 {
		path.Verdict = Unfinished
		return path
	}
	first := &p.Events[0]
	meta := first.Meta
	path.Time = time.Unix(0, int64(first.TsNs)+int64(d.WallOffset))
	path.Proto = event.Proto(&meta)
	if a := event.Src(&meta); a.IsValid() {
		path.Src = a.String()
	}
	if a := event.Dst(&meta); a.IsValid() {
		path.Dst = a.String()
	}
	path.Sport, path.Dport = event.Ports(&meta)
	path.Len = uint32(meta.IpLen)
	path.Summary = event.Summary(&meta)

	path.Hops = make([]Hop, 0, len(p.Events)+2)
	var lastIngress *Hop // most recent ingress at a bridge port: forwarding is inferred from it
	var prevTs uint64
	origSkb := first.Skb
	for i := range p.Events {
		e := &p.Events[i]
		h := event.Hook(e.Hook)
		if event.IsEnd(h) {
			end := d.EndEvent(e)
			if e.Netns == 0 && len(path.Hops) > 0 {
				// Freed after the stack dropped its device and socket
				// references: it ended where it was last seen.
				last := path.Hops[len(path.Hops)-1]
				end.NetnsInode, end.Netns = last.NetnsInode, last.Netns
				if last.Container != "" {
					end.Netns = last.Container
				}
			}
			path.Ends = append(path.Ends, end)
			continue
		}
		hop := d.Hop(e)
		hop.Clone = e.Skb != origSkb && e.Flags&event.FlagClone != 0
		if h == event.HookNetDevQueue && lastIngress != nil && lastIngress.Bridge != "" &&
			lastIngress.NetnsInode == hop.NetnsInode && hop.Bridge == lastIngress.Bridge && lastIngress.Ifindex != hop.Ifindex {
			// The bridge forwarded the packet from one port to another: no
			// tracepoint fires inside the bridge, the two ports prove it.
			fwd := Hop{
				Netns: hop.Netns, NetnsInode: hop.NetnsInode, Container: hop.Container,
				Ifindex: d.bridgeIndex(hop), Ifname: hop.Bridge, Kind: resolve.KindBridge, Direction: event.Forward,
				Bridge: hop.Bridge, Hook: event.BridgeForward, TsNs: e.TsNs, Inferred: true, Skb: hop.Skb,
				Note: lastIngress.Ifname + " -> " + hop.Ifname,
			}
			path.Hops = append(path.Hops, fwd)
		}
		path.Hops = append(path.Hops, hop)
		if event.HookDirection(h) == event.Ingress && h == event.HookNetifReceiveSkb {
			cp := hop
			lastIngress = &cp
		}
	}
	for i := range path.Hops {
		hp := &path.Hops[i]
		if i > 0 && hp.TsNs >= prevTs {
			hp.DeltaNs = hp.TsNs - prevTs
		}
		hp.SinceNs = hp.TsNs - first.TsNs
		prevTs = hp.TsNs
	}
	d.verdict(&path)
	return path
}

// Hop describes one hop event with names.
func (d *Describer) Hop(e *event.Event) Hop {
	h := event.Hook(e.Hook)
	pl := resolve.PlaceOf(d.Names, e.Netns, int(e.Ifindex))
	hop := Hop{
		Netns:      pl.Netns,
		NetnsInode: e.Netns,
		Container:  pl.Container,
		Ifindex:    int(e.Ifindex),
		Ifname:     event.Ifname(e),
		Kind:       resolve.KindUnknown,
		Direction:  event.HookDirection(h),
		Bridge:     pl.Bridge,
		Hook:       event.TracepointOf(h),
		TsNs:       e.TsNs,
		Skb:        SkbString(e.Skb),
	}
	if pl.Ifname != "" {
		hop.Ifname, hop.Kind = pl.Ifname, pl.Kind
	}
	switch {
	case pl.IsBridge && h == event.HookNetifReceiveSkb:
		hop.Direction = event.Local
		hop.Note = "up to the host stack"
	case pl.Bridge != "" && !pl.IsBridge:
		hop.Note = "port of " + pl.Bridge
	}
	return hop
}

func (d *Describer) nameNetns(label, container *string, inode uint32) {
	*label, *container = resolve.NetnsLabel(d.Names, inode)
}

func (d *Describer) bridgeIndex(hop Hop) int {
	if l, ok := d.Names.Link(hop.NetnsInode, hop.Ifindex); ok {
		return l.MasterIndex
	}
	return 0
}

// EndEvent describes one end-of-life event with names.
func (d *Describer) EndEvent(e *event.Event) EndEvent {
	h := event.Hook(e.Hook)
	end := EndEvent{
		Hook:       event.TracepointOf(h),
		NetnsInode: e.Netns,
		Ifname:     event.Ifname(e),
		TsNs:       e.TsNs,
		Skb:        SkbString(e.Skb),
	}
	var owner string
	d.nameNetns(&end.Netns, &owner, e.Netns)
	if owner != "" {
		end.Netns = owner
	}
	if l, ok := d.Names.Link(e.Netns, int(e.Ifindex)); ok && e.Ifindex != 0 {
		end.Ifname = l.Name
	} else if e.Ifindex == 0 {
		end.Ifname = ""
	}
	if d.Symbols != nil && e.Location != 0 {
		end.Location = d.Symbols.Name(e.Location)
	}
	if h == event.HookKfreeSkb {
		if d.Drops != nil {
			end.Reason = d.Drops.Name(e.DropReason)
		} else {
			end.Reason = fmt.Sprintf("REASON_%d", e.DropReason)
		}
	}
	return end
}

// benignDrop reports kfree_skb events that are not a failure of the path:
// a flood clone reaching a host it was not for, or the ICMP echo reply that
// ping_rcv frees after raw sockets took their clone of it.
func benignDrop(end EndEvent) bool {
	switch {
	case end.Reason == "OTHERHOST":
		return true
	case end.Reason == "NO_SOCKET" && end.Location == "ping_rcv":
		return true
	}
	return false
}

func (d *Describer) verdict(p *Path) {
	lastHopTs := uint64(0)
	if n := len(p.Hops); n > 0 {
		lastHopTs = p.Hops[n-1].TsNs
	}
	var delivered, dropped *EndEvent
	var benign *EndEvent
	for i := range p.Ends {
		end := &p.Ends[i]
		switch end.Hook {
		case event.TPCopyDatagram:
			if delivered == nil || delivered.Hook != event.TPCopyDatagram {
				delivered = end
			}
		case event.TPConsumeSkb:
			if consumeNotEnd[end.Location] || end.TsNs < lastHopTs {
				continue // the packet went on after this
			}
			if delivered == nil {
				delivered = end
			}
		case event.TPKfreeSkb:
			if benignDrop(*end) {
				if benign == nil {
					benign = end
				}
				continue
			}
			if dropped == nil {
				dropped = end
			}
		}
	}
	lastHop := Hop{}
	if n := len(p.Hops); n > 0 {
		lastHop = p.Hops[n-1]
	}
	switch {
	case dropped != nil && (delivered == nil || delivered.TsNs < dropped.TsNs):
		p.Verdict = Dropped
		p.DropReason = dropped.Reason
		p.DropLocation = dropped.Location
		where := dropped.Netns
		if dropped.Ifname != "" {
			where += " " + dropped.Ifname
		}
		reason := dropped.Reason
		if reason == "" {
			reason = NoDropReason
		}
		p.End = fmt.Sprintf("dropped in %s: %s", where, reason)
		if dropped.Location != "" {
			p.End += " at " + dropped.Location
		}
	case delivered != nil:
		p.Verdict = Delivered
		if delivered.Hook == event.TPCopyDatagram {
			p.End = "delivered to a socket in " + delivered.Netns
		} else if delivered.Location != "" {
			p.End = fmt.Sprintf("consumed by %s in %s", delivered.Location, delivered.Netns)
		} else {
			p.End = "consumed in " + delivered.Netns
		}
	case benign != nil && benign.Location == "ping_rcv":
		p.Verdict = Delivered
		p.End = "delivered to a raw socket in " + benign.Netns
	case lastHop.Direction == event.Local:
		p.Verdict = Delivered
		p.End = "delivered to the host stack through " + lastHop.Ifname
	case lastHop.Direction == event.Ingress:
		p.Verdict = Delivered
		p.End = fmt.Sprintf("received by the stack of %s %s", lastHop.Netns, lastHop.Ifname)
		if benign != nil {
			p.End += " (" + benign.Reason + " drop of a copy)"
		}
	case lastHop.Direction == event.Egress && lastHop.Kind != resolve.KindVeth && lastHop.Kind != resolve.KindBridge && lastHop.Kind != resolve.KindUnknown:
		p.Verdict = Forwarded
		p.End = fmt.Sprintf("sent out of %s %s (%s)", lastHop.Netns, lastHop.Ifname, lastHop.Kind)
	case benign != nil:
		p.Verdict = Dropped
		p.DropReason = benign.Reason
		p.DropLocation = benign.Location
		p.End = fmt.Sprintf("dropped in %s: %s", benign.Netns, benign.Reason)
	default:
		p.Verdict = Unfinished
		if lastHop.Ifname != "" {
			p.End = fmt.Sprintf("lost from sight after %s %s %s: no further event and no drop", lastHop.Netns, lastHop.Ifname, lastHop.Direction)
		} else {
			p.End = "lost from sight"
		}
	}
}

// HopLabel names a hop compactly: "web:eth0", "host:veth1a2b".
func HopLabel(h Hop) string {
	owner := h.Container
	if owner == "" {
		owner = h.Netns
	}
	return strings.TrimSpace(owner + ":" + h.Ifname)
}

// SkbString renders an skb address as hoptrace prints it, "0xffff...".
func SkbString(addr uint64) string {
	return "0x" + strconv.FormatUint(addr, 16)
}
