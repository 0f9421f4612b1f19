package latency_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/latency"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// Multicast to a group nobody joined is flooded by the bridge and freed in
// every namespace it reaches, with no reason (IPv6: ip6_mc_input; IPv4:
// ip_rcv_finish_core, no input route): not for those hosts, no drop. Nothing of it counts in
// hoptrace_drops_total, while datagrams to a closed port in the same run
// still do, once each.
func TestMulticastNotJoinedIsNoDrop(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	connected(t, a, b)
	if err := a.AddAddr(netip.MustParsePrefix("fd68:6d63::1/64")); err != nil {
		t.Fatal(err)
	}

	m := latency.NewMetrics()
	addr := serveMetrics(t, m, "127.0.0.1:0")
	s := startLatency(t, latency.Config{Selection: selection.Selection{Netns: []uint32{a.Inode}},
		Interval: 200 * time.Millisecond, Metrics: m, Drops: dropNamesForTest(t)})

	const mcasts, datagrams = 30, 5
	groups := []netip.AddrPort{
		netip.MustParseAddrPort("[ff02::1:2345%" + a.IfName + "]:9"), // ip6_mc_input
		netip.MustParseAddrPort("239.1.2.3:9"),                       // ip_rcv_finish_core: no input route
	}
	for i := 0; i < mcasts; i++ {
		if err := a.SendUDP(groups[i%len(groups)], []byte("anyone?")); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < datagrams; i++ {
		if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), 7999), []byte("nobody")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(600 * time.Millisecond)
	body := string(scrape(t, addr))
	final := s.stop()

	var noSocket, reachedB uint64
	for _, p := range final.Pairs {
		if p.Key.From.Netns == b.Inode && p.Key.From.Hook == uint8(event.HookNetifReceiveSkb) &&
			p.Key.To.Hook == uint8(event.HookConsumeSkb) {
			reachedB += p.Count // the multicast, freed in b as consumed
		}
		if p.Key.To.Hook != uint8(event.HookKfreeSkb) || p.To.Step != latency.StepDrop {
			continue
		}
		if p.DropReason == "NO_SOCKET" && p.Key.To.Netns == b.Inode || p.DropReason == "" && p.Key.To.Netns == b.Inode && privtest.DropReason(t, "NO_SOCKET") == "" {
			noSocket += p.Count
			continue
		}
		t.Errorf("a drop in a run of multicast nobody joined: %s (%d)", p.Label, p.Count)
	}
	if reachedB < mcasts {
		logReport(t, &final)
		t.Errorf("%d frames consumed in %s after its eth0, want at least the %d multicasts (not flooded?)", reachedB, b.Name, mcasts)
	}
	if noSocket != datagrams {
		logReport(t, &final)
		t.Errorf("%d closed-port drops in %s, want %d", noSocket, b.Name, datagrams)
	}
	if strings.Contains(body, `reason="NOT_SPECIFIED"`) {
		t.Errorf("the drops metric counts multicast nobody joined:\n%s", firstLines(body, latency.MetricDrops, 5))
	}
}
