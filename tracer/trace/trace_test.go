package trace_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/internal/testsession"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/selection"
	"github.com/hoptrace/hoptrace/tracer/trace"
)

// session is a running trace in JSON mode.
type session struct {
	*testsession.Session
	t   *testing.T
	out privtest.SyncBuffer
	res trace.Result
}

func startTrace(t *testing.T, cfg trace.Config) *session {
	t.Helper()
	s := &session{t: t}
	cfg.Format = output.JSON
	cfg.Out = &s.out
	s.Session = testsession.Start(t, func(ctx context.Context, names *resolve.Resolver, ready func()) (err error) {
		cfg.Ready = ready
		s.res, err = trace.Run(ctx, cfg, names)
		return err
	})
	return s
}

// stop ends the trace and returns every path it printed.
func (s *session) stop() []path.Path {
	s.t.Helper()
	if err := s.Stop(); err != nil {
		s.t.Fatalf("trace: %v", err)
	}
	var paths []path.Path
	sc := bufio.NewScanner(strings.NewReader(s.out.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var p path.Path
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			s.t.Fatalf("output line is not a JSON path: %v: %s", err, sc.Text())
		}
		paths = append(paths, p)
	}
	return paths
}

// settle waits for the tracer to print the paths of packets just sent.
func settle() { time.Sleep(800 * time.Millisecond) }

type hop struct{ netns, ifname, kind, dir string }

func hopsOf(p path.Path) []hop {
	var hs []hop
	for _, h := range p.Hops {
		hs = append(hs, hop{h.Netns, h.Ifname, string(h.Kind), string(h.Direction)})
	}
	return hs
}

func find(paths []path.Path, match func(path.Path) bool) []path.Path {
	var out []path.Path
	for _, p := range paths {
		if match(p) {
			out = append(out, p)
		}
	}
	return out
}

// checkPath asserts the exact hop sequence, names, monotonic timestamps and the verdict.
func checkPath(t *testing.T, what string, p path.Path, want []hop, verdict string) {
	t.Helper()
	got := hopsOf(p)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: hops\n got %v\nwant %v", what, got, want)
	}
	for i, h := range p.Hops {
		if i > 0 && h.TsNs < p.Hops[i-1].TsNs {
			t.Errorf("%s: hop %d time %d before hop %d time %d", what, i, h.TsNs, i-1, p.Hops[i-1].TsNs)
		}
		if i > 0 && h.DeltaNs != h.TsNs-p.Hops[i-1].TsNs {
			t.Errorf("%s: hop %d delta %d, want %d", what, i, h.DeltaNs, h.TsNs-p.Hops[i-1].TsNs)
		}
		if h.NetnsInode == 0 {
			t.Errorf("%s: hop %d has no namespace inode", what, i)
		}
	}
	if p.Verdict != verdict {
		t.Errorf("%s: verdict %q (%s), want %q", what, p.Verdict, p.End, verdict)
	}
	if p.Time.IsZero() || time.Since(p.Time) > time.Minute || time.Until(p.Time) > time.Second {
		t.Errorf("%s: implausible wall time %v", what, p.Time)
	}
}

// forward is the hop sequence of a packet bridged from a to b.
func forward(topo *testnet.Topology, a, b *testnet.Host) []hop {
	return []hop{
		{a.Name, "eth0", "veth", "egress"},
		{"host", a.HostVeth, "veth", "ingress"},
		{"host", topo.Bridge, "bridge", "forward"},
		{"host", b.HostVeth, "veth", "egress"},
		{b.Name, "eth0", "veth", "ingress"},
	}
}

// Both engines must give the same paths: tcx programs on the devices stand
// in for the net_dev_queue and netif_receive_skb tracepoints.
func TestTraceAcrossBridge(t *testing.T) {
	privtest.RequireRoot(t)
	for _, e := range engines(t) {
		t.Run(e.String(), func(t *testing.T) { traceAcrossBridge(t, e) })
	}
}

