package e2e

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

// requireTool fails under CI (which installs it) and skips elsewhere when a
// tool the test compares against is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed (scripts/install-deps.sh installs it)", name)
	}
	t.Skipf("SKIPPED: %s is not installed (scripts/install-deps.sh installs it)", name)
	return ""
}

// testMAC marks the frames the filter test sends; the frames go to an
// unknown unicast address (or broadcast), so nothing answers them.
var (
	testMAC    = net.HardwareAddr{0x02, 0x68, 0x74, 0x00, 0x00, 0x01}
	nowhereMAC = net.HardwareAddr{0x02, 0x68, 0x74, 0x00, 0x00, 0x99}
	bcastMAC   = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// filterFrames is the fixed traffic mix: every protocol the expressions
// below tell apart, each frame unique (IP id, flow label, ARP target).
func filterFrames(t *testing.T, a, b, other netip.Addr) [][]byte {
	t.Helper()
	var frames [][]byte
	id := uint16(0x4000)
	ser := func(ls ...gopacket.SerializableLayer) {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
			t.Fatalf("build frame: %v", err)
		}
		frames = append(frames, append([]byte(nil), buf.Bytes()...))
	}
	eth := func(et layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: testMAC, DstMAC: nowhereMAC, EthernetType: et}
	}
	ip4 := func(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
		id++
		return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: id, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	}
	payload := gopacket.Payload("HOPT-filter-test")
	udp4 := func(src, dst netip.Addr, sport, dport uint16) {
		ip := ip4(src, dst, layers.IPProtocolUDP)
		u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		u.SetNetworkLayerForChecksum(ip)
		ser(eth(layers.EthernetTypeIPv4), ip, u, payload)
	}
	tcp4 := func(src, dst netip.Addr, sport, dport uint16, f func(*layers.TCP)) {
		ip := ip4(src, dst, layers.IPProtocolTCP)
		tc := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: uint32(id), Window: 1024}
		f(tc)
		tc.SetNetworkLayerForChecksum(ip)
		ser(eth(layers.EthernetTypeIPv4), ip, tc)
	}
	icmp4 := func(src, dst netip.Addr, typ, code uint8) {
		ser(eth(layers.EthernetTypeIPv4), ip4(src, dst, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Id: 7, Seq: id}, payload)
	}
	// ICMP: echo request, echo reply, port unreachable; to and from a third address
	icmp4(a, b, 8, 0)
	icmp4(a, other, 8, 0)
	icmp4(b, a, 0, 0)
	icmp4(a, b, 3, 3)
	// UDP: DNS both ways, a port range, a high port
	udp4(a, b, 40000, 53)
	udp4(b, a, 53, 40001)
	udp4(a, other, 40002, 5353)
	udp4(a, b, 40003, 33000)
	// TCP: SYN, SYN-ACK, FIN-ACK, PSH-ACK, RST
	tcp4(a, b, 41000, 80, func(tc *layers.TCP) { tc.SYN = true })
	tcp4(b, a, 80, 41000, func(tc *layers.TCP) { tc.SYN, tc.ACK = true, true })
	tcp4(a, other, 41001, 443, func(tc *layers.TCP) { tc.FIN, tc.ACK = true, true })
	tcp4(a, b, 41002, 8080, func(tc *layers.TCP) { tc.PSH, tc.ACK = true, true })
	tcp4(other, a, 5001, 41003, func(tc *layers.TCP) { tc.RST = true })
	// IPv4 fragments: the first (offset 0, more fragments) and a later one
	for _, frag := range []struct {
		off   uint16
		flags layers.IPv4Flag
	}{{0, layers.IPv4MoreFragments}, {185, 0}} {
		ip := ip4(a, b, layers.IPProtocolUDP)
		ip.Flags, ip.FragOffset = frag.flags, frag.off
		body := bytes.Repeat([]byte{0x55}, 64)
		if frag.off == 0 {
			u := &layers.UDP{SrcPort: 40010, DstPort: 53}
			u.SetNetworkLayerForChecksum(ip)
			ser(eth(layers.EthernetTypeIPv4), ip, u, gopacket.Payload(body))
		} else {
			ser(eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(body))
		}
	}
	// VLAN-tagged: UDP to port 53 in VLAN 100, ICMP in VLAN 200
	for _, v := range []struct {
		vid   uint16
		proto layers.IPProtocol
	}{{100, layers.IPProtocolUDP}, {200, layers.IPProtocolICMPv4}} {
		e := eth(layers.EthernetTypeDot1Q)
		tag := &layers.Dot1Q{VLANIdentifier: v.vid, Type: layers.EthernetTypeIPv4}
		ip := ip4(a, b, v.proto)
		if v.proto == layers.IPProtocolUDP {
			u := &layers.UDP{SrcPort: 40020, DstPort: 53}
			u.SetNetworkLayerForChecksum(ip)
			ser(e, tag, ip, u, payload)
		} else {
			ser(e, tag, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 7, Seq: id}, payload)
		}
	}
	// IPv6 (link-local addresses): ICMPv6 echo request and reply, a TCP SYN to 80, UDP to 53
	ll := func(x byte) net.IP { return net.IP{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x74, 0xff, 0xfe, 0, 0, x} }
	ip6 := func(next layers.IPProtocol) *layers.IPv6 {
		id++
		return &layers.IPv6{Version: 6, FlowLabel: uint32(id), NextHeader: next, HopLimit: 64, SrcIP: ll(1), DstIP: ll(2)}
	}
	for _, typ := range []uint8{layers.ICMPv6TypeEchoRequest, layers.ICMPv6TypeEchoReply} {
		ip := ip6(layers.IPProtocolICMPv6)
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
		ic.SetNetworkLayerForChecksum(ip)
		ser(eth(layers.EthernetTypeIPv6), ip, ic, &layers.ICMPv6Echo{Identifier: 7, SeqNumber: id}, payload)
	}
	{
		ip := ip6(layers.IPProtocolTCP)
		tc := &layers.TCP{SrcPort: 42000, DstPort: 80, SYN: true, Seq: 1, Window: 1024}
		tc.SetNetworkLayerForChecksum(ip)
		ser(eth(layers.EthernetTypeIPv6), ip, tc)
		ip = ip6(layers.IPProtocolUDP)
		u := &layers.UDP{SrcPort: 42001, DstPort: 53}
		u.SetNetworkLayerForChecksum(ip)
		ser(eth(layers.EthernetTypeIPv6), ip, u, payload)
	}
	// ARP: two requests for unused addresses, one reply
	for i, op := range []uint16{layers.ARPRequest, layers.ARPRequest, layers.ARPReply} {
		target := b.As4()
		target[3] = byte(200 + i)
		e := eth(layers.EthernetTypeARP)
		if op == layers.ARPRequest {
			e.DstMAC = bcastMAC
		}
		ser(e, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: testMAC, SourceProtAddress: a.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: target[:]})
	}
	return frames
}

