package testnet

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hoptrace/hoptrace/internal/privtest"
)

func TestChecksum(t *testing.T) {
	// Echo request id=1 seq=1 no payload: 08 00 f7 fd 00 01 00 01.
	b := echoRequest(1, 1, nil)
	want := []byte{8, 0, 0xf7, 0xfd, 0, 1, 0, 1}
	if !bytes.Equal(b, want) {
		t.Fatalf("echoRequest = % x, want % x", b, want)
	}
	if c := checksum(b); c != 0 {
		t.Fatalf("checksum over a valid message = %#x, want 0", c)
	}
	reply := append([]byte(nil), b...)
	reply[0] = 0
	if id, seq, ok := parseEchoReply(reply); !ok || id != 1 || seq != 1 {
		t.Fatalf("parseEchoReply = %d %d %v", id, seq, ok)
	}
	if _, _, ok := parseEchoReply(b); ok {
		t.Fatal("parseEchoReply accepted an echo request")
	}
}

func TestTopology(t *testing.T) {
	privtest.RequireRoot(t)
	topo := New(t, Options{Hosts: 2})

	if len(topo.Hosts) != 2 {
		t.Fatalf("hosts = %d, want 2", len(topo.Hosts))
	}
	if topo.HostInode() == 0 {
		t.Fatal("HostInode = 0")
	}
	br, err := netlink.LinkByName(topo.Bridge)
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if br.Type() != "bridge" || br.Attrs().Index != topo.BridgeIndex {
		t.Fatalf("bridge %s: type %s index %d, want bridge %d", topo.Bridge, br.Type(), br.Attrs().Index, topo.BridgeIndex)
	}
	if !bytes.Equal(br.Attrs().HardwareAddr, topo.BridgeMAC) || topo.BridgeMAC[0] != 0x02 {
		t.Errorf("bridge MAC %s, want %s (locally administered)", br.Attrs().HardwareAddr, topo.BridgeMAC)
	}
	seen := map[uint32]bool{topo.HostInode(): true}
	for _, h := range topo.Hosts {
		if len(h.Name) > 15 || len(h.HostVeth) > 15 {
			t.Errorf("name too long: %q %q", h.Name, h.HostVeth)
		}
		if seen[h.Inode] {
			t.Errorf("host %s: inode %d not unique", h.Name, h.Inode)
		}
		seen[h.Inode] = true
		if ino, err := inode(filepath.Join("/var/run/netns", h.Name)); err != nil || ino != h.Inode {
			t.Errorf("host %s: /var/run/netns inode %d (%v), want %d", h.Name, ino, err, h.Inode)
		}
		if !topo.Subnet().Contains(h.Addr.Addr()) {
			t.Errorf("host %s: address %s outside %s", h.Name, h.Addr, topo.Subnet())
		}
		hv, err := netlink.LinkByIndex(h.HostVethIndex)
		if err != nil || hv.Attrs().Name != h.HostVeth || hv.Attrs().MasterIndex != topo.BridgeIndex {
			t.Errorf("host veth %s: %v %+v", h.HostVeth, err, hv)
		}
		err = h.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if l.Attrs().Index != h.Ifindex || !bytes.Equal(l.Attrs().HardwareAddr, h.MAC) {
				t.Errorf("%s eth0: index %d mac %s, want %d %s", h.Name, l.Attrs().Index, l.Attrs().HardwareAddr, h.Ifindex, h.MAC)
			}
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if ino, _ := fdInode(int(cur)); ino != h.Inode {
				t.Errorf("Do ran in netns %d, want %d", ino, h.Inode)
			}
			return nil
		})
		if err != nil {
			t.Errorf("Do in %s: %v", h.Name, err)
		}
	}
	// Do restored the thread: we are back in the host namespace.
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	if ino, _ := fdInode(int(cur)); ino != topo.HostInode() {
		t.Errorf("after Do: netns %d, want host %d", ino, topo.HostInode())
	}
	cur.Close()

	a, b := topo.Hosts[0], topo.Hosts[1]
	for _, c := range []struct {
		from *Host
		to   netip.Addr
	}{{a, b.Addr.Addr()}, {b, a.Addr.Addr()}, {a, topo.Gateway.Addr()}, {b, topo.Gateway.Addr()}} {
		n, err := c.from.Ping(c.to, 3, 2*time.Second)
		if err != nil || n != 3 {
			t.Errorf("ping %s -> %s: %d/3 replies, err %v", c.from.Name, c.to, n, err)
		}
	}

	// UDP a -> b.
	pc, err := b.ListenUDP(0)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), uint16(port)), []byte("hello udp")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello udp" {
		t.Fatalf("udp receive: %q %v", buf[:n], err)
	}
	if got := from.(*net.UDPAddr).IP.String(); got != a.Addr.Addr().String() {
		t.Errorf("udp from %s, want %s", got, a.Addr.Addr())
	}

	// TCP b -> a.
	ln, err := a.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tport := ln.Addr().(*net.TCPAddr).Port
	done := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		done <- string(b) + " from " + c.RemoteAddr().(*net.TCPAddr).IP.String()
	}()
	c, err := b.DialTCP(netip.AddrPortFrom(a.Addr.Addr(), uint16(tport)), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello tcp"))
	c.Close()
	if got, want := <-done, "hello tcp from "+b.Addr.Addr().String(); got != want {
		t.Errorf("tcp: got %q, want %q", got, want)
	}

	// The host namespace cannot bind the host's address: it is not there.
	if l, err := net.Listen("tcp4", netip.AddrPortFrom(a.Addr.Addr(), 0).String()); err == nil {
		l.Close()
		t.Error("host address of a namespace is bindable in the host netns")
	}
}