// engines are the engines this kernel runs: tracepoints everywhere, tcx
// where the kernel has it.
func engines(t *testing.T) []loader.Engine {
	auto, err := loader.ResolveEngine(loader.EngineAuto)
	if err != nil {
		t.Fatal(err)
	}
	if auto == loader.EngineTCX {
		return []loader.Engine{loader.EngineTCX, loader.EngineTracepoint}
	}
	return []loader.Engine{loader.EngineTracepoint}
}

func traceAcrossBridge(t *testing.T, engine loader.Engine) {
	topo := testnet.New(t, testnet.Options{Hosts: 3})
	a, b, c := topo.Hosts[0], topo.Hosts[1], topo.Hosts[2]
	s := startTrace(t, trace.Config{Selection: selection.Selection{Netns: []uint32{a.Inode}}, Engine: engine})

	// Traffic: ICMP a->b and a->gateway, UDP a->b (open and closed port),
	// TCP a->b, and c->b which must not be traced (neither end selected).
	if n, err := a.Ping(b.Addr.Addr(), 2, 2*time.Second); err != nil || n != 2 {
		t.Fatalf("ping a->b: %d replies, %v", n, err)
	}
	if n, err := a.Ping(topo.Gateway.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping a->gateway: %d replies, %v", n, err)
	}
	udp, err := b.ListenUDP(7001)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), 7001), []byte("hop")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	udp.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := udp.ReadFrom(buf); err != nil {
		t.Fatalf("udp not received: %v", err)
	}
	if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), 7002), []byte("closed")); err != nil {
		t.Fatal(err)
	}
	ln, err := b.ListenTCP(7003)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := a.DialTCP(netip.AddrPortFrom(b.Addr.Addr(), 7003), 2*time.Second)
	if err != nil {
		t.Fatalf("tcp dial: %v", err)
	}
	conn.Close()
	if n, err := c.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping c->b: %d replies, %v", n, err)
	}
	settle()
	paths := s.stop()
	if len(paths) == 0 {
		t.Fatal("no paths traced")
	}

	aAddr, bAddr, gw, cAddr := a.Addr.Addr().String(), b.Addr.Addr().String(), topo.Gateway.Addr().String(), c.Addr.Addr().String()
	is := func(proto, src, dst string) func(path.Path) bool {
		return func(p path.Path) bool { return p.Proto == proto && p.Src == src && p.Dst == dst }
	}

	reqs := find(paths, func(p path.Path) bool {
		return is("ICMP", aAddr, bAddr)(p) && strings.Contains(p.Summary, "echo request")
	})
	if len(reqs) != 2 {
		t.Fatalf("%d echo requests a->b traced, want 2", len(reqs))
	}
	for _, p := range reqs {
		checkPath(t, "echo request a->b", p, forward(topo, a, b), path.Delivered)
		if !p.Hops[2].Inferred || p.Hops[2].Bridge != topo.Bridge {
			t.Errorf("bridge hop not marked inferred on %s: %+v", topo.Bridge, p.Hops[2])
		}
		if p.Hops[1].Bridge != topo.Bridge || p.Hops[3].Bridge != topo.Bridge {
			t.Errorf("ports not shown as ports of %s", topo.Bridge)
		}
	}
	replies := find(paths, func(p path.Path) bool {
		return is("ICMP", bAddr, aAddr)(p) && strings.Contains(p.Summary, "echo reply")
	})
	if len(replies) != 2 {
		t.Fatalf("%d echo replies b->a traced, want 2 (traced because a's address is selected)", len(replies))
	}
	for _, p := range replies {
		checkPath(t, "echo reply b->a", p, forward(topo, b, a), path.Delivered)
	}

	gwReqs := find(paths, is("ICMP", aAddr, gw))
	if len(gwReqs) != 1 {
		t.Fatalf("%d echo requests a->gateway, want 1", len(gwReqs))
	}
	checkPath(t, "echo request a->gateway", gwReqs[0], []hop{
		{a.Name, "eth0", "veth", "egress"},
		{"host", a.HostVeth, "veth", "ingress"},
		{"host", topo.Bridge, "bridge", "local"},
	}, path.Delivered)
	gwReplies := find(paths, is("ICMP", gw, aAddr))
	if len(gwReplies) != 1 {
		t.Fatalf("%d echo replies gateway->a, want 1", len(gwReplies))
	}
	checkPath(t, "echo reply gateway->a", gwReplies[0], []hop{
		{"host", topo.Bridge, "bridge", "egress"},
		{"host", a.HostVeth, "veth", "egress"},
		{a.Name, "eth0", "veth", "ingress"},
	}, path.Delivered)

	udpOpen := find(paths, func(p path.Path) bool { return is("UDP", aAddr, bAddr)(p) && p.Dport == 7001 })
	if len(udpOpen) != 1 {
		t.Fatalf("%d UDP datagrams to the open port, want 1", len(udpOpen))
	}
	checkPath(t, "udp a->b:7001", udpOpen[0], forward(topo, a, b), path.Delivered)
	if udpOpen[0].Sport == 0 {
		t.Error("udp path has no source port")
	}
	udpClosed := find(paths, func(p path.Path) bool { return is("UDP", aAddr, bAddr)(p) && p.Dport == 7002 })
	if len(udpClosed) != 1 {
		t.Fatalf("%d UDP datagrams to the closed port, want 1", len(udpClosed))
	}
	checkPath(t, "udp a->b:7002 (closed)", udpClosed[0], forward(topo, a, b), path.Dropped)
	if want := privtest.DropReason(t, "NO_SOCKET"); udpClosed[0].DropReason != want {
		t.Errorf("closed port drop reason %q, want %q", udpClosed[0].DropReason, want)
	}

	syns := find(paths, func(p path.Path) bool {
		return is("TCP", aAddr, bAddr)(p) && p.Dport == 7003 && strings.Contains(p.Summary, "[S]")
	})
	if len(syns) != 1 {
		t.Fatalf("%d TCP SYNs a->b, want 1", len(syns))
	}
	checkPath(t, "tcp syn a->b", syns[0], forward(topo, a, b), path.Delivered)
	synAcks := find(paths, func(p path.Path) bool {
		return is("TCP", bAddr, aAddr)(p) && p.Sport == 7003 && strings.Contains(p.Summary, "[S.]")
	})
	if len(synAcks) != 1 {
		t.Fatalf("%d SYN-ACKs b->a, want 1", len(synAcks))
	}
	checkPath(t, "tcp syn-ack b->a", synAcks[0], forward(topo, b, a), path.Delivered)

	// c's broadcast ARP reaches a's namespace, so it is rightly traced from
	// there; nothing else of c's may be.
	for _, p := range find(paths, func(p path.Path) bool { return (p.Src == cAddr || p.Dst == cAddr) && p.Proto != "ARP" }) {
		t.Errorf("c's traffic traced although c is not selected: %s %v", p.Summary, hopsOf(p))
	}
	if s.res.Summary.Lost != 0 {
		t.Errorf("%d events lost", s.res.Summary.Lost)
	}
	if s.res.Engine != engine {
		t.Errorf("trace ran with engine %s, want %s", s.res.Engine, engine)
	}
}

