package resolve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// rawLink is one RTM_NEWLINK answer: what the netlink package parses, plus
// the bridge port STP state it does not.
type rawLink struct {
	link      netlink.Link
	portState int // -1 when the link is no bridge port
}

// dump sends a dump request of type typ with header msg on the socket and
// returns the answers of type reply; an interrupted dump returns them with
// netlink.ErrDumpInterrupted.
func dump(sh *nl.SocketHandle, typ int, msg nl.NetlinkRequestData, reply uint16) ([][]byte, error) {
	req := nl.NewNetlinkRequest(typ, unix.NLM_F_DUMP)
	req.AddData(msg)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sh}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, reply)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, err
	}
	return msgs, err
}

// dumpLinks lists the links of the namespace the socket lives in.
func dumpLinks(sh *nl.SocketHandle) ([]rawLink, error) {
	msgs, execErr := dump(sh, unix.RTM_GETLINK, nl.NewIfInfomsg(unix.AF_UNSPEC), unix.RTM_NEWLINK)
	if msgs == nil && execErr != nil {
		return nil, execErr
	}
	out := make([]rawLink, 0, len(msgs))
	for _, m := range msgs {
		l, err := netlink.LinkDeserialize(nil, m)
		if err != nil {
			return nil, fmt.Errorf("parse link: %w", err)
		}
		out = append(out, rawLink{link: l, portState: bridgePortState(m)})
	}
	return out, execErr
}

// bridgePortState extracts IFLA_LINKINFO / IFLA_INFO_SLAVE_DATA /
// IFLA_BRPORT_STATE from an RTM_NEWLINK payload when the link is a bridge
// port; -1 otherwise.
func bridgePortState(m []byte) int {
	if len(m) < unix.SizeofIfInfomsg {
		return -1
	}
	msg := nl.DeserializeIfInfomsg(m)
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return -1
	}
	for _, a := range attrs {
		if a.Attr.Type&nlaTypeMask != unix.IFLA_LINKINFO {
			continue
		}
		infos, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return -1
		}
		slaveKind := ""
		var data []byte
		for _, i := range infos {
			switch i.Attr.Type & nlaTypeMask {
			case nl.IFLA_INFO_SLAVE_KIND:
				slaveKind = string(trimNul(i.Value))
			case nl.IFLA_INFO_SLAVE_DATA:
				data = i.Value
			}
		}
		if slaveKind != "bridge" || data == nil {
			return -1
		}
		ports, err := nl.ParseRouteAttr(data)
		if err != nil {
			return -1
		}
		for _, p := range ports {
			if p.Attr.Type&nlaTypeMask == nl.IFLA_BRPORT_STATE && len(p.Value) >= 1 {
				return int(p.Value[0])
			}
		}
		return -1
	}
	return -1
}

func trimNul(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// portStateName names a bridge port STP state (BR_STATE_*).
func portStateName(s int) string {
	switch s {
	case -1:
		return ""
	case 0:
		return "disabled"
	case 1:
		return "listening"
	case 2:
		return "learning"
	case 3:
		return "forwarding"
	case 4:
		return "blocking"
	}
	return fmt.Sprintf("state%d", s)
}

// PortState returns the STP state of a bridge port in the caller's
// namespace ("forwarding", "disabled", ...) from sysfs, named as
// portStateName names netlink's; "" when unknown.
func PortState(ifname string) string {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", ifname, "brport/state"))
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return portStateName(n)
	}
	return s
}

