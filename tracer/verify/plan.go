package verify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/inspect"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// plan is one verification before its probes: the source endpoint, the
// target, the configuration checks and the expected hops.
type plan struct {
	report *Report
	src    runtime.Container
	ep     runtime.Endpoint
	srcIP  netip.Addr
	dstIP  netip.Addr
	// inodes of the namespaces on the path
	srcNetns, dstNetns uint32
}

func (p *plan) netns() []uint32 {
	out := []uint32{p.srcNetns}
	if p.dstNetns != 0 && p.dstNetns != p.srcNetns {
		out = append(out, p.dstNetns)
	}
	return out
}

// hasBridgePath reports whether an endpoint is a veth on a Linux bridge.
func hasBridgePath(ep runtime.Endpoint) bool {
	return ep.Bridge != "" && ep.IPv4 != ""
}

func noPath(c runtime.Container) error {
	switch {
	case c.NetworkMode == "host":
		return noPathErr("container %s uses the host network namespace (--network host): there is no veth or bridge on its path", c.Name)
	case c.NetworkMode == "none":
		return noPathErr("container %s has no network (--network none)", c.Name)
	case strings.HasPrefix(c.NetworkMode, "container:"):
		return noPathErr("container %s shares the network namespace of %s: verify that container instead", c.Name, strings.TrimPrefix(c.NetworkMode, "container:"))
	}
	return noPathErr("container %s is attached to no bridge network with an IPv4 address", c.Name)
}