// Many packets in a burst keep distinct identities even though the kernel
// reuses skb addresses: every datagram gets its own complete path.
func TestIdentityUnderSkbReuse(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	udp, err := b.ListenUDP(7100)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	s := startTrace(t, trace.Config{Selection: selection.Selection{Netns: []uint32{a.Inode}}})
	const n = 300
	for i := 0; i < n; i++ {
		if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), 7100), []byte(fmt.Sprintf("datagram %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	settle()
	paths := s.stop()
	got := find(paths, func(p path.Path) bool { return p.Proto == "UDP" && p.Dport == 7100 })
	if len(got) != n {
		t.Fatalf("%d UDP paths, want %d", len(got), n)
	}
	ids := map[uint64]bool{}
	for i, p := range got {
		if ids[p.ID] {
			t.Fatalf("packet id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if fmt.Sprint(hopsOf(p)) != fmt.Sprint(forward(topo, a, b)) {
			t.Fatalf("datagram %d: hops %v", i, hopsOf(p))
		}
	}
}

// A packet dropped by an nftables rule on the bridge's forward path ends
// with verdict dropped and the kernel's reason, charged to the egress port.
func TestNetfilterDropIsReported(t *testing.T) {
	privtest.RequireRoot(t)
	privtest.Tool(t, "nft", "nftables")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	table := "hoptrace_test_" + strings.TrimPrefix(topo.Bridge, "ht")
	rules := fmt.Sprintf(`table bridge %s {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip daddr %s ip protocol icmp drop
	}
}`, table, b.Addr.Addr())
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "bridge", table).Run() })

	s := startTrace(t, trace.Config{Selection: selection.Selection{Netns: []uint32{a.Inode}}})
	if n, _ := a.Ping(b.Addr.Addr(), 1, 500*time.Millisecond); n != 0 {
		t.Fatalf("ping went through the drop rule")
	}
	settle()
	paths := s.stop()
	reqs := find(paths, func(p path.Path) bool { return p.Proto == "ICMP" && p.Dst == b.Addr.Addr().String() })
	if len(reqs) != 1 {
		t.Fatalf("%d echo requests traced, want 1", len(reqs))
	}
	p := reqs[0]
	checkPath(t, "dropped echo request", p, []hop{
		{a.Name, "eth0", "veth", "egress"},
		{"host", a.HostVeth, "veth", "ingress"},
	}, path.Dropped)
	if want := privtest.DropReason(t, "NETFILTER_DROP"); p.DropReason != want {
		t.Errorf("drop reason %q, want %q", p.DropReason, want)
	}
	if len(p.Ends) == 0 || p.Ends[0].Ifname != b.HostVeth {
		t.Errorf("drop not charged to the egress port %s: %+v", b.HostVeth, p.Ends)
	}
}

