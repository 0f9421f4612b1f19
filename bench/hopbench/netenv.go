package main

import (
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/hoptrace/hoptrace/internal/testnet"
)

// Net is the benchmark's network: the tests' fixture, a bridge in the host
// namespace with named namespaces attached to it, each through a veth pair
// (eth0 inside). The benchmark sends traffic only between the addresses of
// a Net it built.
type Net = testnet.Topology

// NewNet builds a bridge and n namespaces (a /16 beyond 250); the caller
// removes them with Close. On error, whatever was built is removed.
func NewNet(n int) (*Net, error) {
	return testnet.Build(testnet.Options{Hosts: n})
}

// disableIPv6 turns IPv6 off inside the namespaces so that router
// solicitations and MLD reports do not add background packets.
func disableIPv6(nt *Net) {
	for _, h := range nt.Hosts {
		_ = h.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0)
		})
	}
}

// udpSender opens a UDP socket in h's namespace connected to dst.
func udpSender(h *testnet.Host, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = net.DialTimeout("udp4", dst.String(), time.Second)
		return err
	})
	return c, err
}