// buildLinks turns a link and address dump of the namespace with inode
// netns into the resolver's view. nsid maps a veth peer's IFLA_LINK_NETNSID
// to a namespace inode. unresolved reports veths whose peer namespace is not
// known.
func buildLinks(netns uint32, raws []rawLink, addrs []netlink.Addr, nsid func(int) (uint32, bool)) (links map[int]*Link, names map[string]int, unresolved bool) {
	links = make(map[int]*Link, len(raws))
	names = make(map[string]int, len(raws))
	for _, rl := range raws {
		a := rl.link.Attrs()
		l := &Link{
			Netns:       netns,
			Index:       a.Index,
			Name:        a.Name,
			Kind:        Kind(rl.link.Type()),
			Up:          a.RawFlags&unix.IFF_UP != 0,
			Running:     a.RawFlags&unix.IFF_RUNNING != 0,
			MTU:         a.MTU,
			MasterIndex: a.MasterIndex,
			PortState:   portStateName(rl.portState),
		}
		if l.Kind == "" {
			l.Kind = KindDevice
		}
		if len(a.HardwareAddr) > 0 {
			l.MAC = a.HardwareAddr.String()
		}
		if l.Kind == KindVeth && a.ParentIndex > 0 {
			if a.NetNsID < 0 {
				l.PeerIndex, l.PeerNetns = a.ParentIndex, netns
			} else if ino, ok := nsid(a.NetNsID); ok {
				l.PeerIndex, l.PeerNetns = a.ParentIndex, ino
			} else {
				unresolved = true
			}
		}
		links[l.Index] = l
		names[l.Name] = l.Index
	}
	for _, l := range links {
		if l.MasterIndex != 0 {
			if m := links[l.MasterIndex]; m != nil {
				l.MasterName = m.Name
			}
		}
	}
	for _, ad := range addrs {
		p, ok := netipPrefix(ad.IPNet)
		if !ok {
			continue
		}
		if l := links[ad.LinkIndex]; l != nil {
			l.Addrs = append(l.Addrs, p)
		}
	}
	return links, names, unresolved
}

// netipPrefix converts a netlink address (IPv4 in 4 bytes or 16) to a prefix.
func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// nlaTypeMask strips the NLA_F_NESTED and NLA_F_NET_BYTEORDER flags from an
// attribute type.
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// dumpAddrs lists the addresses of the namespace the socket lives in, as
// netlink's AddrList reads them: IFA_LOCAL where there is one (a /32 or
// /128 when a point-to-point peer differs), else IFA_ADDRESS with the
// prefix length.
func dumpAddrs(sh *nl.SocketHandle) ([]netlink.Addr, error) {
	msgs, execErr := dump(sh, unix.RTM_GETADDR, nl.NewIfAddrmsg(netlink.FAMILY_ALL), unix.RTM_NEWADDR)
	if msgs == nil && execErr != nil {
		return nil, execErr
	}
	out := make([]netlink.Addr, 0, len(msgs))
	for _, m := range msgs {
		a, err := parseAddr(m)
		if err != nil {
			return nil, fmt.Errorf("parse address: %w", err)
		}
		out = append(out, a)
	}
	return out, execErr
}

// parseAddr reads the link index and address of one RTM_NEWADDR payload.
func parseAddr(m []byte) (netlink.Addr, error) {
	if len(m) < unix.SizeofIfAddrmsg {
		return netlink.Addr{}, errors.New("short message")
	}
	msg := nl.DeserializeIfAddrmsg(m)
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return netlink.Addr{}, err
	}
	var local, dst []byte
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_ADDRESS:
			dst = a.Value
		case unix.IFA_LOCAL:
			local = a.Value
		}
	}
	ad := netlink.Addr{LinkIndex: int(msg.Index)}
	switch {
	case local != nil && !(msg.Family == unix.AF_INET && net.IP(local).Equal(net.IP(dst))):
		n := 8 * len(local)
		ad.IPNet = &net.IPNet{IP: local, Mask: net.CIDRMask(n, n)}
	case dst != nil:
		ad.IPNet = &net.IPNet{IP: dst, Mask: net.CIDRMask(int(msg.Prefixlen), 8*len(dst))}
	}
	return ad, nil
}

// getNsid asks the namespace the socket lives in for the nsid it gives the
// namespace open at fd (RTM_GETNSID, which only reads: it never assigns
// one); -1 when it has none.
func getNsid(sh *nl.SocketHandle, fd int) (int32, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNSID, unix.NLM_F_REQUEST)
	req.AddData(nl.NewRtGenMsg())
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, uint32(fd))
	req.AddData(nl.NewRtAttr(unix.NETNSA_FD, b))
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sh}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNSID)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m) < unix.SizeofRtGenmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.NewRtGenMsg().Len():])
		if err != nil {
			return 0, err
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.NETNSA_NSID && len(a.Value) >= 4 {
				return int32(binary.NativeEndian.Uint32(a.Value)), nil
			}
		}
	}
	return -1, nil
}
