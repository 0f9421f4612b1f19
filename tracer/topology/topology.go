// Package topology draws the machine's container networking as people
// think of it: every Linux bridge in the host namespace, its ports, the
// veth behind each port and what is on the other end — a container, a
// named namespace, or an anonymous one — with addresses. It renders a tree
// for the terminal, Graphviz DOT and a Mermaid flowchart.
//
// It needs only netlink; a container runtime, when given, adds container
// and network names.
package topology

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// Topology is a snapshot of the bridges in the host namespace.
type Topology struct {
	HostInode uint32   `json:"host_inode"`
	Runtime   string   `json:"runtime,omitempty"` // "docker" when container names were available
	Bridges   []Bridge `json:"bridges"`
	// Loose are veths in the host namespace whose peer is in another
	// namespace but which are enslaved to no bridge.
	Loose []Port `json:"loose,omitempty"`
}

// Bridge is one Linux bridge device.
type Bridge struct {
	Name      string   `json:"name"`
	Index     int      `json:"ifindex"`
	Up        bool     `json:"up"`
	OperState string   `json:"oper_state"`
	MAC       string   `json:"mac,omitempty"`
	Addrs     []string `json:"addrs,omitempty"`
	Network   string   `json:"network,omitempty"` // container network using it (e.g. Docker's "bridge")
	Ports     []Port   `json:"ports"`
}

// Port is one interface enslaved to a bridge (or a loose veth).
type Port struct {
	Name      string `json:"name"`
	Index     int    `json:"ifindex"`
	Kind      string `json:"kind"`
	Up        bool   `json:"up"`
	OperState string `json:"oper_state"`
	State     string `json:"stp_state,omitempty"` // forwarding, disabled, ...
	MAC       string `json:"mac,omitempty"`
	Peer      *Peer  `json:"peer,omitempty"` // the other end of a veth
}

// Peer is the far end of a veth pair.
type Peer struct {
	Name  string `json:"name"`
	Index int    `json:"ifindex"`
	Up    bool   `json:"up"`
	MAC   string `json:"mac,omitempty"`
	// Netns is the namespace the peer lives in.
	Netns     Netns    `json:"netns"`
	Addrs     []string `json:"addrs,omitempty"`
	NotFound  bool     `json:"not_found,omitempty"` // the namespace could not be opened
	NotFoundW string   `json:"not_found_reason,omitempty"`
}

// Netns names a namespace.
type Netns struct {
	Inode     uint32   `json:"inode,omitempty"`
	NSID      int      `json:"nsid"`
	Container string   `json:"container,omitempty"` // owner container name
	Names     []string `json:"ip_netns,omitempty"`  // ip netns names
	Sandbox   string   `json:"sandbox,omitempty"`   // Docker sandbox id
	PID       int      `json:"pid,omitempty"`       // lowest PID in it
	Host      bool     `json:"host,omitempty"`      // the host namespace itself

	// NetnsLabel is the namespace's label, as trace and latency print it
	// ("host", an ip netns name, "docker:<sandbox>", "netns:<inode> (pid P comm)").
	NetnsLabel string `json:"label"`
}

// Label is what the namespace is called, as trace and latency call it:
// its container (resolve.Place.Who), else its label.
func (n Netns) Label() string {
	switch {
	case n.Container != "":
		return n.Container
	case n.NetnsLabel != "":
		return n.NetnsLabel
	}
	return fmt.Sprintf("nsid %d", n.NSID)
}

// Kind is "container", "netns" (named), or "namespace".
func (n Netns) Kind() string {
	switch {
	case n.Host:
		return "host"
	case n.Container != "":
		return "container"
	case len(n.Names) > 0:
		return "netns"
	}
	return "namespace"
}

// Options for Build.
type Options struct {
	// Runtime, when set, names namespaces after containers and bridges
	// after networks. Its errors are not fatal: Build then names
	// namespaces without it and reports the error in Warnings.
	Runtime runtime.Runtime
}

