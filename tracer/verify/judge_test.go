package verify

import (
	"strings"
	"testing"

	"github.com/hoptrace/hoptrace/tracer/path"
)

// forwardPath is the expected path web → db across br0.
func forwardPath() []Hop {
	return []Hop{
		{Netns: "web", NetnsInode: 10, Ifname: "eth0", Kind: "veth", Direction: "egress"},
		{Netns: "host", NetnsInode: 1, Ifname: "vethweb", Kind: "veth", Direction: "ingress"},
		{Netns: "host", NetnsInode: 1, Ifname: "br0", Kind: "bridge", Direction: "forward"},
		{Netns: "host", NetnsInode: 1, Ifname: "vethdb", Kind: "veth", Direction: "egress"},
		{Netns: "db", NetnsInode: 20, Ifname: "eth0", Kind: "veth", Direction: "ingress"},
	}
}

func observed(exp []Hop, n int) []path.Hop {
	var hs []path.Hop
	for i, e := range exp[:n] {
		hs = append(hs, path.Hop{Netns: e.Netns, NetnsInode: e.NetnsInode, Ifname: e.Ifname, Kind: e.Kind, Direction: e.Direction, TsNs: uint64(1000 * (i + 1))})
	}
	return hs
}

func TestJudgeCompletePath(t *testing.T) {
	exp := forwardPath()
	j := judge(exp, &path.Path{Hops: observed(exp, 5), Verdict: path.Delivered, End: "consumed by icmp_rcv in db"})
	if !j.ok || j.failure != nil || j.matched != 5 || j.outcome != OutcomeAccepted {
		t.Fatalf("complete path: %+v", j)
	}
	for i, h := range j.hops {
		if h.Expected != i || !h.OK {
			t.Errorf("hop %d: %+v", i, h)
		}
	}
}

func TestJudgeNoSocketIsDeliveryNotPath(t *testing.T) {
	exp := forwardPath()
	j := judge(exp, &path.Path{Hops: observed(exp, 5), Verdict: path.Dropped, DropReason: "NO_SOCKET", DropLocation: "__udp4_lib_rcv"})
	if !j.ok || j.failure != nil || j.outcome != OutcomeNoSocket {
		t.Fatalf("NO_SOCKET at the target must pass the path with outcome no_socket: %+v", j)
	}
}

func TestJudgeNetfilterDropInForward(t *testing.T) {
	exp := forwardPath()
	p := &path.Path{Hops: observed(exp, 2), Verdict: path.Dropped, DropReason: "NETFILTER_DROP", DropLocation: "nf_hook_slow",
		Ends: []path.EndEvent{{Hook: "kfree_skb", Netns: "host", Ifname: "vethdb", Reason: "NETFILTER_DROP", Location: "nf_hook_slow"}}}
	j := judge(exp, p)
	if j.ok || j.failure == nil {
		t.Fatalf("drop passed: %+v", j)
	}
	f := j.failure
	if f.Hop != "host br0 (forward)" || f.DropReason != "NETFILTER_DROP" || f.Stage != StagePath {
		t.Errorf("failure %+v", f)
	}
	for _, want := range []string{"NETFILTER_DROP at nf_hook_slow", "forward path toward vethdb", "FORWARD", "last seen at host vethweb ingress"} {
		if !strings.Contains(f.Reason, want) {
			t.Errorf("reason %q lacks %q", f.Reason, want)
		}
	}
}

func TestJudgeVanished(t *testing.T) {
	exp := forwardPath()
	j := judge(exp, &path.Path{Hops: observed(exp, 4), Verdict: path.Unfinished})
	if j.ok || j.failure == nil || j.failure.Hop != "db eth0" ||
		j.failure.Reason != "packet vanished after host vethdb egress with no drop event" {
		t.Fatalf("vanished: %+v %+v", j, j.failure)
	}
}

func TestJudgeDeviation(t *testing.T) {
	exp := forwardPath()
	hs := observed(exp, 2)
	hs = append(hs, path.Hop{Netns: "host", NetnsInode: 1, Ifname: "vethother", Kind: "veth", Direction: "egress"})
	j := judge(exp, &path.Path{Hops: hs, Verdict: path.Delivered, End: "consumed in other"})
	if j.ok || j.failure == nil || !strings.Contains(j.failure.Reason, "vethother egress instead") {
		t.Fatalf("deviation: %+v", j.failure)
	}
	if j.hops[2].OK || j.hops[2].Expected != -1 {
		t.Errorf("deviating hop marked %+v", j.hops[2])
	}
}

func TestJudgeNoPath(t *testing.T) {
	j := judge(forwardPath(), nil)
	if j.ok || j.failure == nil || j.failure.Hop != "web eth0" || !strings.Contains(j.failure.Reason, "no probe packet was seen leaving web eth0") {
		t.Fatalf("no path: %+v", j.failure)
	}
}

func TestConcludeVerdicts(t *testing.T) {
	exp := forwardPath()
	r := &Report{Expected: exp, Target: Target{Kind: TargetContainer, Name: "db", IP: "10.0.0.3"}, Proto: "udp", Port: 9}
	r.Probes = []Probe{{Seq: 1, PathOK: true, Outcome: OutcomeNoSocket, Path: &path.Path{DropReason: "NO_SOCKET", DropLocation: "__udp4_lib_rcv"}, Response: "ICMP port unreachable"}}
	conclude(r, Options{Proto: "udp", Port: 9})
	if r.Verdict != Pass || r.Delivery == nil || r.Delivery.Outcome != OutcomeNoSocket || r.Delivery.Reason != "NO_SOCKET" {
		t.Fatalf("verdict %s delivery %+v", r.Verdict, r.Delivery)
	}
	if !strings.HasPrefix(r.Summary, "PASS: 1/1 probes took the expected path web eth0 → host vethweb → host br0 (forward)") || !strings.HasSuffix(r.Summary, "delivery: no_socket (NO_SOCKET)") {
		t.Errorf("summary %q", r.Summary)
	}

	r = &Report{Expected: exp}
	r.Probes = []Probe{
		{Seq: 1, PathOK: true, Outcome: OutcomeAccepted},
		{Seq: 2, Failure: &Failure{Stage: StagePath, Hop: "db eth0", Reason: "packet vanished", Probe: 2}},
	}
	conclude(r, Options{Proto: "icmp"})
	if r.Verdict != Fail || r.Summary != "FAIL at db eth0: packet vanished (probe 2; 1/2 probes took the expected path)" {
		t.Errorf("partial failure: %s %q", r.Verdict, r.Summary)
	}
}

func TestMarkConsequences(t *testing.T) {
	ks := []Check{
		{Hop: "web eth0", Fact: "eth0 up", Detail: "eth0 is administratively up but its link is lowerlayerdown (is the host veth down?)"},
		{Hop: "host vethweb", Fact: "vethweb up", Detail: "host veth vethweb is down"},
		{Hop: "bridge port vethweb → br0", Fact: "bridge port", Detail: "vethweb on br0 is disabled, not forwarding"},
	}
	markConsequences(ks)
	if !ks[0].Consequence || ks[1].Consequence || !ks[2].Consequence {
		t.Fatalf("consequences %+v", ks)
	}
}

func TestOptions(t *testing.T) {
	o := Options{Proto: "UDP"}
	if err := o.normalize(); err != nil || o.Proto != "udp" || o.Port != DefaultUDPPort || o.Count != 3 || o.Timeout == 0 {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	for _, bad := range []Options{{Proto: "sctp"}, {Proto: "icmp", Port: 80}, {Proto: "tcp", Port: 70000}, {Count: -1}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
