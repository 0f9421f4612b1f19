// Package inspect gathers, on one screen, what people otherwise find by
// hand about a container's network path: its namespace, and for every
// endpoint the container interface, the veth peer on the host, the bridge
// it is enslaved to and the addresses, each fact checked against the
// kernel (netlink) and marked ✓ when the kernel agrees with the container
// runtime, ✗ with a warning when it does not.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// Report is the result of Inspect; it is also the JSON output.
type Report struct {
	Runtime     string   `json:"runtime"`
	Name        string   `json:"name"`
	ID          string   `json:"id"`
	Image       string   `json:"image,omitempty"`
	State       string   `json:"state"`
	PID         int      `json:"pid"`
	NetworkMode string   `json:"network_mode"`
	SandboxKey  string   `json:"sandbox_key,omitempty"`
	NetnsInode  uint32   `json:"netns_inode,omitempty"`
	NetnsNames  []string `json:"netns_names,omitempty"` // ip netns names
	// Netns is the namespace's label, as trace and latency print it.
	Netns string `json:"netns,omitempty"`
	// NSID is the id the host namespace assigned to the container's
	// namespace ("link-netnsid" in ip link); -1 when none.
	NSID int `json:"nsid"`
	// Note explains a network mode without a veth path (host, none,
	// container:X).
	Note string `json:"note,omitempty"`
	// OtherLinks lists container interfaces that belong to no endpoint
	// (besides lo).
	OtherLinks []Iface    `json:"other_links,omitempty"`
	Endpoints  []Endpoint `json:"endpoints"`
	Warnings   []string   `json:"warnings"`
	container  runtime.Container
}

// Endpoint is one network attachment with what the kernel says about it.
type Endpoint struct {
	runtime.Endpoint
	Container *Iface  `json:"container_if,omitempty"` // interface in the container namespace
	HostVeth  *Iface  `json:"host_veth,omitempty"`    // its veth peer in the host namespace
	BridgeDev *Iface  `json:"bridge_dev,omitempty"`   // the bridge the host veth should be enslaved to
	PortState string  `json:"port_state,omitempty"`   // STP state of the host veth on the bridge
	Checks    []Check `json:"checks"`
}

// Iface is one network interface as netlink shows it.
type Iface struct {
	Name        string   `json:"name"`
	Index       int      `json:"ifindex"`
	Kind        string   `json:"kind"`
	PeerIndex   int      `json:"peer_ifindex,omitempty"` // IFLA_LINK of a veth
	Up          bool     `json:"up"`                     // IFF_UP
	OperState   string   `json:"oper_state"`
	MAC         string   `json:"mac,omitempty"`
	MTU         int      `json:"mtu"`
	Master      string   `json:"master,omitempty"`
	MasterIndex int      `json:"master_ifindex,omitempty"`
	Addrs       []string `json:"addrs,omitempty"`
}