// sendFrames writes raw frames on the host's eth0 with an AF_PACKET socket.
func sendFrames(t *testing.T, h *testnet.Host, frames [][]byte) {
	t.Helper()
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: h.Ifindex, Halen: 6}
		for _, f := range frames {
			copy(to.Addr[:], f[:6])
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return fmt.Errorf("send: %w", err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send raw frames from %s: %v", h.Name, err)
	}
}

// frameKey identifies a test frame by its first 128 bytes (both tools keep that much).
func frameKey(b []byte) string {
	if len(b) > 128 {
		b = b[:128]
	}
	return hex.EncodeToString(b)
}

func isTestFrame(b []byte) bool { return len(b) >= 12 && bytes.Equal(b[6:12], testMAC) }

// readPcap returns the test frames tcpdump kept.
func readPcap(t *testing.T, file string) map[string]bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	keys := map[string]bool{}
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		if isTestFrame(data) {
			keys[frameKey(data)] = true
		}
	}
	return keys
}

// readPcapng returns the test frames hoptrace wrote on one interface.
func readPcapng(t *testing.T, file, iface string) map[string]bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	keys := map[string]bool{}
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		in, err := r.Interface(ci.InterfaceIndex)
		if err != nil {
			t.Fatalf("%s: packet on interface %d: %v", file, ci.InterfaceIndex, err)
		}
		if in.Name == iface && isTestFrame(data) {
			keys[frameKey(data)] = true
		}
	}
	return keys
}

