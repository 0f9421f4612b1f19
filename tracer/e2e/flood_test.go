package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// A unicast the bridge floods (it has not learned the destination's MAC)
// also reaches a third namespace, whose ip_rcv frees it as OTHERHOST:
// trace follows that copy to its free, and the packet is delivered, with
// no drop said anywhere (latency counts that free as a discard, not a
// drop: tracer/latency TestFloodCopiesAreNoDrops).
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
		for _, want := range []string{b.Name + "/eth0/veth/ingress", c.Name + "/eth0/veth/ingress"} {
			if !hasHop(p, want) {
				t.Errorf("echo request: no hop %s (the flood's two copies): %s", want, hopNames(p))
			}
		}
		freed := false
		for _, e := range p.Ends {
			freed = freed || e.Netns == c.Name && e.Hook == "kfree_skb" && (reason == "" || e.Reason == reason)
		}
		if !freed {
			t.Errorf("echo request: no kfree_skb (%s) of the copy in %s: %+v", reason, c.Name, p.Ends)
		}
		if p.Verdict != path.Delivered || p.DropReason != "" || (reason != "" && strings.Contains(p.End, "dropped")) {
			t.Errorf("echo request: %s (%s) %q, want delivered with no drop", p.Verdict, p.DropReason, p.End)
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

// tracePings traces a's namespace while a pings b n times, and returns the
// paths.
func tracePings(t *testing.T, a, b *testnet.Host, n int) []path.Path {
	t.Helper()
	r := startCLI(t, "trace", "--netns", a.Name, "--output", "json")
	waitAttached(t, r)
	if got, err := a.Ping(b.Addr.Addr(), n, 2*time.Second); err != nil || got != n {
		t.Fatalf("ping: %d replies, %v", got, err)
	}
	time.Sleep(800 * time.Millisecond)
	return stopJSON(t, r)
}
