// Package pktfilter selects packets by protocol, address and port, the
// everyday subset of a tcpdump expression, applied to parsed headers.
package pktfilter

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/hoptrace/hoptrace/tracer/event"
)

// Filter matches packets. The zero value matches every packet.
type Filter struct {
	proto string       // "", "icmp", "icmp6", "tcp", "udp", "arp", "ip", "ip6"
	host  netip.Addr   // source or destination, if valid
	net   netip.Prefix // source or destination within, if valid
	port  uint16       // source or destination port, if nonzero
}

// Protocols lists the names --proto accepts.
const Protocols = "icmp, icmp6, tcp, udp, arp, ip, ip6"

// New validates the parts of a filter: proto (see Protocols), host (an
// address or a CIDR prefix) and port (1-65535; implies tcp or udp).
func New(proto, host string, port int) (Filter, error) {
	var f Filter
	switch p := strings.ToLower(strings.TrimSpace(proto)); p {
	case "", "icmp", "icmp6", "tcp", "udp", "arp", "ip", "ip6":
		f.proto = p
	case "icmpv6":
		f.proto = "icmp6"
	case "ipv4":
		f.proto = "ip"
	case "ipv6":
		f.proto = "ip6"
	default:
		return f, fmt.Errorf("unknown protocol %q (want one of %s)", proto, Protocols)
	}
	if host = strings.TrimSpace(host); host != "" {
		if strings.Contains(host, "/") {
			p, err := netip.ParsePrefix(host)
			if err != nil {
				return f, fmt.Errorf("bad --host %q: not an address or prefix", host)
			}
			f.net = p.Masked()
		} else {
			a, err := netip.ParseAddr(host)
			if err != nil {
				return f, fmt.Errorf("bad --host %q: not an address or prefix", host)
			}
			f.host = a.Unmap()
		}
	}
	if port < 0 || port > 65535 {
		return f, fmt.Errorf("bad --port %d: want 1-65535", port)
	}
	if port > 0 {
		if f.proto != "" && f.proto != "tcp" && f.proto != "udp" {
			return f, fmt.Errorf("--port needs tcp or udp, not %s", f.proto)
		}
		f.port = uint16(port)
	}
	return f, nil
}

// Empty reports whether the filter matches everything.
func (f Filter) Empty() bool { return f == Filter{} }

// Match reports whether a packet with these headers passes.
func (f Filter) Match(m *event.Meta) bool {
	if !f.matchProto(m) {
		return false
	}
	if f.host.IsValid() || f.net.IsValid() {
		src, dst := event.Src(m), event.Dst(m)
		ok := func(a netip.Addr) bool {
			if !a.IsValid() {
				return false
			}
			if f.host.IsValid() {
				return a == f.host
			}
			return f.net.Contains(a)
		}
		if !ok(src) && !ok(dst) {
			return false
		}
	}
	if f.port != 0 {
		sp, dp := event.Ports(m)
		if sp != f.port && dp != f.port {
			return false
		}
	}
	return true
}

func (f Filter) matchProto(m *event.Meta) bool {
	ip := m.EthProto == event.EthIPv4 || m.EthProto == event.EthIPv6
	switch f.proto {
	case "":
		return true
	case "arp":
		return m.EthProto == event.EthARP
	case "ip":
		return m.EthProto == event.EthIPv4
	case "ip6":
		return m.EthProto == event.EthIPv6
	case "icmp":
		return m.EthProto == event.EthIPv4 && m.L4Proto == event.ProtoICMP
	case "icmp6":
		return m.EthProto == event.EthIPv6 && m.L4Proto == event.ProtoICMPv6
	case "tcp":
		return ip && m.L4Proto == event.ProtoTCP
	case "udp":
		return ip && m.L4Proto == event.ProtoUDP
	}
	return false
}