// The kernel filter keeps exactly the frames tcpdump keeps, for the same
// expressions, on the same interface: a fixed mix of ICMP, ICMPv6, ARP,
// UDP, TCP flags, VLAN tags and fragments sent raw on a namespace's eth0.
func TestFilterMatchesTcpdump(t *testing.T) {
	privtest.RequireRoot(t)
	requireTool(t, "tcpdump")
	ipBin := requireTool(t, "ip")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	other := b.Addr.Addr().As4()
	other[3] = 250
	otherAddr := netip.AddrFrom4(other)
	half := netip.PrefixFrom(topo.Subnet().Addr(), 25) // .0-.127: a and b, not .250
	exprs := []string{
		"icmp",
		"host " + b.Addr.Addr().String(),
		"src net " + half.String(),
		"udp port 53",
		"port 80",
		"portrange 5000-6000",
		"tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
		"tcp[tcpflags] == tcp-syn",
		"icmp[icmptype] == icmp-echo",
		"ip6",
		"icmp6 and ip6[40] == 128",
		"vlan",
		"vlan 100 and udp",
		"not arp",
		"arp and arp[7] == 2",
		"ip[6:2] & 0x1fff != 0",
		"ether[0] & 1 != 0",
		"udp[8:4] == 0x484f5054",
		"greater 100",
		"tcp and (dst port 443 or src port 80)",
		"len > 60 and ip[2:2] % 3 == 0",
		"ip[8] * 2 / 3 > 40 and not udp",
		"ip and tcp[((tcp[12:1] & 0xf0) >> 2) - 7] & 0x10 != 0",
	}
	if os.Getenv("HOPTRACE_VM") != "" {
		// one emulated vCPU, where each expression's load takes tens of
		// seconds: three programs that still cover every kind of
		// instruction (absolute, indirect and length loads, ALU, VLAN)
		exprs = []string{"icmp[icmptype] == icmp-echo or ip[6:2] & 0x1fff != 0", "vlan 100 and udp", "greater 100 or tcp[tcpflags] == tcp-syn"}
	}
	dir := t.TempDir()
	type run struct {
		expr      string
		dump, cap string
		tcpdump   *exec.Cmd
		tdErr     *privtest.SyncBuffer
		hoptrace  *running
	}
	var runs []*run
	t.Cleanup(func() {
		for _, r := range runs {
			if r.tcpdump != nil && r.tcpdump.Process != nil {
				r.tcpdump.Process.Kill()
				r.tcpdump.Wait()
			}
		}
	})
	for i, expr := range exprs {
		r := &run{expr: expr, dump: filepath.Join(dir, fmt.Sprintf("td%d.pcap", i)), cap: filepath.Join(dir, fmt.Sprintf("ht%d.pcapng", i))}
		r.tdErr = &privtest.SyncBuffer{}
		r.tcpdump = exec.Command(ipBin, "netns", "exec", a.Name, "tcpdump", "-n", "-U", "-s", "128", "-i", a.IfName, "-w", r.dump, expr)
		r.tcpdump.Stderr = r.tdErr
		if err := r.tcpdump.Start(); err != nil {
			t.Fatalf("tcpdump: %v", err)
		}
		r.hoptrace = startCLI(t, "trace", "--netns", a.Name, "--interface", a.IfName, "--ring-size", "1", "-w", r.cap, expr)
		runs = append(runs, r)
	}
	for _, r := range runs {
		waitAttached(t, r.hoptrace)
		deadline := time.Now().Add(readyTimeout())
		for !strings.Contains(r.tdErr.String(), "listening on") {
			if time.Now().After(deadline) {
				t.Fatalf("tcpdump %q not listening: %s", r.expr, r.tdErr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	frames := filterFrames(t, a.Addr.Addr(), b.Addr.Addr(), otherAddr)
	sendFrames(t, a, frames)
	time.Sleep(1 * time.Second)
	for _, r := range runs {
		r.tcpdump.Process.Signal(syscall.SIGINT)
		r.hoptrace.cmd.Process.Signal(syscall.SIGINT)
	}
	for _, r := range runs {
		r.tcpdump.Wait()
		waitExit(t, r.hoptrace, 15*time.Second)
	}
	iface := a.IfName + "@" + a.Name
	all := map[string]bool{}
	for _, f := range frames {
		all[frameKey(f)] = true
	}
	for _, r := range runs {
		want := readPcap(t, r.dump)
		got := readPcapng(t, r.cap, iface)
		if len(want) == 0 || len(want) == len(all) {
			t.Errorf("%q: tcpdump kept %d of %d frames: the mix does not test this expression", r.expr, len(want), len(all))
		}
		var missing, extra []string
		for k := range want {
			if !got[k] {
				missing = append(missing, describeFrame(k))
			}
		}
		for k := range got {
			if !want[k] {
				extra = append(extra, describeFrame(k))
			}
		}
		sort.Strings(missing)
		sort.Strings(extra)
		if len(missing)+len(extra) > 0 {
			t.Errorf("%q: tcpdump kept %d frames, hoptrace %d; only tcpdump: %v; only hoptrace: %v", r.expr, len(want), len(got), missing, extra)
		} else {
			t.Logf("%q: both kept the same %d of %d frames", r.expr, len(want), len(all))
		}
	}
}

// describeFrame names a frame for a failure message.
func describeFrame(key string) string {
	b, _ := hex.DecodeString(key)
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	var parts []string
	for _, l := range p.Layers() {
		parts = append(parts, l.LayerType().String())
	}
	return strings.Join(parts, "/")
}

// latency measures only the packets a filter expression matches: of 20
// datagrams to each of two ports, only those to the expression's port
// become tracked packets in the kernel.
func TestLatencyFilterExpression(t *testing.T) {
	privtest.RequireRoot(t)
	requireTool(t, "tcpdump")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	const port = 47011
	for _, p := range []int{port, port + 1} {
		c, err := b.ListenUDP(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	r := startCLI(t, "latency", "--netns", a.Name, "--netns", b.Name, "--output", "json",
		"--proto", "udp", fmt.Sprintf("dst port %d", port))
	waitStderr(t, r, "hoptrace: measuring ")
	if !strings.Contains(r.stderrText(), fmt.Sprintf("packets matching '(dst port %d) and (udp)'", port)) {
		t.Errorf("ready line does not name the expression: %q", r.stderrText())
	}
	for i := 0; i < 20; i++ {
		for _, p := range []uint16{port, port + 1} {
			if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), p), []byte("hoptrace")); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	stopCLI(t, r) // the final report covers the whole run
	r.mu.Lock()
	last := r.lines[len(r.lines)-1]
	r.mu.Unlock()
	var rep struct {
		Final  bool `json:"final"`
		Kernel struct {
			Packets uint64 `json:"packets"`
		} `json:"kernel"`
		Pairs []json.RawMessage `json:"pairs"`
	}
	if err := json.Unmarshal([]byte(last), &rep); err != nil || !rep.Final {
		t.Fatalf("last line is not the final report (%v): %s", err, last)
	}
	if rep.Kernel.Packets < 20 || rep.Kernel.Packets > 21 || len(rep.Pairs) == 0 {
		t.Errorf("%d packets tracked and %d pairs, want the 20 datagrams to port %d only", rep.Kernel.Packets, len(rep.Pairs), port)
	}
}
