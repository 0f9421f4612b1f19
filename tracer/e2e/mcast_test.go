package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// Multicast to a group nobody joined reaches every port of the bridge and
// is freed in each namespace, with no reason (IPv6: ip6_mc_input; IPv4:
// ip_rcv_finish_core, no input route for the group): trace follows it into
// the other namespace and says it was received there, not dropped (latency
// agrees: tracer/latency TestMulticastNotJoinedIsNoDrop).
func TestMulticastNotJoinedIsNoDrop(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	if err := a.AddAddr(netip.MustParsePrefix("fd68:6d63::1/64")); err != nil {
		t.Fatal(err)
	}
	groups := map[string]netip.AddrPort{
		"ff02::1:2345": netip.MustParseAddrPort("[ff02::1:2345%" + a.IfName + "]:9"),
		"239.1.2.3":    netip.MustParseAddrPort("239.1.2.3:9"),
	}
	const n = 3
	r := startCLI(t, "trace", "--netns", a.Name, "--output", "json")
	waitAttached(t, r)
	for i := 0; i < n; i++ {
		for _, g := range groups {
			if err := a.SendUDP(g, []byte("anyone?")); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	seen := map[string]int{}
	for _, p := range paths {
		if _, ok := groups[p.Dst]; !ok || p.Proto != "UDP" {
			continue
		}
		seen[p.Dst]++
		if want := b.Name + "/eth0/veth/ingress"; !hasHop(p, want) {
			t.Errorf("%s: no hop %s (the bridge floods multicast): %s", p.Dst, want, hopNames(p))
		}
		if p.Verdict == path.Dropped || p.DropReason != "" || strings.Contains(p.End, "dropped") {
			t.Errorf("%s: %s (%s) %q, want no drop", p.Dst, p.Verdict, p.DropReason, p.End)
		}
		freed := false
		for _, e := range p.Ends {
			freed = freed || e.Netns == b.Name && e.Hook == "kfree_skb" && (kernel.BaseName(e.Location) == "ip6_mc_input" || kernel.BaseName(e.Location) == "ip_rcv_finish_core")
		}
		if !freed {
			t.Errorf("%s: no free of the copy in %s by ip6_mc_input or ip_rcv_finish_core: %+v", p.Dst, b.Name, p.Ends)
		}
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
