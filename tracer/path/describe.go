package path

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	ben "github.com/hoptrace/hoptrace/tracer/benign"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
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
	// NAT says what a rewrite changed where it was first seen, from the
	// packet's own headers: "DNAT 10.213.9.1:18080 -> 172.17.0.2:80".
	NAT string `json:"nat,omitempty"`
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
	// Copy marks the end of an skb that made no hop of the path: a copy
	// held elsewhere (TCP's retransmission copy, a packet socket's or a raw
	// socket's clone). Copies never decide the verdict.
	Copy bool `json:"copy,omitempty"`
	// NAT is a rewrite first seen at this end (a drop right after DNAT).
	NAT string `json:"nat,omitempty"`

	// benign is the rule (tracer/benign) a kfree_skb matches: no failure
	// of the packet. Nil for a drop and for other ends.
	benign *ben.Rule
}

// Describer turns packets into paths. It keeps working memory from one
// path to the next: it is not safe for concurrent use.
type Describer struct {
	Names   Names
	Symbols Symbolizer // may be nil
	Drops   DropNamer  // may be nil
	// WallOffset converts event times (CLOCK_MONOTONIC ns) to wall clock.
	WallOffset time.Duration
	// CacheNames keeps the names of the places looked up in Names until
	// ForgetNames: a caller that describes many paths in a row (trace, at
	// every flush) asks Names once per place instead of at every hop, and
	// calls ForgetNames whenever the names may have changed since.
	CacheNames bool

	s *scratch

	benignOnce sync.Once
	benign     *ben.Set
}

// ForgetNames drops the names kept since the last call (see CacheNames).
func (d *Describer) ForgetNames() {
	if d.s != nil {
		clear(d.s.places)
	}
}

// place is what a path needs to know about one (namespace, interface):
// the place's names and, when Names knows the interface, its name and
// its master's ifindex.
type place struct {
	resolve.Place
	link   bool // Names knows the interface
	name   string
	master int
}

// place names the interface with ifindex in the namespace netns (0: the
// namespace alone), from the cache when CacheNames is set.
func (d *Describer) place(s *scratch, netns uint32, ifindex int) *place {
	key := uint64(netns)<<32 | uint64(uint32(ifindex))
	if d.CacheNames {
		if pl, ok := s.places[key]; ok {
			return pl
		}
	}
	pl := &s.lookup
	if d.CacheNames {
		if len(s.places) >= maxShared {
			clear(s.places)
		}
		pl = new(place)
		s.places[key] = pl
	}
	*pl = place{Place: resolve.PlaceOf(d.Names, netns, ifindex)}
	if ifindex != 0 && d.Names != nil {
		if l, ok := d.Names.Link(netns, ifindex); ok {
			pl.link, pl.name, pl.master = true, l.Name, l.MasterIndex
		}
	}
	return pl
}