// Build takes the snapshot. It returns warnings for what it could not
// learn (runtime unreachable, a namespace that vanished meanwhile).
func Build(ctx context.Context, opts Options) (*Topology, []string, error) {
	var warnings []string
	hh, self, err := resolve.HostHandle()
	if err != nil {
		return nil, nil, err
	}
	defer hh.Close()
	links, err := resolve.LinkList(hh)
	if err != nil {
		return nil, nil, fmt.Errorf("list interfaces: %w", err)
	}
	t := &Topology{HostInode: self, Bridges: []Bridge{}}

	// Who owns which namespace, and which network uses which bridge.
	owners := map[uint32]string{}
	networks := map[string]string{}
	if opts.Runtime != nil {
		cs, err := opts.Runtime.List(ctx)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("container names unavailable: %v", err))
		} else {
			t.Runtime = opts.Runtime.Name()
			joined := map[uint32]bool{} // owner so far joined another's namespace
			for _, c := range cs {      // sorted by name
				if c.NetnsInode == 0 {
					continue
				}
				joiner := strings.HasPrefix(c.NetworkMode, "container:")
				if _, ok := owners[c.NetnsInode]; !ok || (joined[c.NetnsInode] && !joiner) {
					owners[c.NetnsInode] = c.Name
					joined[c.NetnsInode] = joiner
				}
				for _, ep := range c.Endpoints {
					if ep.Bridge != "" {
						networks[ep.Bridge] = ep.Network
					}
				}
			}
		}
	}

	// Namespaces by the nsid the host gave them.
	byNSID := map[int]resolve.FoundNetns{}
	for _, ns := range resolve.Scan(hh, self) {
		if ns.NSID >= 0 {
			byNSID[ns.NSID] = ns
		}
	}
	handles := map[int]*netlink.Handle{}
	defer func() {
		for _, h := range handles {
			h.Close()
		}
	}()
	peer := func(a *netlink.LinkAttrs) *Peer {
		p := &Peer{Index: a.ParentIndex, Netns: Netns{NSID: a.NetNsID}}
		var h *netlink.Handle
		if a.NetNsID < 0 {
			p.Netns = Netns{Inode: t.HostInode, NetnsLabel: "host", NSID: -1, Host: true}
			h = hh
		} else {
			ns, ok := byNSID[a.NetNsID]
			if !ok {
				p.NotFound, p.NotFoundW = true, fmt.Sprintf("no namespace with nsid %d found under /var/run/netns, /var/run/docker/netns or /proc", a.NetNsID)
				return p
			}
			p.Netns = Netns{Inode: ns.Inode, NetnsLabel: ns.Label, NSID: ns.NSID, Container: owners[ns.Inode], Names: ns.Names, Sandbox: ns.Sandbox, PID: ns.FirstPID}
			h = handles[a.NetNsID]
			if h == nil {
				var err error
				if h, err = resolve.NetnsHandle(ns.Path); err != nil {
					p.NotFound, p.NotFoundW = true, err.Error()
					return p
				}
				handles[a.NetNsID] = h
			}
		}
		l, err := h.LinkByIndex(a.ParentIndex)
		if err != nil {
			p.NotFound, p.NotFoundW = true, fmt.Sprintf("ifindex %d not in %s", a.ParentIndex, p.Netns.Label())
			return p
		}
		la := l.Attrs()
		p.Name, p.Up = la.Name, la.Flags&net.FlagUp != 0
		if la.HardwareAddr != nil {
			p.MAC = la.HardwareAddr.String()
		}
		p.Addrs = resolve.Addrs(h, l)
		return p
	}
	port := func(l netlink.Link) Port {
		a := l.Attrs()
		p := Port{Name: a.Name, Index: a.Index, Kind: l.Type(), Up: a.Flags&net.FlagUp != 0, OperState: a.OperState.String(), State: resolve.PortState(a.Name)}
		if a.HardwareAddr != nil {
			p.MAC = a.HardwareAddr.String()
		}
		if l.Type() == "veth" && a.ParentIndex > 0 {
			p.Peer = peer(a)
			if p.Peer.NotFound {
				warnings = append(warnings, fmt.Sprintf("%s: peer: %s", a.Name, p.Peer.NotFoundW))
			}
		}
		return p
	}

	bridges := map[int]*Bridge{}
	for _, l := range links {
		if l.Type() != "bridge" {
			continue
		}
		a := l.Attrs()
		b := Bridge{Name: a.Name, Index: a.Index, Up: a.Flags&net.FlagUp != 0, OperState: a.OperState.String(),
			Addrs: resolve.Addrs(hh, l), Network: networks[a.Name], Ports: []Port{}}
		if a.HardwareAddr != nil {
			b.MAC = a.HardwareAddr.String()
		}
		t.Bridges = append(t.Bridges, b)
	}
	for i := range t.Bridges {
		bridges[t.Bridges[i].Index] = &t.Bridges[i]
	}
	for _, l := range links {
		a := l.Attrs()
		if b := bridges[a.MasterIndex]; b != nil {
			b.Ports = append(b.Ports, port(l))
		} else if l.Type() == "veth" && a.MasterIndex == 0 && a.NetNsID >= 0 {
			t.Loose = append(t.Loose, port(l))
		}
	}
	sort.Slice(t.Bridges, func(i, j int) bool { return t.Bridges[i].Name < t.Bridges[j].Name })
	for _, b := range t.Bridges {
		sort.Slice(b.Ports, func(i, j int) bool { return b.Ports[i].Name < b.Ports[j].Name })
	}
	return t, warnings, nil
}
