package latency

import (
	"fmt"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// HopKey is one hop as the kernel keys it: (netns inode, ifindex, hook).
type HopKey = bpfobj.HoptraceHopKey

// Pair keys one histogram: the time from one hop to the next.
type Pair = bpfobj.HoptraceHopPair

// Names is what naming hops needs; *resolve.Resolver implements it.
type Names = resolve.Names

// Steps: what a hook means on the path, in the words reports use.
const (
	StepEgress  = "egress"  // net_dev_queue: handed to the device, before its qdisc
	StepXmit    = "xmit"    // net_dev_start_xmit: left the qdisc, given to the driver
	StepBacklog = "backlog" // netif_rx: queued to the receiving CPU's backlog (veth peer)
	StepGRO     = "gro"     // napi_gro_receive_entry
	StepIngress = "ingress" // netif_receive_skb: taken by the stack on the device
	StepLocal   = "local"   // netif_receive_skb on a bridge device: up to the host stack
	StepDrop    = "drop"    // kfree_skb
	StepDiscard = "discard" // kfree_skb of a packet that did not fail (BenignDropReason): a flood copy for another host, a closed socket's queue
	StepConsume = "consume" // consume_skb
	StepSocket  = "socket"  // skb_copy_datagram_iovec: read by a socket
)

// Step names a hook (see the Step constants).
func Step(h event.Hook) string {
	switch h {
	case event.HookNetDevQueue:
		return StepEgress
	case event.HookNetDevStartXmit:
		return StepXmit
	case event.HookNetDevXmit:
		return "xmit_done"
	case event.HookNetifRx:
		return StepBacklog
	case event.HookGROReceive:
		return StepGRO
	case event.HookNetifReceiveSkb:
		return StepIngress
	case event.HookKfreeSkb:
		return StepDrop
	case event.HookConsumeSkb:
		return StepConsume
	case event.HookCopyDatagram:
		return StepSocket
	}
	return fmt.Sprintf("hook%d", h)
}

// IsEndKey reports whether a hop is the end of a packet's life.
func IsEndKey(k HopKey) bool { return event.IsEnd(event.Hook(k.Hook)) }

// DropReason returns the drop reason a kfree_skb end hop carries (its low
// 24 bits), 0 when the kernel did not record one.
func DropReason(k HopKey) uint32 {
	if event.Hook(k.Hook) != event.HookKfreeSkb {
		return 0
	}
	return uint32(k.DropReason[0]) | uint32(k.DropReason[1])<<8 | uint32(k.DropReason[2])<<16
}

// DropName names the reason a kfree_skb end hop carries: the kernel's
// name, else REASON_<n>; "" when the kernel recorded none.
func DropName(drops DropNamer, k HopKey) string {
	r := DropReason(k)
	if r == 0 {
		return ""
	}
	if drops != nil {
		if name := drops.Name(r); name != "" {
			return name
		}
	}
	return "REASON_" + itoa(r)
}

// describeEnd is DescribeHop with the drop reason weighed: a kfree_skb
// whose reason is no failure of the packet is a discard, not a drop, in
// reports and metrics alike.
func describeEnd(names Names, drops DropNamer, k HopKey) Hop {
	h := DescribeHop(names, k)
	if h.Step == StepDrop && BenignDropReason(DropName(drops, k)) {
		h.Step = StepDiscard
		h.Label = h.Label[:len(h.Label)-len(StepDrop)] + StepDiscard
	}
	return h
}

// Hop is one hop with names.
type Hop struct {
	// Netns is the namespace's label ("host", a name under /var/run/netns,
	// "netns:<inode>"); Container the container owning it, if known.
	Netns      string `json:"netns"`
	NetnsInode uint32 `json:"netns_inode"`
	Container  string `json:"container,omitempty"`
	Interface  string `json:"interface,omitempty"`
	Ifindex    int    `json:"ifindex"`
	// Bridge is the bridge the interface is a port of (or is).
	Bridge    string           `json:"bridge,omitempty"`
	Hook      event.Tracepoint `json:"hook"`      // tracepoint
	Step      string           `json:"step"`      // egress, xmit, backlog, gro, ingress, local, drop, discard, consume, socket
	Direction event.Direction  `json:"direction"` // egress, ingress, local, end
	Label     string           `json:"label"`     // "web:eth0 egress"
}

// Who is the hop's owner as reports print it: the container, else the
// namespace label.
func (h *Hop) Who() string {
	if h.Container != "" {
		return h.Container
	}
	return h.Netns
}

// DescribeHop names a hop.
func DescribeHop(names Names, k HopKey) Hop {
	hk := event.Hook(k.Hook)
	h := Hop{
		NetnsInode: k.Netns,
		Ifindex:    int(k.Ifindex),
		Hook:       event.TracepointOf(hk),
		Step:       Step(hk),
		Direction:  event.HookDirection(hk),
	}
	pl := resolve.PlaceOf(names, k.Netns, int(k.Ifindex))
	h.Netns, h.Container, h.Bridge = pl.Netns, pl.Container, pl.Bridge
	switch {
	case pl.Ifname != "":
		h.Interface = pl.Ifname
	case k.Ifindex != 0:
		h.Interface = fmt.Sprintf("if%d", k.Ifindex)
	}
	if pl.IsBridge && hk == event.HookNetifReceiveSkb {
		h.Step = StepLocal
		h.Direction = event.Local
	}
	h.Label = h.Who()
	if h.Interface != "" {
		h.Label += ":" + h.Interface
	}
	h.Label += " " + h.Step
	return h
}

// PairLabel names a pair. The second hop is shortened when it shares the
// first one's device ("web:eth0 egress → xmit") or namespace
// ("host:veth1a2b xmit → vethfe01 backlog"); a bridge forwarding between
// two of its ports reads "host:veth1a2b ingress → docker0 → veth9c3d egress".
func PairLabel(from, to *Hop) string {
	switch {
	case to.NetnsInode == 0:
		// an end with neither device nor socket: it happened where the
		// packet was, but is told apart from the end on the device itself
		return from.Label + " → " + to.Step + " (no device)"
	case from.NetnsInode == to.NetnsInode && from.Ifindex == to.Ifindex && from.Ifindex != 0:
		return from.Label + " → " + to.Step
	case from.NetnsInode == to.NetnsInode && from.Bridge != "" && from.Bridge == to.Bridge &&
		from.Step == StepIngress && to.Step == StepEgress:
		return from.Label + " → " + from.Bridge + " → " + to.Interface + " " + to.Step
	case from.NetnsInode == to.NetnsInode && to.Interface != "":
		return from.Label + " → " + to.Interface + " " + to.Step
	case from.NetnsInode == to.NetnsInode:
		return from.Label + " → " + to.Step
	}
	return from.Label + " → " + to.Label
}
