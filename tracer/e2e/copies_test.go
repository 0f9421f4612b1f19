package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// tcpdump watching a host veth takes a copy of every packet crossing it;
// the copies change no verdict: requests delivered, replies delivered to
// the raw socket, nothing dropped, no extra paths.
func TestTcpdumpChangesNoVerdict(t *testing.T) {
	privtest.RequireRoot(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatalf("tcpdump not found: %v (scripts/install-deps.sh installs it)", err)
	}
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	dump := exec.Command("tcpdump", "-n", "-i", a.HostVeth, "-w", "/dev/null", "icmp")
	stderr := &privtest.SyncBuffer{}
	dump.Stderr = stderr
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dump.Process.Kill(); dump.Wait() })
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(stderr.String(), "listening on"); {
		if time.Now().After(deadline) {
			t.Fatalf("tcpdump not listening: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	const n = 5
	paths := tracePings(t, a, b, n)
	var req, rep int
	for _, p := range paths {
		if p.Proto != "ICMP" {
			continue
		}
		switch {
		case p.Src == a.Addr.Addr().String() && strings.Contains(p.Summary, "request"):
			req++
			if p.Verdict != path.Delivered || !strings.Contains(p.End, b.Name) { // "consumed by icmp_rcv in B" (no location before 6.3)
				t.Errorf("request %s: %s (%s)", p.Summary, p.Verdict, p.End)
			}
		case p.Src == b.Addr.Addr().String() && strings.Contains(p.Summary, "reply"):
			rep++
			if p.Verdict != path.Delivered || p.End != "delivered to a raw socket in "+a.Name {
				t.Errorf("reply %s: %s (%s)", p.Summary, p.Verdict, p.End)
			}
		default:
			t.Errorf("unexpected ICMP path %s: %s (%s)", p.Summary, p.Verdict, p.End)
		}
	}
	if req != n || rep != n {
		t.Errorf("%d requests and %d replies, want %d each (one path per packet)", req, rep, n)
	}
}

// An IPv6 TCP segment dropped once (an nft rule of the test's in the
// receiver's namespace) and retransmitted: two transmissions, two paths,
// the first dropped, the second delivered. The retransmission is a clone
// of the same head with the same headers; it must not merge into the first.
func TestIPv6RetransmissionAfterDropIsASecondPacket(t *testing.T) {
	privtest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft not found: %v", err)
	}
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	sub := topo.Gateway.Addr().As4()[2]
	addr := func(h *testnet.Host, i byte) netip.Prefix {
		return netip.MustParsePrefix(fmt.Sprintf("fd68:7074:%x::%d/64", sub, i))
	}
	a6, b6 := addr(a, 2), addr(b, 3)
	for _, x := range []struct {
		h *testnet.Host
		p netip.Prefix
	}{{a, a6}, {b, b6}} {
		if err := x.h.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: x.p.Addr().AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: 0x2 /* nodad */})
		}); err != nil {
			t.Fatalf("address %s in %s: %v", x.p, x.h.Name, err)
		}
	}
	var ln net.Listener
	if err := b.Do(func() (err error) { ln, err = net.Listen("tcp6", "[::]:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- ""
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		_, err = io.ReadFull(c, buf)
		got <- string(buf)
	}()
	// Drop the first 100-byte data segment only: quota of one segment.
	nft := func(args ...string) error {
		return b.Do(func() error {
			out, err := exec.Command("nft", args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return nil
		})
	}
	if err := nft("add", "table", "ip6", "htretx"); err != nil {
		t.Fatal(err)
	}
	if err := nft("add", "chain", "ip6", "htretx", "in", "{ type filter hook input priority 0 ; }"); err != nil {
		t.Fatal(err)
	}
	if err := nft("add", "rule", "ip6", "htretx", "in", "tcp", "dport", fmt.Sprint(port), "ip6", "length", "gt", "120",
		"quota", "until", "200", "bytes", "drop"); err != nil {
		t.Fatal(err)
	}
	r := startCLI(t, "trace", "--netns", a.Name, "--output", "json")
	waitAttached(t, r)
	var c net.Conn
	if err := a.Do(func() (err error) {
		c, err = net.DialTimeout("tcp6", netip.AddrPortFrom(b6.Addr(), uint16(port)).String(), 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("r", 100)
	c.Write([]byte(payload))
	select {
	case s := <-got:
		if s != payload {
			t.Fatalf("receiver got %q", s)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("the retransmission never arrived")
	}
	c.Close()
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	var data []path.Path
	for _, p := range paths {
		if p.Proto == "TCP" && p.Src == a6.Addr().String() && p.Len == 40+32+100 {
			data = append(data, p)
		}
	}
	if len(data) != 2 {
		for _, p := range paths {
			t.Logf("#%d %s len=%d => %s: %s", p.ID, p.Summary, p.Len, p.Verdict, p.End)
		}
		t.Fatalf("%d paths for the data segment, want 2 (dropped, then retransmitted)", len(data))
	}
	first, second := data[0], data[1]
	if first.Time.After(second.Time) {
		first, second = second, first
	}
	if first.Verdict != path.Dropped || first.DropReason != privtest.DropReason(t, "NETFILTER_DROP") {
		t.Errorf("first transmission: %s (%s), want dropped", first.Verdict, first.End)
	}
	if second.Verdict != path.Delivered || first.ID == second.ID {
		t.Errorf("retransmission: id %d (first %d) %s (%s), want a new id, delivered", second.ID, first.ID, second.Verdict, second.End)
	}
}

// GRO merges segments into the head skb between napi_gro_receive and
// netif_receive_skb, changing its length and flags: with --detail the
// merged packet stays one path from the sender's eth0.
func TestGROMergedPacketIsOnePath(t *testing.T) {
	privtest.RequireRoot(t)
	if rel, v, err := kernel.Release(); err != nil {
		t.Fatalf("kernel version: %v", err)
	} else if !v.AtLeast(5, 13) {
		// veth runs GRO without an XDP program only from 5.13 (NAPI on demand)
		t.Skipf("SKIP: kernel %s: veth has no GRO without XDP before 5.13, so no packet is merged", rel)
	}
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Fatalf("ethtool not found: %v (scripts/install-deps.sh installs it)", err)
	}
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	for _, args := range [][]string{
		{"ip", "netns", "exec", a.Name, "ethtool", "-K", "eth0", "tso", "off", "gso", "off"},
		{"ethtool", "-K", a.HostVeth, "gro", "on"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	ln, err := b.ListenTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	r := startCLI(t, "trace", "--netns", a.Name, "--detail", "--output", "json")
	waitAttached(t, r)
	c, err := a.DialTCP(netip.AddrPortFrom(b.Addr.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port)), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(make([]byte, 4<<20))
	c.Close()
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	merged := 0
	for _, p := range paths {
		if p.Proto != "TCP" || p.Src != a.Addr.Addr().String() || len(p.Hops) == 0 {
			continue
		}
		if h := p.Hops[0]; h.Netns != a.Name || h.Ifname != "eth0" {
			t.Errorf("path %d (%s) starts at %s %s %s: a merged packet split off", p.ID, p.Summary, h.Netns, h.Ifname, h.Hook)
		}
		gro := false
		for _, h := range p.Hops {
			if h.Ifname == a.HostVeth && h.Hook == "napi_gro_receive" {
				gro = true
			}
			if gro && h.Ifname == a.HostVeth && h.Hook == "netif_receive_skb" {
				merged++
				break
			}
		}
	}
	if merged == 0 {
		t.Fatalf("no path went through GRO on %s (napi_gro_receive then netif_receive_skb) among %d paths", a.HostVeth, len(paths))
	}
}
