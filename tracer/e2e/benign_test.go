package e2e

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// Frees that are no failure of the packet (tracer/benign's rules): trace
// follows the packet to them and says how it really ended, with no drop
// (latency agrees: tracer/latency's tests of the same names).

// traceNetns traces h's namespace while traffic runs, and returns the paths.
func traceNetns(t *testing.T, h *testnet.Host, traffic func()) []path.Path {
	t.Helper()
	r := startCLI(t, "trace", "--netns", h.Name, "--output", "json")
	waitAttached(t, r)
	traffic()
	time.Sleep(800 * time.Millisecond)
	return stopJSON(t, r)
}

// tracePings traces a's namespace while a pings b n times, and returns the
// paths.
func tracePings(t *testing.T, a, b *testnet.Host, n int) []path.Path {
	t.Helper()
	return traceNetns(t, a, func() {
		if got, err := a.Ping(b.Addr.Addr(), n, 2*time.Second); err != nil || got != n {
			t.Fatalf("ping: %d replies, %v", got, err)
		}
	})
}

// checkCopy checks that a path reached h's eth0 and that its copy there
// was freed as freed says, and that the path says no drop (nor "dropped"
// in its end, unless dropWords: a kernel that cannot tell the copy's free
// from a drop).
func checkCopy(t *testing.T, p path.Path, what string, h *testnet.Host, dropWords bool, freed func(path.EndEvent) bool) {
	t.Helper()
	if want := h.Name + "/eth0/veth/ingress"; !hasHop(p, want) {
		t.Errorf("%s: no hop %s (the bridge floods it): %s", what, want, hopNames(p))
	}
	ok := false
	for _, e := range p.Ends {
		ok = ok || e.Netns == h.Name && e.Hook == "kfree_skb" && freed(e)
	}
	if !ok {
		t.Errorf("%s: no kfree_skb of the copy in %s as expected: %+v", what, h.Name, p.Ends)
	}
	if p.Verdict == path.Dropped || p.DropReason != "" || !dropWords && strings.Contains(p.End, "dropped") {
		t.Errorf("%s: %s (%s) %q, want no drop", what, p.Verdict, p.DropReason, p.End)
	}
}

// Multicast to a group nobody joined reaches every port of the bridge and
// is freed in each namespace, with no reason (IPv6: ip6_mc_input; IPv4:
// ip_rcv_finish_core, no input route for the group), and IPv6 multicast in
// a namespace with IPv6 disabled on its eth0 by ip6_rcv_core (IPV6DISABLED
// where the kernel has that reason): trace follows it into the other
// namespaces and says it was received there, not dropped.
func TestMulticastNotJoinedIsNoDrop(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 3})
	a, b, c := topo.Hosts[0], topo.Hosts[1], topo.Hosts[2]
	if err := a.AddAddr(netip.MustParsePrefix("fd68:6d63::1/64")); err != nil {
		t.Fatal(err)
	}
	if err := c.DisableIPv6(); err != nil {
		t.Fatal(err)
	}
	groups := map[string]netip.AddrPort{
		"ff02::1:2345": netip.MustParseAddrPort("[ff02::1:2345%" + a.IfName + "]:9"),
		"239.1.2.3":    netip.MustParseAddrPort("239.1.2.3:9"),
	}
	disabled := "NOT_SPECIFIED" // before the kernel had IPV6DISABLED
	if kernel.KernelDropReasons().Has("IPV6DISABLED") {
		disabled = "IPV6DISABLED"
	}
	disabled = privtest.DropReason(t, disabled)
	const n = 3
	paths := traceNetns(t, a, func() {
		for i := 0; i < n; i++ {
			for _, g := range groups {
				if err := a.SendUDP(g, []byte("anyone?")); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
	seen := map[string]int{}
	for _, p := range paths {
		if _, ok := groups[p.Dst]; !ok || p.Proto != "UDP" {
			continue
		}
		seen[p.Dst]++
		checkCopy(t, p, p.Dst, b, false, func(e path.EndEvent) bool {
			fn := kernel.BaseName(e.Location)
			return fn == "ip6_mc_input" || fn == "ip_rcv_finish_core"
		})
		if p.Dst == "239.1.2.3" {
			continue
		}
		checkCopy(t, p, p.Dst+" where IPv6 is disabled", c, false, func(e path.EndEvent) bool {
			fn := kernel.BaseName(e.Location)
			return e.Reason == disabled && (fn == "ip6_rcv_core" || fn == "ipv6_rcv" || fn == "ipv6_list_rcv")
		})
	}
	for g := range groups {
		if seen[g] != n {
			t.Errorf("%d datagrams to %s traced, want %d", seen[g], g, n)
		}
	}
	if t.Failed() {
		dumpPaths(t, paths)
	}
}

// A unicast the bridge floods (it has not learned the destination's MAC)
// also reaches a third namespace, whose ip_rcv frees it as OTHERHOST:
// trace follows that copy to its free, and the packet is delivered, with
// no drop said anywhere.
func TestFloodCopyIsNoDrop(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 3})
	a, b, c := topo.Hosts[0], topo.Hosts[1], topo.Hosts[2]
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err) // a and b know each other's MAC
	}
	if err := topo.Flood(b); err != nil {
		t.Fatal(err)
	}
	const n = 5
	paths := tracePings(t, a, b, n)
	reason := privtest.DropReason(t, "OTHERHOST")
	var requests int
	for _, p := range paths {
		if p.Proto != "ICMP" || p.Src != a.Addr.Addr().String() || !strings.Contains(p.Summary, "request") {
			continue
		}
		requests++
		if want := b.Name + "/eth0/veth/ingress"; !hasHop(p, want) {
			t.Errorf("echo request: no hop %s (the flood's two copies): %s", want, hopNames(p))
		}
		checkCopy(t, p, "echo request", c, reason == "", func(e path.EndEvent) bool { return reason == "" || e.Reason == reason })
		if p.Verdict != path.Delivered {
			t.Errorf("echo request: %s %q, want delivered", p.Verdict, p.End)
		}
	}
	if requests != n {
		dumpPaths(t, paths)
		t.Fatalf("%d echo requests traced, want %d", requests, n)
	}
	if t.Failed() {
		dumpPaths(t, paths)
	}
}

