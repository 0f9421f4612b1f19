package testnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hoptrace/hoptrace/tracer/nsenter"
)

// Do runs fn with the calling goroutine locked to its OS thread and that
// thread inside the host's network namespace, and moves the thread back
// afterwards. Sockets fn creates stay in the host's namespace for their whole
// life. Goroutines fn starts do not inherit the namespace.
func (h *Host) Do(fn func() error) error {
	return nsenter.Do(h.Path, fn)
}

// ListenUDP opens a UDP socket inside the host's namespace, bound to
// 0.0.0.0:port (port 0 picks one).
func (h *Host) ListenUDP(port int) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: listen udp :%d: %w", h.Name, port, err)
	}
	return pc, nil
}

// ListenTCP opens a TCP listener inside the host's namespace, bound to
// 0.0.0.0:port (port 0 picks one).
func (h *Host) ListenTCP(port int) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() (err error) {
		l, err = net.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: listen tcp :%d: %w", h.Name, port, err)
	}
	return l, nil
}

// DialTCP connects from inside the host's namespace.
func (h *Host) DialTCP(dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: dial tcp %s: %w", h.Name, dst, err)
	}
	return c, nil
}

// AddAddr adds an address to the host's eth0, usable at once (IPv6: no
// duplicate address detection).
func (h *Host) AddAddr(p netip.Prefix) error {
	return h.Do(func() error {
		l, err := netlink.LinkByName(h.IfName)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = 0x2 // IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("%s: add %s: %w", h.Name, p, err)
		}
		return nil
	})
}

// SendUDP sends one datagram from inside the host's namespace.
func (h *Host) SendUDP(dst netip.AddrPort, payload []byte) error {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = net.Dial("udp", dst.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: udp socket to %s: %w", h.Name, dst, err)
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("%s: send udp to %s: %w", h.Name, dst, err)
	}
	return nil
}

// Ping sends count ICMP echo requests to dst from inside the host's
// namespace (over a raw socket, no external binary), waiting up to timeout
// for each reply, and returns how many replies came back. err reports
// socket failures only; compare replies with count to judge reachability.
func (h *Host) Ping(dst netip.Addr, count int, timeout time.Duration) (replies int, err error) {
	if !dst.Is4() {
		return 0, fmt.Errorf("%s: ping %s: only IPv4 is supported", h.Name, dst)
	}
	var conn *net.IPConn
	err = h.Do(func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		conn = c.(*net.IPConn)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: icmp socket: %w", h.Name, err)
	}
	defer conn.Close()
	return ping(conn, dst, count, timeout)
}

func ping(conn *net.IPConn, dst netip.Addr, count int, timeout time.Duration) (int, error) {
	id := uint16(os.Getpid()) ^ uint16(randByte())<<8 ^ uint16(randByte())
	to := &net.IPAddr{IP: dst.AsSlice()}
	buf := make([]byte, 1500)
	replies := 0
	for seq := 1; seq <= count; seq++ {
		msg := echoRequest(id, uint16(seq), []byte("hoptrace-testnet"))
		if _, err := conn.WriteTo(msg, to); err != nil {
			return replies, fmt.Errorf("send echo to %s: %w", dst, err)
		}
		deadline := time.Now().Add(timeout)
		if err := conn.SetReadDeadline(deadline); err != nil {
			return replies, err
		}
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return replies, fmt.Errorf("receive from %s: %w", dst, err)
			}
			src, ok := from.(*net.IPAddr)
			if !ok || !src.IP.Equal(to.IP) {
				continue
			}
			if rid, rseq, ok := parseEchoReply(buf[:n]); ok && rid == id && rseq == uint16(seq) {
				replies++
				break
			}
		}
	}
	return replies, nil
}

// echoRequest builds an ICMPv4 echo request.
func echoRequest(id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// parseEchoReply returns id and sequence of an ICMPv4 echo reply (the IP
// header already stripped).
func parseEchoReply(b []byte) (id, seq uint16, ok bool) {
	if len(b) < 8 || b[0] != 0 || b[1] != 0 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), true
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