// Check is one fact the runtime claims, checked against the kernel.
type Check struct {
	Fact   string `json:"fact"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Inspect looks the container up and checks its network path. A container
// that is not running gives an error wrapping runtime.ErrNotRunning.
// Mismatches between runtime and kernel are no error: they are Checks with
// OK false, listed in Warnings.
func Inspect(ctx context.Context, rt runtime.Runtime, ref string) (*Report, error) {
	c, err := rt.Lookup(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !c.Running {
		return nil, runtime.NotRunning(c)
	}
	return FromContainer(rt.Name(), c)
}

// FromContainer builds the report for a running container already looked up.
func FromContainer(rtName string, c runtime.Container) (*Report, error) {
	r := &Report{
		Runtime:     rtName,
		Name:        c.Name,
		ID:          c.ID,
		Image:       c.Image,
		State:       c.State,
		PID:         c.PID,
		NetworkMode: c.NetworkMode,
		SandboxKey:  c.NetnsPath,
		NetnsInode:  c.NetnsInode,
		NSID:        -1,
		Endpoints:   []Endpoint{},
		Warnings:    []string{},
		container:   c,
	}
	if c.NetworkMode == "host" {
		r.Note = "shares the host network namespace (--network host): its packets use the host's own interfaces and routes; there is no veth pair or bridge on its path"
		return r, nil
	}
	if c.NetnsPath == "" {
		return nil, fmt.Errorf("container %s: its network namespace is unknown (no SandboxKey and no PID)", c.Name)
	}
	hh, _, err := resolve.HostHandle()
	if err != nil {
		return nil, err
	}
	defer hh.Close()
	r.NetnsNames = resolve.NetnsNames(c.NetnsInode)
	r.Netns = resolve.LabelOf(c.NetnsInode, c.NetnsPath)
	r.NSID = resolve.NSID(hh, c.NetnsPath)

	ch, err := resolve.NetnsHandle(c.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.Name, err)
	}
	defer ch.Close()

	clinks, err := resolve.LinkList(ch)
	if err != nil {
		return nil, fmt.Errorf("container %s: list interfaces: %w", c.Name, err)
	}
	used := map[int]bool{}
	for _, ep := range c.Endpoints {
		if ep.MAC == "" && ep.IPv4 == "" && ep.IPv6 == "" {
			continue // host/none pseudo-networks
		}
		e := checkEndpoint(ch, hh, clinks, ep, r.NSID)
		if e.Container != nil {
			used[e.Container.Index] = true
		}
		for _, k := range e.Checks {
			if !k.OK {
				r.Warnings = append(r.Warnings, fmt.Sprintf("network %s: %s", ep.Network, k.Detail))
			}
		}
		r.Endpoints = append(r.Endpoints, e)
	}
	for _, l := range clinks {
		a := l.Attrs()
		if used[a.Index] || a.Flags&net.FlagLoopback != 0 {
			continue
		}
		r.OtherLinks = append(r.OtherLinks, iface(ch, l))
	}
	switch {
	case c.NetworkMode == "none":
		r.Note = "has no network path (--network none): its namespace holds only the loopback interface"
		if len(r.OtherLinks) > 0 {
			r.Note = fmt.Sprintf("was started with --network none, yet its namespace holds %d interface(s) besides lo (added by hand?)", len(r.OtherLinks))
		}
	case strings.HasPrefix(c.NetworkMode, "container:"):
		r.Note = fmt.Sprintf("shares the network namespace of container %s (--network %s)", strings.TrimPrefix(c.NetworkMode, "container:"), c.NetworkMode)
	case len(r.Endpoints) == 0:
		r.Note = "is attached to no network with an address"
	}
	return r, nil
}

func iface(h *netlink.Handle, l netlink.Link) Iface {
	a := l.Attrs()
	f := Iface{
		Name:      a.Name,
		Index:     a.Index,
		Kind:      l.Type(),
		Up:        a.Flags&net.FlagUp != 0,
		OperState: a.OperState.String(),
		MTU:       a.MTU,
		Addrs:     resolve.Addrs(h, l),
	}
	if a.HardwareAddr != nil {
		f.MAC = a.HardwareAddr.String()
	}
	if l.Type() == "veth" {
		f.PeerIndex = a.ParentIndex
	}
	if a.MasterIndex > 0 {
		f.MasterIndex = a.MasterIndex
		if m, err := h.LinkByIndex(a.MasterIndex); err == nil {
			f.Master = m.Attrs().Name
		}
	}
	return f
}

func ok(fact string) Check                     { return Check{Fact: fact, OK: true} }
func okd(fact, detail string) Check            { return Check{Fact: fact, OK: true, Detail: detail} }
func bad(fact, detail string) Check            { return Check{Fact: fact, Detail: detail} }
func hostIP(cidr string) string                { ip, _, _ := strings.Cut(cidr, "/"); return ip }
func sameMAC(a, b string) bool                 { return strings.EqualFold(a, b) }
func hasAddr(addrs []string, cidr string) bool { return slices.Contains(addrs, cidr) }

func hasIP(addrs []string, ip string) bool {
	for _, a := range addrs {
		if hostIP(a) == ip {
			return true
		}
	}
	return false
}

func checkEndpoint(ch, hh *netlink.Handle, clinks []netlink.Link, ep runtime.Endpoint, nsid int) Endpoint {
	e := Endpoint{Endpoint: ep}
	add := func(k Check) { e.Checks = append(e.Checks, k) }

	// 1. The container-side interface: by MAC, else by address.
	var cl netlink.Link
	how := ""
	for _, l := range clinks {
		if hw := l.Attrs().HardwareAddr; hw != nil && ep.MAC != "" && sameMAC(hw.String(), ep.MAC) {
			cl, how = l, "MAC"
			break
		}
	}
	if cl == nil {
		for _, l := range clinks {
			as := resolve.Addrs(ch, l)
			if (ep.IPv4 != "" && hasIP(as, hostIP(ep.IPv4))) || (ep.IPv6 != "" && hasIP(as, hostIP(ep.IPv6))) {
				cl, how = l, "address"
				break
			}
		}
	}
	if cl == nil {
		add(bad("container interface", fmt.Sprintf("no interface in the container namespace has MAC %s or address %s", ep.MAC, firstNonEmpty(ep.IPv4, ep.IPv6))))
		e.checkBridge(hh, add)
		return e
	}
	ci := iface(ch, cl)
	e.Container = &ci
	add(okd("container interface", fmt.Sprintf("%s found by %s", ci.Name, how)))
	if ep.MAC != "" {
		if sameMAC(ci.MAC, ep.MAC) {
			add(ok("MAC " + ep.MAC))
		} else {
			add(bad("MAC "+ep.MAC, fmt.Sprintf("%s has MAC %s", ci.Name, ci.MAC)))
		}
	}
	for _, want := range []string{ep.IPv4, ep.IPv6} {
		if want == "" {
			continue
		}
		switch {
		case hasAddr(ci.Addrs, want):
			add(okd("address "+want, "on "+ci.Name))
		case hasIP(ci.Addrs, hostIP(want)):
			add(bad("address "+want, fmt.Sprintf("%s has it with another prefix: %s", ci.Name, strings.Join(ci.Addrs, ", "))))
		default:
			add(bad("address "+want, fmt.Sprintf("not on %s (it has %s)", ci.Name, orNone(ci.Addrs))))
		}
	}
	if ci.Up {
		if ci.OperState == "up" || ci.OperState == "unknown" {
			add(ok(ci.Name + " up"))
		} else {
			add(bad(ci.Name+" up", fmt.Sprintf("%s is administratively up but its link is %s (is the host veth down?)", ci.Name, ci.OperState)))
		}
	} else {
		add(bad(ci.Name+" up", ci.Name+" is down"))
	}

	// 2. The veth peer in the host namespace, through IFLA_LINK.
	if ci.Kind != "veth" {
		add(bad("veth pair", fmt.Sprintf("%s is a %s, not a veth", ci.Name, ci.Kind)))
		e.checkBridge(hh, add)
		return e
	}
	if ci.PeerIndex == 0 {
		add(bad("veth peer", fmt.Sprintf("%s reports no peer (IFLA_LINK missing)", ci.Name)))
		e.checkBridge(hh, add)
		return e
	}
	pl, err := hh.LinkByIndex(ci.PeerIndex)
	if err != nil {
		add(bad("veth peer", fmt.Sprintf("%s@if%d: no interface %d in the host namespace (peer missing or in another namespace)", ci.Name, ci.PeerIndex, ci.PeerIndex)))
		e.checkBridge(hh, add)
		return e
	}
	hv := iface(hh, pl)
	e.HostVeth = &hv
	pa := pl.Attrs()
	switch {
	case hv.Kind != "veth":
		add(bad("veth peer", fmt.Sprintf("host ifindex %d is %s, a %s, not a veth", ci.PeerIndex, hv.Name, hv.Kind)))
	case hv.PeerIndex != ci.Index:
		add(bad("veth peer", fmt.Sprintf("host %s points at ifindex %d, not at %s (%d)", hv.Name, hv.PeerIndex, ci.Name, ci.Index)))
	case nsid >= 0 && pa.NetNsID >= 0 && pa.NetNsID != nsid:
		add(bad("veth peer", fmt.Sprintf("host %s's peer lives in nsid %d, the container namespace is nsid %d", hv.Name, pa.NetNsID, nsid)))
	default:
		add(okd("veth peer", fmt.Sprintf("%s@if%d ↔ %s@if%d", ci.Name, ci.PeerIndex, hv.Name, hv.PeerIndex)))
	}
	if hv.Up {
		add(ok(hv.Name + " up"))
	} else {
		add(bad(hv.Name+" up", fmt.Sprintf("host veth %s is down: packets from %s go nowhere", hv.Name, ci.Name)))
	}

	// 3. Enslaved to the right bridge.
	e.PortState = resolve.PortState(hv.Name)
	switch {
	case hv.MasterIndex == 0 && ep.Bridge != "":
		add(bad("bridge port", fmt.Sprintf("%s is not enslaved to any bridge (expected %s)", hv.Name, ep.Bridge)))
	case ep.Bridge != "" && hv.Master != ep.Bridge:
		add(bad("bridge port", fmt.Sprintf("%s is enslaved to %s, expected %s", hv.Name, hv.Master, ep.Bridge)))
	case ep.Bridge != "":
		if e.PortState != "" && e.PortState != "forwarding" {
			add(bad("bridge port", fmt.Sprintf("%s on %s is %s, not forwarding", hv.Name, hv.Master, e.PortState)))
		} else {
			add(okd("bridge port", fmt.Sprintf("%s on %s, %s", hv.Name, hv.Master, firstNonEmpty(e.PortState, "state unknown"))))
		}
	}
	e.checkBridge(hh, add)
	return e
}

// checkBridge checks the bridge device itself and the gateway address on it.
func (e *Endpoint) checkBridge(hh *netlink.Handle, add func(Check)) {
	if e.Bridge == "" {
		return
	}
	bl, err := hh.LinkByName(e.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || strings.Contains(err.Error(), "not found") {
			add(bad("bridge "+e.Bridge, "no such device in the host namespace"))
		} else {
			add(bad("bridge "+e.Bridge, err.Error()))
		}
		return
	}
	b := iface(hh, bl)
	e.BridgeDev = &b
	switch {
	case b.Kind != "bridge":
		add(bad("bridge "+b.Name, fmt.Sprintf("%s is a %s, not a bridge", b.Name, b.Kind)))
	case !b.Up:
		add(bad("bridge "+b.Name, b.Name+" is down"))
	default:
		add(okd("bridge "+b.Name, "up, "+b.OperState))
	}
	if e.Gateway != "" {
		if hasIP(b.Addrs, e.Gateway) {
			add(okd("gateway "+e.Gateway, "on "+b.Name))
		} else {
			add(bad("gateway "+e.Gateway, fmt.Sprintf("not an address of %s (it has %s)", b.Name, orNone(b.Addrs))))
		}
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