func TestAddHostAndCleanup(t *testing.T) {
	privtest.RequireRoot(t)
	var topo *Topology
	t.Run("build", func(t *testing.T) {
		topo = New(t, Options{Hosts: 1})
		c := topo.AddHost(t)
		if len(topo.Hosts) != 2 || topo.Hosts[1] != c {
			t.Fatalf("AddHost: hosts %v", topo.Hosts)
		}
		if n, err := c.Ping(topo.Hosts[0].Addr.Addr(), 2, 2*time.Second); err != nil || n != 2 {
			t.Errorf("ping from added host: %d/2 %v", n, err)
		}
		if _, err := os.Stat(c.Path); err != nil {
			t.Errorf("netns file: %v", err)
		}
		// Cleanup of the subtest runs now.
	})
	if topo == nil {
		t.Fatal("no topology")
	}
	if _, err := netlink.LinkByName(topo.Bridge); err == nil {
		t.Errorf("bridge %s still exists after cleanup", topo.Bridge)
	}
	for _, h := range topo.Hosts {
		if _, err := netlink.LinkByName(h.HostVeth); err == nil {
			t.Errorf("veth %s still exists after cleanup", h.HostVeth)
		}
		if _, err := os.Stat(h.Path); !os.IsNotExist(err) {
			t.Errorf("%s still exists after cleanup (%v)", h.Path, err)
		}
	}
	if topo.iptRule != nil {
		args := append([]string{"-w", "-C"}, topo.iptRule...)
		if err := exec.Command("iptables", args...).Run(); err == nil {
			t.Errorf("iptables rule %v still present after cleanup", topo.iptRule)
		}
	}
	if topo.Close() != nil {
		t.Errorf("second Close: %v", topo.Close())
	}
}

func TestRemoveHost(t *testing.T) {
	privtest.RequireRoot(t)
	topo := New(t, Options{Hosts: 2})
	h := topo.Hosts[1]
	if err := topo.RemoveHost(h); err != nil {
		t.Fatal(err)
	}
	if len(topo.Hosts) != 1 {
		t.Errorf("hosts = %d after RemoveHost", len(topo.Hosts))
	}
	if _, err := os.Stat(h.Path); !os.IsNotExist(err) {
		t.Errorf("%s still exists (%v)", h.Path, err)
	}
	if _, err := netlink.LinkByName(h.HostVeth); err == nil {
		t.Errorf("veth %s still exists", h.HostVeth)
	}
}

func TestHostAddr(t *testing.T) {
	topo := &Topology{Gateway: netip.MustParsePrefix("10.203.0.1/16")}
	for n, want := range map[int]string{1: "10.203.0.2/16", 250: "10.203.0.251/16", 251: "10.203.1.2/16", 500: "10.203.1.251/16"} {
		if got := topo.hostAddr(n).String(); got != want {
			t.Errorf("hostAddr(%d) = %s, want %s", n, got, want)
		}
	}
	topo = &Topology{Gateway: netip.MustParsePrefix("10.231.9.1/24")}
	if got := topo.hostAddr(3).String(); got != "10.231.9.4/24" {
		t.Errorf("hostAddr(3) on a /24 = %s, want 10.231.9.4/24", got)
	}
}

// Build needs no testing.T: the caller owns the topology and its Close.
func TestBuildWide(t *testing.T) {
	privtest.RequireRoot(t)
	if _, err := Build(Options{Hosts: 251, Prefix: 24}); err == nil {
		t.Fatal("Build: 251 hosts on a /24 accepted")
	}
	topo, err := Build(Options{Hosts: 3, Prefix: 16})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			topo.Close()
		}
	}()
	if topo.Gateway.Bits() != 16 || topo.Subnet().Addr().As4()[1] < 200 {
		t.Errorf("gateway %s, want 10.X.0.1/16 with X >= 200", topo.Gateway)
	}
	a, c := topo.Hosts[0], topo.Hosts[2]
	if n, err := a.Ping(c.Addr.Addr(), 2, 2*time.Second); err != nil || n != 2 {
		t.Errorf("ping %s -> %s: %d/2 %v", a.Addr, c.Addr, n, err)
	}
	// One host's namespace held open: Close must still remove its veth.
	held, err := netns.GetFromPath(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	closed = true
	if err := topo.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, h := range topo.Hosts {
		if _, err := netlink.LinkByName(h.HostVeth); err == nil {
			t.Errorf("veth %s still exists after Close", h.HostVeth)
		}
		if _, err := os.Stat(h.Path); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Close (%v)", h.Path, err)
		}
	}
	if _, err := netlink.LinkByName(topo.Bridge); err == nil {
		t.Errorf("bridge %s still exists after Close", topo.Bridge)
	}
}
