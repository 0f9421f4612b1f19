package verify

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// judgement is what one probe's path says.
type judgement struct {
	hops    []ObservedHop
	matched int
	ok      bool
	failure *Failure
	outcome string
}

// matches reports whether an observed hop is the expected one: same
// namespace, interface and direction.
func matches(e Hop, h path.Hop) bool {
	if e.Ifname != h.Ifname || e.Direction != h.Direction {
		return false
	}
	if e.NetnsInode != 0 && h.NetnsInode != 0 {
		return e.NetnsInode == h.NetnsInode
	}
	return e.Netns == h.Netns || (h.Container != "" && e.Netns == h.Container)
}

// judge compares a probe's path with the expected hops. The path passes
// when the probe was seen at every expected hop, in order; what happened
// after the last one (a socket took it, nothing listened) is the delivery
// outcome.
func judge(expected []Hop, p *path.Path) judgement {
	j := judgement{hops: []ObservedHop{}, outcome: OutcomeNotReached}
	if len(expected) == 0 {
		j.failure = &Failure{Stage: StagePath, Hop: "?", Reason: "no expected path"}
		return j
	}
	if p == nil {
		first := expected[0]
		j.failure = &Failure{Stage: StagePath, Hop: first.Label(),
			Reason: fmt.Sprintf("no probe packet was seen leaving %s %s (nothing left the container: no neighbour, no route, or the probe was never sent)", first.Netns, first.Ifname)}
		return j
	}
	var deviation *path.Hop
	for _, h := range p.Hops {
		oh := ObservedHop{Hop: h, Expected: -1}
		switch {
		case j.matched < len(expected) && matches(expected[j.matched], h):
			oh.Expected, oh.OK = j.matched, true
			j.matched++
		case j.matched == len(expected):
			oh.OK = true // after the last expected hop: the target's business
		case deviation == nil:
			hc := h
			deviation = &hc
		}
		j.hops = append(j.hops, oh)
	}
	if j.matched == len(expected) {
		j.ok = true
		j.outcome = OutcomeAccepted
		switch p.Verdict {
		case path.Dropped:
			j.outcome = OutcomeDropped
			if p.DropReason == "NO_SOCKET" {
				j.outcome = OutcomeNoSocket
			}
		case path.Unfinished:
			j.outcome = OutcomeNoResponse
		}
		return j
	}
	last := "?"
	if j.matched > 0 {
		last = expected[j.matched-1].Label() + " " + string(expected[j.matched-1].Direction)
	}
	next := expected[j.matched]
	f := &Failure{Stage: StagePath, Hop: next.Label()}
	switch {
	case p.Verdict == path.Dropped:
		f.DropReason, f.DropLocation = p.DropReason, p.DropLocation
		f.Reason = p.DropReason
		if p.DropLocation != "" {
			f.Reason += " at " + p.DropLocation
		}
		where := dropContext(next, p)
		if p.Rule != nil {
			// The rule itself replaces the hint at which rules to read.
			where, _, _ = strings.Cut(where, " (netfilter")
			where += ": " + p.Rule.String()
			f.Rule = p.Rule
		}
		f.Reason += where
		if j.matched > 0 {
			f.Reason += "; last seen at " + last
		}
	case deviation != nil:
		where := deviation.Netns
		if deviation.Container != "" {
			where = deviation.Container
		}
		f.Reason = fmt.Sprintf("the packet went to %s %s %s instead (%s)", where, deviation.Ifname, deviation.Direction, p.End)
	case j.matched == 0:
		f.Reason = "the probe was not seen at " + next.Label() + ": " + p.End
	default:
		f.Reason = fmt.Sprintf("packet vanished after %s with no drop event", last)
	}
	j.failure = f
	return j
}