// A connection a closes first is a timewait one by the time b closes: b's
// FIN reaches it in TIME_WAIT and tcp_v4_rcv frees it with no reason
// (NOT_SPECIFIED; none before 5.17): trace says it was consumed there, the
// connection's normal end, while a SYN to a closed port, freed by the same
// function (NO_SOCKET), stays a drop.
func TestTimeWaitSegmentIsNoDrop(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	const conns, refused = 4, 2
	var dst netip.AddrPort
	paths := traceNetns(t, a, func() {
		var err error
		if dst, err = a.CloseIntoTimeWait(b, conns); err != nil {
			t.Fatal(err)
		}
		if err := a.DialRefused(netip.AddrPortFrom(b.Addr.Addr(), 7999), refused); err != nil {
			t.Fatal(err)
		}
	})
	if n, err := a.TimeWaitTo(dst); err != nil || n != conns {
		t.Errorf("%d of %s's connections to %s in TIME_WAIT (%v), want %d", n, a.Name, dst, err, conns)
	}
	late, noReason := 0, privtest.DropReason(t, "NOT_SPECIFIED")
	var drops []string
	for _, p := range paths {
		if p.Proto != "TCP" {
			continue
		}
		if p.Verdict == path.Dropped {
			drops = append(drops, p.Summary+": "+p.End)
			if p.Dport != 7999 || kernel.BaseName(p.DropLocation) != "tcp_v4_rcv" || p.DropReason != privtest.DropReason(t, "NO_SOCKET") {
				t.Errorf("%s: %s, want no drop but the refused SYNs' (NO_SOCKET at tcp_v4_rcv)", p.Summary, p.End)
			}
		}
		if p.Src != b.Addr.Addr().String() || p.Sport != dst.Port() || !strings.Contains(p.Summary, "[F.]") {
			continue
		}
		// b's FIN, to a's connection in TIME_WAIT
		late++
		freed := false
		for _, e := range p.Ends {
			freed = freed || e.Netns == a.Name && e.Hook == "kfree_skb" && kernel.BaseName(e.Location) == "tcp_v4_rcv" && e.Reason == noReason
		}
		if !freed {
			t.Errorf("%s: no kfree_skb in %s at tcp_v4_rcv (%q): %+v", p.Summary, a.Name, noReason, p.Ends)
		}
		if want := "consumed by tcp_v4_rcv in " + a.Name + " (a late segment of a closed connection)"; p.Verdict != path.Delivered || p.End != want {
			t.Errorf("%s: %s %q, want delivered: %q", p.Summary, p.Verdict, p.End, want)
		}
	}
	t.Logf("%d FINs from %s:%s reached TIME_WAIT; TCP drops: %q", late, b.Name, strconv.Itoa(int(dst.Port())), drops)
	if late != conns {
		t.Errorf("%d FINs from %s to %s traced, want %d", late, b.Name, a.Name, conns)
	}
	if len(drops) != refused {
		t.Errorf("%d TCP drops, want the %d refused SYNs", len(drops), refused)
	}
	if t.Failed() {
		dumpPaths(t, paths)
	}
}