// A namespace and veth created after the trace started are named in the
// first packet's hops (netlink subscription, not a scan at start only), and
// with the tcx engine carry its programs on both ends.
//
// The tracepoint engine sees a device from its very first packet. The tcx
// engine attaches when the resolver reports the device, tens of
// milliseconds after its creation on a loaded machine; this namespace pings
// 2 ms after its creation, so under tcx the test waits for the attachment
// first (the cost of tcx: see the README's "Engines").
func TestLinkCreatedDuringTraceIsNamed(t *testing.T) {
	privtest.RequireRoot(t)
	for _, e := range engines(t) {
		t.Run(e.String(), func(t *testing.T) { linkCreatedDuringTrace(t, e) })
	}
}

func linkCreatedDuringTrace(t *testing.T, engine loader.Engine) {
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	a := topo.Hosts[0]
	s := startTrace(t, trace.Config{Selection: selection.Selection{Netns: []uint32{a.Inode}}, Engine: engine})
	late := topo.AddHost(t)
	if engine == loader.EngineTCX {
		progs := privtest.ProgramsOf(t, os.Getpid())
		held := func(ids []ebpf.ProgramID) bool {
			return slices.ContainsFunc(ids, func(id ebpf.ProgramID) bool { return slices.Contains(progs, id) })
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			in, eg := privtest.TCXPrograms(t, late.Path, "eth0")
			hin, heg := privtest.TCXPrograms(t, "", late.HostVeth)
			if held(in) && held(eg) && held(hin) && held(heg) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("new devices not attached 5s after their creation: eth0 %v %v, %s %v %v", in, eg, late.HostVeth, hin, heg)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n, err := late.Ping(a.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping late->a: %d replies, %v", n, err)
	}
	settle()
	paths := s.stop()
	reqs := find(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Src == late.Addr.Addr().String() && strings.Contains(p.Summary, "request")
	})
	if len(reqs) != 1 {
		t.Fatalf("%d echo requests from the new namespace, want 1", len(reqs))
	}
	checkPath(t, "echo request late->a", reqs[0], forward(topo, late, a), path.Delivered)
}

// Nothing stays attached once a trace returns.
func TestNoProgramsAfterTrace(t *testing.T) {
	privtest.RequireRoot(t)
	s := startTrace(t, trace.Config{})
	progs := privtest.ProgramsOf(t, os.Getpid())
	if len(progs) == 0 {
		t.Fatal("no hoptrace programs loaded while tracing")
	}
	s.stop()
	if left := privtest.WaitGone(progs, 5*time.Second); len(left) != 0 {
		t.Fatalf("programs %v left after the trace ended", left)
	}
}