func (d *Describer) scratch() *scratch {
	if d.s == nil {
		d.s = newScratch()
	}
	return d.s
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

// The inferred hop of a namespace's stack routing a packet between devices.
const (
	KindRouted resolve.Kind     = "routed"
	Routed     event.Tracepoint = "routed"
)

// copyConsumers consume or drop a copy of a packet, never the packet:
// packet sockets (tcpdump) take clones on every device they watch.
var copyConsumers = map[string]bool{
	"packet_rcv":     true,
	"tpacket_rcv":    true,
	"packet_recvmsg": true,
}

// Describe builds the path of a finished packet.
func (d *Describer) Describe(p *Packet) Path {
	var path Path
	d.DescribeInto(p, &path)
	return path
}

// DescribeInto builds the path of a finished packet into *path, which it
// overwrites, reusing the memory of its Hops and Ends: a caller that is
// done with one path before describing the next allocates little.
func (d *Describer) DescribeInto(p *Packet, path *Path) {
	hops, ends := path.Hops[:0], path.Ends[:0]
	*path = Path{ID: p.ID}
	if len(p.Events) == 0 {
		path.Verdict = Unfinished
		return
	}
	s := d.scratch()
	first := &p.Events[0]
	meta := &first.Meta
	path.Time = time.Unix(0, int64(first.TsNs)+int64(d.WallOffset))
	path.Proto = event.Proto(meta)
	if a := event.Src(meta); a.IsValid() {
		path.Src = s.addr(a)
	}
	if a := event.Dst(meta); a.IsValid() {
		path.Dst = s.addr(a)
	}
	path.Sport, path.Dport = event.Ports(meta)
	path.Len = uint32(meta.IpLen)
	s.buf = event.AppendSummary(s.buf[:0], meta)
	path.Summary = string(s.buf)

	if hops == nil {
		hops = make([]Hop, 0, len(p.Events)+2)
	}
	path.Hops, path.Ends = hops, ends
	lastIngress := -1 // index of the most recent ingress at a bridge port: forwarding is inferred from it
	var prevTs uint64
	origSkb := first.Skb
	s.hopSkbs = s.hopSkbs[:0]
	for i := range p.Events {
		if e := &p.Events[i]; !event.IsEnd(event.Hook(e.Hook)) && !hasSkb(s.hopSkbs, e.Skb) {
			s.hopSkbs = append(s.hopSkbs, e.Skb)
		}
	}
	s.lastMeta = s.lastMeta[:0] // per skb: the headers last seen
	for i := range p.Events {
		e := &p.Events[i]
		h := event.Hook(e.Hook)
		nat := ""
		if prev := s.swapMeta(e.Skb, &e.Meta); prev != nil {
			nat = NATChange(prev, &e.Meta)
		}
		if event.IsEnd(h) {
			end := d.endEvent(e, s)
			end.Copy = len(s.hopSkbs) > 0 && !hasSkb(s.hopSkbs, e.Skb)
			end.NAT = nat
			if e.Netns == 0 && len(path.Hops) > 0 {
				// Freed after the stack dropped its device and socket
				// references: it ended where it was last seen.
				last := &path.Hops[len(path.Hops)-1]
				end.NetnsInode, end.Netns = last.NetnsInode, last.Netns
				if last.Container != "" {
					end.Netns = last.Container
				}
			}
			path.Ends = append(path.Ends, end)
			continue
		}
		hop := d.hop(e, s)
		hop.NAT = nat
		hop.Clone = e.Skb != origSkb && e.Flags&event.FlagClone != 0
		if h == event.HookNetDevQueue && lastIngress >= 0 {
			in := &path.Hops[lastIngress]
			if in.NetnsInode == hop.NetnsInode &&
				(in.Ifindex != hop.Ifindex && (in.Bridge == "" || hop.Bridge != in.Bridge) ||
					in.Ifindex == hop.Ifindex && in.Direction == event.Local) {
				// Received on one device, sent out of another that is not a
				// port of the same bridge (or back out of the bridge it came
				// up from, hairpin NAT): the namespace's stack routed it.
				note := s.join(in.Ifname, " -> ", hop.Ifname)
				path.Hops = append(path.Hops, Hop{
					Netns: hop.Netns, NetnsInode: hop.NetnsInode, Container: hop.Container,
					Kind: KindRouted, Direction: event.Forward, Hook: Routed, TsNs: e.TsNs,
					Inferred: true, Skb: hop.Skb, Note: note,
				})
				lastIngress = -1
			}
		}
		if h == event.HookNetDevQueue && lastIngress >= 0 {
			in := &path.Hops[lastIngress]
			if in.Bridge != "" && in.NetnsInode == hop.NetnsInode && hop.Bridge == in.Bridge && in.Ifindex != hop.Ifindex &&
				hop.Kind != resolve.KindBridge {
				// The bridge forwarded the packet from one port to another: no
				// tracepoint fires inside the bridge, the two ports prove it.
				// (The bridge device sending it is no forward: br_netfilter's
				// DNAT to a neighbour not yet resolved goes out of the bridge
				// device and back in, then on from the port it came in on.)
				note := s.join(in.Ifname, " -> ", hop.Ifname)
				path.Hops = append(path.Hops, Hop{
					Netns: hop.Netns, NetnsInode: hop.NetnsInode, Container: hop.Container,
					Ifindex: d.bridgeIndex(s, &hop), Ifname: hop.Bridge, Kind: resolve.KindBridge, Direction: event.Forward,
					Bridge: hop.Bridge, Hook: event.BridgeForward, TsNs: e.TsNs, Inferred: true, Skb: hop.Skb,
					Note: note,
				})
			}
		}
		path.Hops = append(path.Hops, hop)
		if event.HookDirection(h) == event.Ingress && h == event.HookNetifReceiveSkb {
			lastIngress = len(path.Hops) - 1
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
	d.verdict(path, s)
}

func hasSkb(skbs []uint64, skb uint64) bool {
	for _, x := range skbs {
		if x == skb {
			return true
		}
	}
	return false
}

// swapMeta records m as the headers last seen on skb and returns the ones
// seen before, if any.
func (s *scratch) swapMeta(skb uint64, m *event.Meta) *event.Meta {
	for i := range s.lastMeta {
		if s.lastMeta[i].skb == skb {
			prev := s.lastMeta[i].meta
			s.lastMeta[i].meta = m
			return prev
		}
	}
	s.lastMeta = append(s.lastMeta, skbMeta{skb, m})
	return nil
}

// Hop describes one hop event with names.
func (d *Describer) Hop(e *event.Event) Hop { return d.hop(e, d.scratch()) }

func (d *Describer) hop(e *event.Event, s *scratch) Hop {
	h := event.Hook(e.Hook)
	pl := d.place(s, e.Netns, int(e.Ifindex))
	hop := Hop{
		Netns:      pl.Netns,
		NetnsInode: e.Netns,
		Container:  pl.Container,
		Ifindex:    int(e.Ifindex),
		Ifname:     pl.Ifname,
		Kind:       pl.Kind,
		Direction:  event.HookDirection(h),
		Bridge:     pl.Bridge,
		Hook:       event.TracepointOf(h),
		TsNs:       e.TsNs,
		Skb:        s.skb(e.Skb),
	}
	if pl.Ifname == "" {
		hop.Ifname, hop.Kind = s.ifname(e), resolve.KindUnknown
	}
	switch {
	case pl.IsBridge && h == event.HookNetifReceiveSkb:
		hop.Direction = event.Local
		hop.Note = "up to the host stack"
	case pl.Bridge != "" && !pl.IsBridge:
		hop.Note = s.join("port of ", pl.Bridge)
	}
	return hop
}

func (d *Describer) bridgeIndex(s *scratch, hop *Hop) int {
	if pl := d.place(s, hop.NetnsInode, hop.Ifindex); pl.link {
		return pl.master
	}
	return 0
}

// EndEvent describes one end-of-life event with names.
func (d *Describer) EndEvent(e *event.Event) EndEvent { return d.endEvent(e, d.scratch()) }

func (d *Describer) endEvent(e *event.Event, s *scratch) EndEvent {
	h := event.Hook(e.Hook)
	end := EndEvent{
		Hook:       event.TracepointOf(h),
		NetnsInode: e.Netns,
		TsNs:       e.TsNs,
		Skb:        s.skb(e.Skb),
	}
	pl := d.place(s, e.Netns, int(e.Ifindex))
	end.Netns = pl.Netns
	if pl.Container != "" {
		end.Netns = pl.Container
	}
	if e.Ifindex != 0 {
		if pl.link {
			end.Ifname = pl.name
		} else {
			end.Ifname = s.ifname(e)
		}
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
		end.benign = d.benignRules().Match(end.Location, end.Reason, &e.Meta)
	}
	return end
}

// benignRules are tracer/benign's rules for the kernel d.Drops names the
// reasons of (a DropNamer that says which it has, as kernel.DropReasons
// does; else one whose reasons are all unnamed).
func (d *Describer) benignRules() *ben.Set {
	d.benignOnce.Do(func() {
		k, ok := d.Drops.(ben.Reasons)
		if !ok {
			k = unnamedReasons{}
		}
		d.benign = ben.For(k)
	})
	return d.benign
}

// unnamedReasons: reasons passed but named by number only.
type unnamedReasons struct{}

func (unnamedReasons) Available() bool { return true }
func (unnamedReasons) Has(string) bool { return false }

// benignDrop reports kfree_skb events that are not a failure of the path
// (tracer/benign's rules): a flood copy reaching a host it was not for,
// multicast of a group not joined, the ICMP echo reply that ping_rcv frees
// after raw sockets took their clone of it, a late TCP segment, a packet
// still queued on a socket when it closed (it had been delivered), and
// packet sockets' copies.
func benignDrop(end EndEvent) bool { return end.benign != nil }

// benignEnding reports whether a benign drop ends as the rule says.
func benignEnding(end *EndEvent, e ben.Ending) bool {
	return end != nil && end.benign != nil && end.benign.Ending == e
}

// where names a namespace the way hop rows do: the container, else the label.
func where(netns, container string) string {
	if container != "" {
		return container
	}
	return netns
}

// outcome is how one branch of a path (one skb and its hops) ended.
type outcome struct {
	verdict, reason, location, end string
	benign                         bool // dropped, but only by a benign drop
}

// branchOutcome decides how the skb of lastHop ended, from its own ends.
func branchOutcome(lastHop *Hop, ends []*EndEvent, s *scratch) outcome {
	var delivered, dropped, benign *EndEvent
	for _, end := range ends {
		switch end.Hook {
		case event.TPCopyDatagram:
			if delivered == nil || delivered.Hook != event.TPCopyDatagram {
				delivered = end
			}
		case event.TPConsumeSkb:
			if consumeNotEnd[end.Location] || copyConsumers[end.Location] || end.TsNs < lastHop.TsNs {
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
	sentOut := lastHop.Direction == event.Egress && lastHop.Kind != resolve.KindVeth && lastHop.Kind != resolve.KindBridge && lastHop.Kind != resolve.KindUnknown
	hopWhere := where(lastHop.Netns, lastHop.Container)
	var o outcome
	switch {
	case dropped != nil && (delivered == nil || delivered.TsNs < dropped.TsNs):
		o = outcome{verdict: Dropped, reason: dropped.Reason, location: dropped.Location, end: dropText(dropped, s)}
	case delivered != nil && sentOut && delivered.Hook == event.TPConsumeSkb:
		// freed on transmit completion: the device sent it
		o = outcome{verdict: Forwarded, end: s.join("sent out of ", hopWhere, " ", lastHop.Ifname, " (", string(lastHop.Kind), ")")}
	case delivered != nil:
		o.verdict = Delivered
		if delivered.Hook == event.TPCopyDatagram {
			o.end = s.join("delivered to a socket in ", delivered.Netns)
		} else if delivered.Location != "" {
			o.end = s.join("consumed by ", delivered.Location, " in ", delivered.Netns)
		} else {
			o.end = s.join("consumed in ", delivered.Netns)
		}
	case benignEnding(benign, ben.RawSocket):
		o = outcome{verdict: Delivered, end: s.join("delivered to a raw socket in ", benign.Netns)}
	case benignEnding(benign, ben.Consumed):
		o = outcome{verdict: Delivered, end: s.join("consumed by ", kernel.BaseName(benign.Location), " in ", benign.Netns, " (", benign.benign.Note, ")")}
	case benignEnding(benign, ben.Queued):
		o = outcome{verdict: Delivered, end: s.join("delivered to a socket in ", benign.Netns, " (still queued when it closed)")}
	case lastHop.Direction == event.Local:
		o = outcome{verdict: Delivered, end: s.join("delivered to the host stack through ", lastHop.Ifname)}
	case lastHop.Direction == event.Ingress:
		received := s.join("received by the stack of ", hopWhere, " ", lastHop.Ifname)
		o = outcome{verdict: Delivered, end: received}
		switch {
		case benign != nil && benign.benign.Note != "":
			o.end = s.join(received, " (", benign.benign.Note, ")")
		case benign != nil:
			o.end = s.join(received, " (", benign.Reason, " drop of a copy)")
		}
	case sentOut:
		o = outcome{verdict: Forwarded, end: s.join("sent out of ", hopWhere, " ", lastHop.Ifname, " (", string(lastHop.Kind), ")")}
	case benign != nil:
		o = outcome{verdict: Dropped, reason: benign.Reason, location: benign.Location, end: dropText(benign, s), benign: true}
	default:
		o.verdict = Unfinished
		if lastHop.Ifname != "" {
			o.end = s.join("lost from sight after ", hopWhere, " ", lastHop.Ifname, " ", string(lastHop.Direction), ": no further event and no drop")
		} else {
			o.end = "lost from sight"
		}
	}
	return o
}

func dropText(e *EndEvent, s *scratch) string {
	b := append(s.buf[:0], "dropped in "...)
	b = append(b, e.Netns...)
	if e.Ifname != "" {
		b = append(b, ' ')
		b = append(b, e.Ifname...)
	}
	b = append(b, ": "...)
	if e.Reason == "" {
		b = append(b, NoDropReason...)
	} else {
		b = append(b, e.Reason...)
	}
	if e.Location != "" {
		b = append(b, " at "...)
		b = append(b, e.Location...)
	}
	if e.NAT != "" {
		b = append(b, ", after "...)
		b = append(b, e.NAT...)
	}
	s.buf = b
	return s.text(b)
}

// verdict decides how the path ended. Every skb that made hops (the packet
// and its flood clones) is a branch with its own end; the path is delivered
// when a branch was, else dropped when a branch was, else forwarded, else
// lost from sight. Ends of copies that made no hop never decide it.
func (d *Describer) verdict(p *Path, s *scratch) {
	if len(p.Hops) == 0 {
		d.earlyVerdict(p, s)
		return
	}
	// the skbs in the order of their first hop, each with its last hop
	s.branches = s.branches[:0]
	for i := range p.Hops {
		skb := p.Hops[i].Skb
		found := false
		for j := range s.branches {
			if s.branches[j].skb == skb {
				s.branches[j].last, found = i, true
				break
			}
		}
		if !found {
			s.branches = append(s.branches, branch{skb: skb, last: i})
		}
	}
	var best outcome
	bestRank, lostCopy := -1, ""
	for _, br := range s.branches {
		s.ends = s.ends[:0]
		for i := range p.Ends {
			if e := &p.Ends[i]; !e.Copy && e.Skb == br.skb {
				s.ends = append(s.ends, e)
			}
		}
		o := branchOutcome(&p.Hops[br.last], s.ends, s)
		r := o.rank()
		if o.verdict == Dropped && !o.benign && lostCopy == "" {
			lostCopy = o.end
		}
		if bestRank < 0 || r < bestRank || (r == bestRank && o.verdict == Unfinished) {
			best, bestRank = o, r // lost from sight: after the branch seen last
		}
	}
	clear(s.ends)
	p.Verdict, p.DropReason, p.DropLocation, p.End = best.verdict, best.reason, best.location, best.end
	if best.verdict == Delivered && lostCopy != "" {
		p.End = s.join(p.End, "; a flooded copy was ", lostCopy)
	}
}

// rank orders outcomes for a path of several branches: delivered, dropped,
// forwarded, dropped by a benign drop only (a flood copy for another
// host), lost from sight.
func (o outcome) rank() int {
	switch {
	case o.verdict == Delivered:
		return 0
	case o.verdict == Dropped && !o.benign:
		return 1
	case o.verdict == Forwarded:
		return 2
	case o.verdict == Dropped:
		return 3
	}
	return 4
}

// earlyVerdict ends a path that has no hop: a drop before the packet's first
// selected hop (a packet queued for a neighbour that never answered, a drop
// in the OUTPUT chain, a FORWARD drop right after DNAT).
func (d *Describer) earlyVerdict(p *Path, s *scratch) {
	for i := range p.Ends {
		e := &p.Ends[i]
		if e.Hook == event.TPKfreeSkb {
			p.Verdict, p.DropReason, p.DropLocation = Dropped, e.Reason, e.Location
			p.End = s.join("dropped before its first hop: ", strings.TrimPrefix(dropText(e, s), "dropped "))
			return
		}
	}
	p.Verdict, p.End = Unfinished, "lost from sight"
}

// EarlyDrop reports whether a path is a drop before its packet's first
// selected hop, worth showing: benign frees (flood copies, raw-socket
// replies, purged socket queues) are not.
func EarlyDrop(p *Path) bool {
	return len(p.Hops) == 0 && len(p.Ends) > 0 && p.Verdict == Dropped && !benignDrop(p.Ends[0])
}

// NATChange says what a rewrite between two sightings of the same skb
// changed: "DNAT 10.213.9.1:18080 -> 172.17.0.2:80", "SNAT 172.17.0.2 ->
// 10.213.9.1", both for hairpin NAT; "" when addresses and ports are equal.
func NATChange(before, after *event.Meta) string {
	if before.EthProto != after.EthProto || (before.EthProto != event.EthIPv4 && before.EthProto != event.EthIPv6) {
		return ""
	}
	// Compare before formatting: most hops change nothing, and an
	// endpoint's text is its address and port, nothing else.
	bsp, bdp := event.Ports(before)
	asp, adp := event.Ports(after)
	dnat := event.Dst(before) != event.Dst(after) || bdp != adp
	snat := event.Src(before) != event.Src(after) || bsp != asp
	if !dnat && !snat {
		return ""
	}
	var parts []string
	if dnat {
		parts = append(parts, "DNAT "+endpoint(before, event.Dst(before), false)+" -> "+endpoint(after, event.Dst(after), false))
	}
	if snat {
		parts = append(parts, "SNAT "+endpoint(before, event.Src(before), true)+" -> "+endpoint(after, event.Src(after), true))
	}
	return strings.Join(parts, "; ")
}

func endpoint(m *event.Meta, a interface{ String() string }, src bool) string {
	sport, dport := event.Ports(m)
	port := dport
	if src {
		port = sport
	}
	switch {
	case port != 0 && m.EthProto == event.EthIPv6:
		return "[" + a.String() + "]:" + strconv.Itoa(int(port))
	case port != 0:
		return a.String() + ":" + strconv.Itoa(int(port))
	}
	return a.String()
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
