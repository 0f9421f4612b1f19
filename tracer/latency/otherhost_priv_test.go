package latency_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/latency"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// A bridge's flood copies freed as OTHERHOST in the namespaces they were
// not for are discards, not drops: kept out of hoptrace_drops_total and
// shown as "discard (OTHERHOST)" in the report, while a real drop in the
// same run (datagrams to a closed port) still counts, once each.
func TestFloodCopiesAreNoDrops(t *testing.T) {
	privtest.RequireRoot(t)
	if privtest.DropReason(t, "OTHERHOST") == "" {
		// the kernel frees a flood copy without saying why: it counts as
		// a drop of reason "unknown" there (README, latency)
		t.Skip("SKIP: no drop reasons before 5.17: a flood copy's free cannot be told from a drop")
	}
	topo := testnet.New(t, testnet.Options{Hosts: 3})
	a, b, c := topo.Hosts[0], topo.Hosts[1], topo.Hosts[2]
	connected(t, a, b) // a and b know each other's MAC
	if err := topo.Flood(b); err != nil {
		t.Fatal(err)
	}
	m := latency.NewMetrics()
	addr := serveMetrics(t, m, "127.0.0.1:0")
	s := startLatency(t, latency.Config{Selection: selection.Selection{Netns: []uint32{a.Inode}},
		Interval: 200 * time.Millisecond, Metrics: m, Drops: dropNamesForTest(t)})
	const pings, datagrams = 50, 20
	if got, err := a.Ping(b.Addr.Addr(), pings, 2*time.Second); err != nil || got != pings {
		t.Fatalf("ping: %d replies, %v", got, err)
	}
	for i := 0; i < datagrams; i++ {
		if err := a.SendUDP(netip.AddrPortFrom(b.Addr.Addr(), 7999), []byte("nobody")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(600 * time.Millisecond)
	body := string(scrape(t, addr))
	final := s.stop()

	var discards, noSocket uint64
	for _, p := range final.Pairs {
		if p.Key.To.Hook != uint8(event.HookKfreeSkb) {
			continue
		}
		switch {
		case p.DropReason == "OTHERHOST" && p.Key.To.Netns == c.Inode:
			discards += p.Count
			if p.To.Step != latency.StepDiscard || !strings.HasSuffix(p.Label, "discard (OTHERHOST)") {
				t.Errorf("flood copy shown as %q (step %s), want a discard", p.Label, p.To.Step)
			}
		case p.DropReason == "OTHERHOST":
			t.Errorf("OTHERHOST outside %s: %s (%d)", c.Name, p.Label, p.Count)
		case p.DropReason == "NO_SOCKET" && p.Key.To.Netns == b.Inode && p.To.Step == latency.StepDrop:
			noSocket += p.Count
		}
	}
	// every echo request and every datagram was flooded to c
	if discards < pings+datagrams {
		logReport(t, &final)
		t.Errorf("%d OTHERHOST discards in %s, want at least %d (the bridge did not flood?)", discards, c.Name, pings+datagrams)
	}
	if noSocket != datagrams {
		logReport(t, &final)
		t.Errorf("%d NO_SOCKET drops in %s, want %d", noSocket, b.Name, datagrams)
	}
	if strings.Contains(body, `reason="OTHERHOST"`) {
		t.Errorf("the drops metric counts flood copies:\n%s", firstLines(body, latency.MetricDrops, 5))
	}
	want := regexp.MustCompile(fmt.Sprintf(`(?m)^%s\{[^}]*netns="%s"[^}]*reason="NO_SOCKET"\} %d$`, latency.MetricDrops, b.Name, datagrams))
	if !want.MatchString(body) {
		t.Errorf("no %s{netns=%q,reason=\"NO_SOCKET\"} %d:\n%s", latency.MetricDrops, b.Name, datagrams, firstLines(body, latency.MetricDrops, 5))
	}
}