// dropContext places a drop on the path: where netfilter hooks run
// between the last hop seen and the next one expected.
func dropContext(next Hop, p *path.Path) string {
	netfilter := strings.HasPrefix(p.DropReason, "NETFILTER")
	via := ""
	if len(p.Ends) > 0 {
		for _, e := range p.Ends {
			if e.Hook == event.TPKfreeSkb && e.Reason == p.DropReason && e.Ifname != "" {
				via = e.Ifname
				break
			}
		}
	}
	switch {
	case netfilter && next.Kind == resolve.KindBridge && next.Direction == event.Forward:
		s := " in the bridge's forward path"
		if via != "" {
			s += " toward " + via
		}
		return s + " (netfilter FORWARD hook: iptables FORWARD/DOCKER-USER or an nftables forward chain)"
	case netfilter && next.Kind == resolve.KindBridge && next.Direction == event.Local:
		return " on local delivery to the host (netfilter PREROUTING/INPUT hook)"
	case netfilter && next.Direction == event.Ingress:
		return " on the way into " + next.Netns + " (its netfilter rules)"
	case netfilter:
		return " (netfilter)"
	case via != "":
		return " on " + via
	}
	return ""
}

// conclude sets the verdict and the delivery outcome from the probes.
func conclude(r *Report, opts Options) {
	var firstFail *Failure
	passed := 0
	counts := map[string]int{}
	var firstOK *Probe
	for i := range r.Probes {
		pr := &r.Probes[i]
		if !pr.PathOK {
			if firstFail == nil {
				firstFail = pr.Failure
			}
			continue
		}
		passed++
		counts[pr.Outcome]++
		if firstOK == nil {
			firstOK = pr
		}
	}
	if firstOK != nil {
		r.Delivery = delivery(r, counts, firstOK, opts)
	}
	if firstFail != nil {
		f := *firstFail
		if len(r.Probes) > 1 {
			f.Reason = fmt.Sprintf("%s (probe %d; %d/%d probes took the expected path)", f.Reason, f.Probe, passed, len(r.Probes))
		}
		r.fail(f)
		return
	}
	r.Verdict = Pass
	var hs []string
	for _, h := range r.Expected {
		hs = append(hs, h.Label())
	}
	r.Summary = fmt.Sprintf("PASS: %d/%d probes took the expected path %s", passed, len(r.Probes), strings.Join(hs, " → "))
	if r.Delivery != nil && r.Delivery.Outcome != OutcomeAccepted {
		r.Summary += "; delivery: " + r.Delivery.Outcome
		if r.Delivery.Reason != "" {
			r.Summary += " (" + r.Delivery.Reason + ")"
		}
	}
}

func delivery(r *Report, counts map[string]int, first *Probe, opts Options) *Delivery {
	d := &Delivery{Outcome: first.Outcome, Probes: counts}
	if first.Path != nil && first.Path.DropReason != "" && first.Outcome != OutcomeAccepted {
		d.Reason = first.Path.DropReason
		d.Rule = first.Path.Rule
	}
	target := r.Target.IP
	if r.Target.Name != "" {
		target = r.Target.Name + " (" + r.Target.IP + ")"
	}
	switch first.Outcome {
	case OutcomeAccepted:
		switch opts.Proto {
		case "icmp":
			d.Detail = fmt.Sprintf("%s answered: %s", target, first.Response)
		case "udp":
			d.Detail = fmt.Sprintf("a socket on udp port %d in %s took the datagram", opts.Port, target)
			if first.Response != "" {
				d.Detail += " (" + first.Response + ")"
			}
		case "tcp":
			d.Detail = first.Response
		}
	case OutcomeNoSocket:
		d.Detail = fmt.Sprintf("nothing listens on %s port %d in %s: the kernel dropped the probe with NO_SOCKET", opts.Proto, opts.Port, target)
		if first.Path != nil && first.Path.DropLocation != "" {
			d.Detail += " (" + first.Path.DropLocation + ")"
		}
		if first.Response != "" {
			d.Detail += " and the sender got " + first.Response
		}
	case OutcomeRefused:
		d.Detail = fmt.Sprintf("%s refused the probe: %s", target, first.Response)
	case OutcomeDropped:
		d.Detail = fmt.Sprintf("the probe reached %s and was dropped there: %s", target, first.Path.End)
	case OutcomeNoResponse:
		d.Detail = fmt.Sprintf("the probe reached %s; nothing came back", target)
		if first.Response != "" {
			d.Detail += " (" + first.Response + ")"
		}
	}
	if len(counts) > 1 {
		var parts []string
		for k, n := range counts {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
		sort.Strings(parts)
		d.Detail += "; outcomes differ between probes: " + strings.Join(parts, ", ")
	}
	return d
}