// plan resolves the target, checks the configuration and builds the
// expected path. A failed check makes the report a FAIL (stage
// configuration); errors are for what prevents any verdict.
func (v *Verifier) plan(ctx context.Context, c runtime.Container, opts Options) (*plan, error) {
	if c.NetworkMode == "host" || c.NetnsPath == "" {
		return nil, noPath(c)
	}
	var bridged []runtime.Endpoint
	for _, ep := range c.Endpoints {
		if hasBridgePath(ep) {
			bridged = append(bridged, ep)
		}
	}
	if len(bridged) == 0 {
		return nil, noPath(c)
	}
	p := &plan{src: c, srcNetns: c.NetnsInode}
	r := &Report{Container: c.Name, ID: c.ID, Proto: opts.Proto, Checks: []Check{}, Expected: []Hop{}, Probes: []Probe{}}
	if opts.Proto != "icmp" {
		r.Port = opts.Port
	}
	p.report = r

	var tc *runtime.Container
	var tep runtime.Endpoint
	to := strings.TrimSpace(opts.To)
	switch {
	case to == "" || to == TargetGateway:
		p.ep = bridged[0]
		if p.ep.Gateway == "" {
			return nil, targetErr("network %s of container %s has no gateway: use --to with a container on the same bridge", p.ep.Network, c.Name)
		}
		r.Target = Target{Kind: TargetGateway, IP: p.ep.Gateway}
	default:
		if ip, ok := parseAddr(to); ok {
			if ep, ok := gatewayEndpoint(bridged, ip); ok {
				p.ep = ep
				r.Target = Target{Kind: TargetGateway, IP: ip.String()}
				break
			}
			t, ep, err := v.containerByIP(ctx, c, bridged, ip)
			if err != nil {
				return nil, err
			}
			tc, tep = &t, ep
		} else if strings.Contains(to, ":") || looksLikeIP(to) {
			return nil, targetErr("target %q: not an IPv4 address (verify probes IPv4 only)", to)
		} else {
			t, err := v.Runtime.Lookup(ctx, to)
			if err != nil {
				if errors.Is(err, runtime.ErrNotFound) {
					return nil, targetErr("target %q: no such container, and not \"gateway\" or an IPv4 address", to)
				}
				return nil, fmt.Errorf("target %q: %w", to, err)
			}
			if !t.Running {
				return nil, targetErr("target %s is not running (state: %s)", t.Name, t.State)
			}
			if t.ID == c.ID {
				return nil, targetErr("target %s is the container itself", t.Name)
			}
			if t.NetnsInode != 0 && t.NetnsInode == c.NetnsInode {
				return nil, targetErr("target %s shares %s's network namespace: no veth or bridge lies between them", t.Name, c.Name)
			}
			ep, err := sharedEndpoint(c, bridged, t)
			if err != nil {
				return nil, err
			}
			tc = &t
			tep = ep
		}
		if tc != nil {
			for _, ep := range bridged {
				if ep.NetworkID == tep.NetworkID {
					p.ep = ep
				}
			}
			r.Target = Target{Kind: TargetContainer, Name: tc.Name, ID: tc.ID, IP: hostIP(tep.IPv4), NetnsPath: tc.NetnsPath, Netns: tc.NetnsInode}
			p.dstNetns = tc.NetnsInode
		}
	}
	r.Network, r.Bridge, r.Source = p.ep.Network, p.ep.Bridge, hostIP(p.ep.IPv4)
	p.srcIP, _ = parseAddr(r.Source)
	p.dstIP, _ = parseAddr(r.Target.IP)
	if !p.srcIP.IsValid() || !p.dstIP.IsValid() {
		return nil, fmt.Errorf("container %s on %s: no IPv4 source or target address (%q → %q)", c.Name, p.ep.Network, r.Source, r.Target.IP)
	}

	// Configuration checks: the source endpoint, from inspect.
	src, err := inspect.FromContainer(v.Runtime.Name(), c)
	if err != nil {
		return nil, err
	}
	se, ok := findEndpoint(src, p.ep)
	if !ok {
		return nil, fmt.Errorf("container %s: endpoint on %s not found by inspect", c.Name, p.ep.Network)
	}
	r.Checks = append(r.Checks, endpointChecks(c.Name, se, true)...)
	if se.Container != nil {
		r.Ifname = se.Container.Name
		r.Checks = append(r.Checks, routeCheck(c, se, p.dstIP))
	}
	first := Hop{Netns: c.Name, NetnsInode: c.NetnsInode, Ifname: orDefault(r.Ifname, "eth0"), Kind: resolve.KindVeth, Direction: event.Egress, Note: "leaves " + c.Name}
	hostVeth := "?"
	if se.HostVeth != nil {
		hostVeth = se.HostVeth.Name
	}
	r.Expected = append(r.Expected,
		first,
		Hop{Netns: "host", NetnsInode: 0, Ifname: hostVeth, Kind: resolve.KindVeth, Direction: event.Ingress, Note: "port of " + p.ep.Bridge},
	)
	if tc == nil {
		if c := gatewayCheck(se, p.dstIP); c != nil {
			r.Checks = append(r.Checks, *c)
		}
		r.Expected = append(r.Expected, Hop{Netns: "host", Ifname: p.ep.Bridge, Kind: resolve.KindBridge, Direction: event.Local, Note: "to the host stack: gateway " + r.Target.IP})
	} else {
		dst, err := inspect.FromContainer(v.Runtime.Name(), *tc)
		if err != nil {
			return nil, err
		}
		de, ok := findEndpoint(dst, tep)
		if !ok {
			return nil, fmt.Errorf("target %s: endpoint on %s not found by inspect", tc.Name, tep.Network)
		}
		r.Checks = append(r.Checks, endpointChecks(tc.Name, de, false)...)
		tVeth, tIf := "?", "eth0"
		if de.HostVeth != nil {
			tVeth = de.HostVeth.Name
		}
		if de.Container != nil {
			tIf = de.Container.Name
		}
		r.Target.Ifname, r.Target.HostVeth = tIf, tVeth
		r.Expected = append(r.Expected,
			Hop{Netns: "host", Ifname: p.ep.Bridge, Kind: resolve.KindBridge, Direction: event.Forward, Note: hostVeth + " -> " + tVeth},
			Hop{Netns: "host", Ifname: tVeth, Kind: resolve.KindVeth, Direction: event.Egress, Note: "port of " + p.ep.Bridge},
			Hop{Netns: tc.Name, NetnsInode: tc.NetnsInode, Ifname: tIf, Kind: resolve.KindVeth, Direction: event.Ingress, Note: "arrives in " + tc.Name},
		)
	}
	markConsequences(r.Checks)
	for _, k := range r.Checks {
		if !k.OK && !k.Consequence {
			r.fail(Failure{Stage: StageConfig, Hop: k.Hop, Reason: k.Detail})
			r.ProbesSkipped = "the configuration fails at " + k.Hop + ": a probe could not take the expected path"
			break
		}
	}
	return p, nil
}

