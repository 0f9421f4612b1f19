package testnet

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// DisableIPv6 sets net.ipv6.conf.eth0.disable_ipv6=1 in the host's
// namespace: IPv6 that reaches its eth0 (multicast the bridge floods) is
// then freed by ip6_rcv_core, with the reason IPV6DISABLED where the kernel
// has it. The namespace goes with the topology, and the setting with it.
func (h *Host) DisableIPv6() error {
	return h.Do(func() error {
		name := "/proc/sys/net/ipv6/conf/" + h.IfName + "/disable_ipv6"
		if err := os.WriteFile(name, []byte("1\n"), 0); err != nil {
			return fmt.Errorf("%s: disable IPv6: %w", h.Name, err)
		}
		return nil
	})
}

// tcpTimeWait is TIME_WAIT's number in /proc/net/tcp's st column.
const tcpTimeWait = 0x06

// CloseIntoTimeWait makes n TCP connections from h to a listener in peer,
// each closed by h first: once peer has acknowledged h's FIN, h's orphaned
// socket is a timewait one (still FIN_WAIT2). Only then does peer close:
// its FIN, the closing handshake's last segment but one, reaches that
// TIME_WAIT connection (tcp_v4_rcv answers it from there and frees it with
// no reason). It returns the listener's address (gone when it returns).
func (h *Host) CloseIntoTimeWait(peer *Host, n int) (netip.AddrPort, error) {
	l, err := peer.ListenTCP(0)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer l.Close()
	dst := netip.AddrPortFrom(peer.Addr.Addr(), uint16(l.Addr().(*net.TCPAddr).Port))
	for i := 0; i < n; i++ {
		if err := closeIntoTimeWait(h, l, dst); err != nil {
			return dst, fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
	}
	return dst, nil
}

func closeIntoTimeWait(h *Host, l net.Listener, dst netip.AddrPort) error {
	c, err := h.DialTCP(dst, 2*time.Second)
	if err != nil {
		return err
	}
	s, err := l.Accept() // the handshake is done: it returns at once
	if err != nil {
		c.Close()
		return fmt.Errorf("accept: %w", err)
	}
	defer s.Close()
	if _, err := c.Write([]byte("bye")); err != nil {
		c.Close()
		return fmt.Errorf("write: %w", err)
	}
	if err := c.Close(); err != nil { // h's FIN
		return fmt.Errorf("close %s: %w", h.Name, err)
	}
	s.SetReadDeadline(time.Now().Add(2 * time.Second))
	if b, err := io.ReadAll(s); err != nil || string(b) != "bye" { // up to h's FIN
		return fmt.Errorf("read %q: %v", b, err)
	}
	// peer acknowledged the FIN at once; give the ACK time to reach h and
	// turn its socket into a timewait one before peer's FIN follows
	time.Sleep(100 * time.Millisecond)
	return s.Close()
}

// TimeWaitTo counts h's IPv4 TCP connections to dst in TIME_WAIT proper
// (/proc/net/tcp shows a timewait socket's substate: FIN_WAIT2 until the
// peer's FIN reached it, TIME_WAIT after).
func (h *Host) TimeWaitTo(dst netip.AddrPort) (int, error) {
	var n int
	err := h.Do(func() error {
		// this thread's namespace, not the process's (/proc/self/net)
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer f.Close()
		want := remoteHex(dst)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[2] != want {
				continue
			}
			if st, err := strconv.ParseUint(fields[3], 16, 8); err == nil && st == tcpTimeWait {
				n++
			}
		}
		return sc.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("%s: read /proc/net/tcp: %w", h.Name, err)
	}
	return n, nil
}

// remoteHex is an IPv4 address and port as /proc/net/tcp prints them: the
// address as the host-order number of its network-order bytes (little
// endian on the machines hoptrace runs on), the port in host order.
func remoteHex(a netip.AddrPort) string {
	b := a.Addr().As4()
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", b[3], b[2], b[1], b[0], a.Port())
}

// DialRefused connects n times from h to dst, a port nobody listens on:
// each SYN is answered with a reset (tcp_v4_rcv drops it, NO_SOCKET). It
// fails if a connection succeeds.
func (h *Host) DialRefused(dst netip.AddrPort, n int) error {
	for i := 0; i < n; i++ {
		c, err := h.DialTCP(dst, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("%s: connected to %s, a closed port", h.Name, dst)
		}
	}
	return nil
}
