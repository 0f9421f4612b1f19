// Package resolve names what the kernel reports by number: it maps
// (network namespace inode, ifindex) to interface names, link kinds, veth
// peers and bridge masters, and namespace inodes to labels a person knows.
// It keeps that picture current from netlink notifications while a trace runs.
package resolve

import "net/netip"

// Link is one network interface as the resolver knows it.
type Link struct {
	Netns   uint32 // inode of the namespace the link lives in
	Index   int
	Name    string
	Kind    Kind // "veth", "bridge", "device" (no rtnl kind), "vxlan", ...
	Up      bool // administratively up (IFF_UP)
	Running bool // operationally up (IFF_RUNNING / oper state up)
	MAC     string
	MTU     int

	// MasterIndex is the ifindex of the bridge (or bond, vrf) the link is
	// enslaved to, in the same namespace; 0 if none.
	MasterIndex int
	// MasterName is the master's name, empty if none.
	MasterName string
	// PortState is the STP state of a bridge port ("forwarding",
	// "blocking", "disabled", ...); empty when the link is no bridge port.
	PortState string

	// PeerIndex and PeerNetns locate the other end of a veth pair; zero
	// when the link is no veth or its peer is not known.
	PeerIndex int
	PeerNetns uint32

	// Addrs lists the addresses with their prefix length, e.g. 10.77.0.2/24.
	// The slice is shared with the resolver: read it, do not modify it.
	Addrs []netip.Prefix
}

// IsBridge reports whether the link is a Linux bridge device.
func (l Link) IsBridge() bool { return l.Kind == KindBridge }

// Kind is a link's kind: the rtnetlink kind ("veth", "bridge", "vxlan",
// ...), KindDevice for a link without one (lo, a NIC), KindUnknown for a
// link the resolver does not know.
type Kind string

// Link kinds hoptrace reasons about.
const (
	KindVeth    Kind = "veth"
	KindBridge  Kind = "bridge"
	KindDevice  Kind = "device"
	KindUnknown Kind = "unknown"
)

// Namespace is one network namespace the resolver knows.
type Namespace struct {
	Inode uint32
	// Label is what people call it: "host" for the initial namespace, the
	// name under /var/run/netns, the Docker sandbox id, or "netns:<inode>".
	Label string
	// Path is a path that opens the namespace (a bind mount or /proc/PID/ns/net).
	Path string
	// Owner names who owns the namespace when a runtime knows it (a
	// container name); filled in by an Annotator, empty otherwise.
	Owner string
	// Seq tells namespaces that had the same inode apart: the resolver
	// numbers the namespaces it adds, and a namespace it dropped (its
	// file gone, its handle closed) may be freed and its inode given to
	// a new one, which gets a new number. 0 outside the Resolver.
	Seq uint64
}

// Annotator supplies owner names for namespaces (containers); the resolver
// asks it and knows nothing about container runtimes itself.
type Annotator interface {
	// NetnsOwner returns the owner of the namespace with this inode, if any.
	NetnsOwner(inode uint32) (string, bool)
}