func looksLikeIP(s string) bool {
	dots := strings.Count(s, ".")
	if dots != 3 {
		return false
	}
	return strings.Trim(s, "0123456789.") == ""
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func gatewayEndpoint(eps []runtime.Endpoint, ip netip.Addr) (runtime.Endpoint, bool) {
	for _, ep := range eps {
		if ep.Gateway == ip.String() {
			return ep, true
		}
	}
	return runtime.Endpoint{}, false
}

func describeNetworks(eps []runtime.Endpoint) string {
	var s []string
	for _, ep := range eps {
		if ep.Bridge != "" {
			s = append(s, fmt.Sprintf("%s (bridge %s, %s)", ep.Network, ep.Bridge, ep.IPv4))
		} else if ep.Network != "" {
			s = append(s, ep.Network)
		}
	}
	if len(s) == 0 {
		return "no network"
	}
	return strings.Join(s, ", ")
}

// sharedEndpoint returns t's endpoint on a bridge network c is on too.
func sharedEndpoint(c runtime.Container, bridged []runtime.Endpoint, t runtime.Container) (runtime.Endpoint, error) {
	for _, ep := range bridged {
		for _, tep := range t.Endpoints {
			if tep.NetworkID == ep.NetworkID && hasBridgePath(tep) {
				return tep, nil
			}
		}
	}
	if t.NetworkMode == "host" {
		return runtime.Endpoint{}, targetErr("target %s uses the host network namespace: it is reached through %s's gateway and the host's routing, not across the bridge: verify --to gateway instead", t.Name, c.Name)
	}
	return runtime.Endpoint{}, targetErr("target %s is not on the same bridge as %s: %s is on %s; %s is on %s. Packets between different bridge networks are routed by the host (and Docker isolates them): there is no bridge path to verify",
		t.Name, c.Name, c.Name, describeNetworks(bridged), t.Name, describeNetworks(t.Endpoints))
}

// containerByIP finds the running container with address ip on one of the
// source's bridge networks.
func (v *Verifier) containerByIP(ctx context.Context, c runtime.Container, bridged []runtime.Endpoint, ip netip.Addr) (runtime.Container, runtime.Endpoint, error) {
	var inSubnet *runtime.Endpoint
	for i, ep := range bridged {
		if pfx, err := netip.ParsePrefix(ep.IPv4); err == nil && pfx.Masked().Contains(ip) {
			inSubnet = &bridged[i]
		}
		if hostIP(ep.IPv4) == ip.String() {
			return runtime.Container{}, runtime.Endpoint{}, targetErr("target %s is %s's own address", ip, c.Name)
		}
	}
	all, err := v.Runtime.List(ctx)
	if err != nil {
		return runtime.Container{}, runtime.Endpoint{}, err
	}
	for _, t := range all {
		if t.ID == c.ID {
			continue
		}
		for _, tep := range t.Endpoints {
			if hostIP(tep.IPv4) != ip.String() {
				continue
			}
			if inSubnet != nil && tep.NetworkID == inSubnet.NetworkID {
				return t, tep, nil
			}
			if _, err := sharedEndpoint(c, bridged, t); err != nil {
				return runtime.Container{}, runtime.Endpoint{}, wrapTarget(fmt.Sprintf("target %s belongs to container %s", ip, t.Name), err)
			}
		}
	}
	if inSubnet != nil {
		return runtime.Container{}, runtime.Endpoint{}, targetErr("target %s: no running container has this address on network %s (bridge %s): nothing known to verify against",
			ip, inSubnet.Network, inSubnet.Bridge)
	}
	return runtime.Container{}, runtime.Endpoint{}, targetErr("target %s is not on %s's bridge networks (%s): it would be routed through the gateway and beyond the bridge; verify checks one bridge: use --to gateway or a container on the same bridge",
		ip, c.Name, describeNetworks(bridged))
}

func findEndpoint(r *inspect.Report, ep runtime.Endpoint) (inspect.Endpoint, bool) {
	for _, e := range r.Endpoints {
		if e.NetworkID == ep.NetworkID && e.Network == ep.Network {
			return e, true
		}
	}
	return inspect.Endpoint{}, false
}

// endpointChecks turns inspect's checks of one endpoint into checks of
// path hops. The gateway check is left to gatewayCheck; for a target
// container the bridge device checks are not repeated.
func endpointChecks(owner string, e inspect.Endpoint, source bool) []Check {
	ci, hv := "eth0", "host veth"
	if e.Container != nil {
		ci = e.Container.Name
	}
	if e.HostVeth != nil {
		hv = e.HostVeth.Name
	}
	var out []Check
	for _, k := range e.Checks {
		hop := ""
		switch {
		case k.Fact == "container interface" || strings.HasPrefix(k.Fact, "MAC ") || strings.HasPrefix(k.Fact, "address ") || k.Fact == ci+" up":
			hop = owner + " " + ci
		case k.Fact == "veth pair" || k.Fact == "veth peer":
			hop = "veth pair " + owner + " " + ci
		case e.HostVeth != nil && k.Fact == hv+" up":
			hop = "host " + hv
		case k.Fact == "bridge port":
			hop = "bridge port " + hv + " → " + e.Bridge
		case strings.HasPrefix(k.Fact, "gateway "):
			continue // gatewayCheck
		case strings.HasPrefix(k.Fact, "bridge "):
			if !source {
				continue
			}
			hop = "bridge " + e.Bridge
		default:
			hop = owner + " " + ci
		}
		detail := k.Detail
		if k.OK {
			detail = okDetail(k, e)
		} else if !source {
			detail = strings.Replace(detail, "packets from "+ci+" go nowhere", "packets for "+owner+" go nowhere", 1)
		}
		out = append(out, Check{Hop: hop, Fact: k.Fact, OK: k.OK, Detail: detail})
	}
	return out
}

// okDetail states the fact behind a passed check.
func okDetail(k inspect.Check, e inspect.Endpoint) string {
	switch {
	case e.Container != nil && k.Fact == e.Container.Name+" up":
		return fmt.Sprintf("%s is up (%s)", e.Container.Name, e.Container.OperState)
	case e.HostVeth != nil && k.Fact == e.HostVeth.Name+" up":
		return fmt.Sprintf("%s is up (%s) in the host namespace", e.HostVeth.Name, e.HostVeth.OperState)
	case k.Fact == "container interface" && e.Container != nil:
		return fmt.Sprintf("%s (%s), %s", e.Container.Name, e.Container.Kind, k.Detail)
	case strings.HasPrefix(k.Fact, "address ") && e.Container != nil:
		return fmt.Sprintf("%s on %s", strings.TrimPrefix(k.Fact, "address "), e.Container.Name)
	case strings.HasPrefix(k.Fact, "MAC ") && e.Container != nil:
		return fmt.Sprintf("%s has %s", e.Container.Name, k.Fact)
	case k.Fact == "veth peer":
		return k.Detail + " (host namespace)"
	case strings.HasPrefix(k.Fact, "bridge ") && k.Fact != "bridge port" && e.BridgeDev != nil:
		return fmt.Sprintf("%s is a bridge, up (%s)", e.BridgeDev.Name, e.BridgeDev.OperState)
	}
	if k.Detail == "" {
		return k.Fact
	}
	return k.Detail
}

// markConsequences marks the container interface's loss of carrier as a
// consequence when its host veth is down: the verdict names the cause.
func markConsequences(ks []Check) {
	vethDown := map[string]bool{} // owner prefix of the veth pair hop
	for _, k := range ks {
		if !k.OK && strings.HasPrefix(k.Hop, "host ") && strings.HasSuffix(k.Fact, " up") {
			vethDown[k.Hop] = true
		}
	}
	if len(vethDown) == 0 {
		return
	}
	for i := range ks {
		k := &ks[i]
		if !k.OK && strings.HasSuffix(k.Fact, " up") && !strings.HasPrefix(k.Hop, "host ") &&
			strings.Contains(k.Detail, "administratively up but its link is") {
			k.Consequence = true
		}
		// A port whose device is down is "disabled" on the bridge.
		if !k.OK && k.Fact == "bridge port" && strings.Contains(k.Detail, " is disabled, not forwarding") {
			k.Consequence = true
		}
	}
}

// gatewayCheck confirms local delivery: the gateway address is on the bridge.
func gatewayCheck(e inspect.Endpoint, gw netip.Addr) *Check {
	hop := "gateway " + gw.String()
	if e.BridgeDev == nil {
		return nil // the bridge check already failed
	}
	for _, a := range e.BridgeDev.Addrs {
		if hostIP(a) == gw.String() {
			return &Check{Hop: hop, Fact: hop + " on " + e.Bridge, OK: true, Detail: fmt.Sprintf("%s is an address of %s: local delivery to the host", a, e.Bridge)}
		}
	}
	return &Check{Hop: hop, Fact: hop + " on " + e.Bridge, Detail: fmt.Sprintf("%s is not an address of %s (it has %s): nothing on the host answers for the gateway", gw, e.Bridge, orNone(e.BridgeDev.Addrs))}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// routeCheck asks the container's routing table how it reaches dst: it
// must leave through the endpoint's interface, directly (same subnet).
func routeCheck(c runtime.Container, e inspect.Endpoint, dst netip.Addr) Check {
	hop := c.Name + " route"
	fact := "route to " + dst.String()
	h, err := resolve.NetnsHandle(c.NetnsPath)
	if err != nil {
		return Check{Hop: hop, Fact: fact, Detail: err.Error()}
	}
	defer h.Close()
	routes, err := h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(routes) == 0 {
		return Check{Hop: hop, Fact: fact, Detail: fmt.Sprintf("%s has no route to %s (%v)", c.Name, dst, err)}
	}
	rt := routes[0]
	out := fmt.Sprintf("ifindex %d", rt.LinkIndex)
	if l, err := h.LinkByIndex(rt.LinkIndex); err == nil {
		out = l.Attrs().Name
	}
	if rt.LinkIndex != e.Container.Index {
		return Check{Hop: hop, Fact: fact, Detail: fmt.Sprintf("%s routes %s out of %s, not %s", c.Name, dst, out, e.Container.Name)}
	}
	if rt.Gw != nil {
		return Check{Hop: hop, Fact: fact, Detail: fmt.Sprintf("%s routes %s via %s: it is not on %s's subnet", c.Name, dst, rt.Gw, e.Container.Name)}
	}
	src := ""
	if rt.Src != nil {
		src = ", source " + rt.Src.String()
	}
	return Check{Hop: hop, Fact: fact, OK: true, Detail: fmt.Sprintf("%s leaves through %s, directly (same subnet%s)", dst, out, src)}
}

// kindError is an error message that matches a sentinel with errors.Is
// without repeating the sentinel's words.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func targetErr(format string, a ...any) error {
	return &kindError{msg: fmt.Sprintf(format, a...), kind: ErrTarget}
}

func noPathErr(format string, a ...any) error {
	return &kindError{msg: fmt.Sprintf(format, a...), kind: ErrNoPath}
}

func wrapTarget(prefix string, err error) error {
	return &kindError{msg: prefix + ": " + err.Error(), kind: ErrTarget}
}
