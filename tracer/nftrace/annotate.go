package nftrace

import (
	"strings"
	"time"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// window bounds the time between a drop and the trace event that names it.
const window = 2 * time.Second

// Annotate names the rule that dropped p, when p is a netfilter drop and
// a trace event with its headers reported a drop verdict. m is the
// packet's header metadata as the tracer saw it at its first hop.
func (t *Tracer) Annotate(p *path.Path, m *event.Meta) {
	if p.Verdict != path.Dropped || !strings.HasPrefix(p.DropReason, "NETFILTER") || m == nil {
		return
	}
	var dropTs uint64
	for _, e := range p.Ends {
		if e.Hook == "kfree_skb" && e.Reason == p.DropReason {
			dropTs = e.TsNs
		}
	}
	if dropTs == 0 && len(p.Hops) > 0 {
		dropTs = p.Hops[len(p.Hops)-1].TsNs
	}
	ev, ok := t.store.lookup(MetaKey(m), dropTs, window)
	if !ok {
		return
	}
	p.SetRule(t.rule(ev))
}

// rule describes a drop verdict, with the rule's text where it can be listed.
func (t *Tracer) rule(ev Event) *path.Rule {
	r := &path.Rule{Family: FamilyName(ev.Family), Table: ev.Table, Chain: ev.Chain, Verdict: VerdictName(ev.Verdict)}
	if ev.Type == traceTypePolicy {
		r.Policy = true
		return r
	}
	r.Handle = ev.Handle
	r.Text, r.Iptables = t.texts.text(r.Family, r.Table, r.Chain, r.Handle)
	return r
}

// MetaKey is the packet key of the tracer's header metadata.
func MetaKey(m *event.Meta) Key {
	k := Key{Src: event.Src(m), Dst: event.Dst(m), Proto: m.L4Proto, IPID: m.IpId}
	switch m.L4Proto {
	case event.ProtoTCP:
		k.Sport, k.Dport, k.TCPSeq = m.Sport, m.Dport, m.TcpSeq
	case event.ProtoUDP:
		k.Sport, k.Dport = m.Sport, m.Dport
	case event.ProtoICMP, event.ProtoICMPv6:
		k.ICMPType = m.IcmpType
		if echo(m.L4Proto, m.IcmpType) {
			k.Sport, k.Dport = m.IcmpId, m.IcmpSeq
		}
	}
	k.Src, k.Dst = k.Src.Unmap(), k.Dst.Unmap()
	return k
}
