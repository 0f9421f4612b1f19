package resolve

import "strconv"

// Names is what naming a place needs. The live Resolver provides it, and so
// does a Static picture (tests, snapshots).
type Names interface {
	Link(netns uint32, ifindex int) (Link, bool)
	Namespace(inode uint32) (Namespace, bool)
	HostInode() uint32
}

// Place is a point where a packet is seen, (namespace, interface), named
// the one way trace, latency, topology, inspect, verify and the Prometheus
// labels all name it.
type Place struct {
	NetnsInode uint32
	// Netns is the namespace's label: "host", its name under
	// /var/run/netns, "docker:<sandbox id>", "netns:<inode> (pid P comm)"
	// for one known through a process, "netns:<inode>" for one not known,
	// or "?" when the kernel reported none (inode 0).
	Netns string
	// Container owns the namespace, when a runtime says so; else empty.
	Container string
	Ifindex   int
	// Ifname is the interface's name; empty when the link is not known.
	Ifname string
	// Kind is the link kind ("veth", "bridge", "device", ...); empty when
	// the link is not known.
	Kind Kind
	// Bridge is the bridge the interface is a port of, or the interface
	// itself when it is a bridge; empty otherwise.
	Bridge string
	// IsBridge reports whether the interface is a bridge device.
	IsBridge bool
}

// Who is the place's owner as reports print it: the container, else the
// namespace's label.
func (p Place) Who() string {
	if p.Container != "" {
		return p.Container
	}
	return p.Netns
}

// NetnsLabel names a namespace by inode (see Place.Netns); the second
// result is its owning container.
func NetnsLabel(n Names, inode uint32) (label, container string) {
	switch {
	case inode == 0:
		return "?", ""
	case n == nil:
	case inode == n.HostInode():
		ns, _ := n.Namespace(inode)
		return "host", ns.Owner
	}
	if n != nil {
		if ns, ok := n.Namespace(inode); ok && ns.Label != "" {
			return ns.Label, ns.Owner
		}
	}
	return "netns:" + strconv.FormatUint(uint64(inode), 10), ""
}

// PlaceOf names the interface with ifindex in the namespace with inode
// netns (ifindex 0: the namespace alone).
func PlaceOf(n Names, netns uint32, ifindex int) Place {
	p := Place{NetnsInode: netns, Ifindex: ifindex}
	p.Netns, p.Container = NetnsLabel(n, netns)
	if ifindex == 0 || n == nil {
		return p
	}
	l, ok := n.Link(netns, ifindex)
	if !ok {
		return p
	}
	p.Ifname, p.Kind = l.Name, l.Kind
	switch {
	case l.IsBridge():
		p.Bridge, p.IsBridge = l.Name, true
	case l.MasterIndex != 0:
		if m, ok := n.Link(netns, l.MasterIndex); ok && m.IsBridge() {
			p.Bridge = m.Name
		}
	}
	return p
}

// Place names an interface with the resolver's current picture.
func (r *Resolver) Place(netns uint32, ifindex int) Place { return PlaceOf(r, netns, ifindex) }

// Static is a fixed picture of namespaces and links that implements
// Names: for tests, and for code that names places from facts it gathered
// itself.
type Static struct {
	Host       uint32
	Namespaces map[uint32]Namespace
	Links      map[uint32]map[int]Link // by namespace inode, then ifindex
}

// HostInode implements Names.
func (s *Static) HostInode() uint32 { return s.Host }

// Namespace implements Names.
func (s *Static) Namespace(inode uint32) (Namespace, bool) {
	ns, ok := s.Namespaces[inode]
	return ns, ok
}

// Link implements Names.
func (s *Static) Link(netns uint32, ifindex int) (Link, bool) {
	l, ok := s.Links[netns][ifindex]
	return l, ok
}

// NewStatic builds a picture from namespaces and links (each link's Netns
// says where it lives).
func NewStatic(host uint32, nss []Namespace, links ...Link) *Static {
	s := &Static{Host: host, Namespaces: map[uint32]Namespace{}}
	for _, ns := range nss {
		s.Namespaces[ns.Inode] = ns
	}
	for _, l := range links {
		s.AddLink(l)
	}
	return s
}

// AddLink adds (or replaces) a link; its Netns says where.
func (s *Static) AddLink(l Link) {
	if s.Links == nil {
		s.Links = map[uint32]map[int]Link{}
	}
	if s.Links[l.Netns] == nil {
		s.Links[l.Netns] = map[int]Link{}
	}
	s.Links[l.Netns][l.Index] = l
}
