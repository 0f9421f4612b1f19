package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/latency"
)

func TestLatencyUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"hoptrace", "latency", "--output", "yaml"},
		{"hoptrace", "latency", "extra"},
		{"hoptrace", "latency", "--interval", "0s"},
		{"hoptrace", "latency", "--duration", "-1s"},
		{"hoptrace", "latency", "--metrics-addr", "9464"},
		{"hoptrace", "latency", "--interval", "soon"},
		{"hoptrace", "latency", "--sample", "0"},
		{"hoptrace", "latency", "--sample", "100000"},
		{"hoptrace", "latency", "--sample", "-3"},
	} {
		if got := run(args); got != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, got, exitUsage)
		}
	}
}

// TestLatencyCommandJSON runs the command on a throwaway pair of namespaces
// and reads its JSON: one object per interval, the last one final, with the
// traffic's pairs in it — by default the device hops only (A's eth0 egress
// to its host veth's ingress), with --detail the driver step in between too.
func TestLatencyCommandJSON(t *testing.T) {
	privtest.SameOnEveryKernel(t, "interval timing under software emulation is not meaningful; tracer/latency's tests measure the pairs on every kernel")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b, bAddr := topo.Hosts[0], topo.Hosts[1].Name, topo.Hosts[1].Addr.Addr().String()
	iperf := privtest.Tool(t, "iperf3", "iperf3")
	for _, detail := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "detail"}[detail], func(t *testing.T) {
			last, lines := latencyUnderTraffic(t, iperf, a.Name, b, bAddr, detail)
			var egressToVeth, egressToXmit, detailPairs bool
			for _, p := range last.Pairs {
				if p.From.Netns != a.Name || p.From.Interface != "eth0" || p.From.Step != latency.StepEgress || p.Count < 100 {
					continue
				}
				egressToVeth = egressToVeth || p.To.Interface == a.HostVeth && p.To.Step == latency.StepIngress
				egressToXmit = egressToXmit || p.To.Step == latency.StepXmit
			}
			for _, p := range last.Pairs {
				for _, h := range []latency.Hop{p.From, p.To} {
					detailPairs = detailPairs || h.Step == latency.StepXmit || h.Step == latency.StepBacklog || h.Step == latency.StepGRO
				}
			}
			switch {
			case !detail && (!egressToVeth || detailPairs):
				t.Errorf("default: %s eth0 egress → %s ingress %v (want true), driver/backlog pairs %v (want false):\n%s",
					a.Name, a.HostVeth, egressToVeth, detailPairs, lines[len(lines)-1])
			case detail && !egressToXmit:
				t.Errorf("--detail: the summary lacks %s eth0 egress → xmit for the traffic:\n%s", a.Name, lines[len(lines)-1])
			}
			if len(last.Paths) == 0 {
				t.Error("no paths in the summary")
			}
		})
	}
}

// latencyUnderTraffic runs `latency -o json` on namespaces a and b for 3s
// while iperf3 sends UDP from a to b (500 datagrams/s); it returns the final report and the
// output's lines, each checked to be a report.
func latencyUnderTraffic(t *testing.T, iperf, a, b, bAddr string, detail bool) (latency.Report, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", b, iperf, "-s", "-1", "-B", bAddr)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	// 3s of traffic from 0.5s on: it overlaps the session's 3s (counted
	// from its ready line) even when loading takes seconds on a busy host
	go func() {
		time.Sleep(500 * time.Millisecond)
		exec.CommandContext(ctx, "ip", "netns", "exec", a, iperf, "-c", bAddr, "-u", "-b", "2M", "-l", "500", "-t", "3").Run()
	}()
	args := []string{"latency", "--netns", a, "--netns", b, "--interval", "500ms", "--duration", "3s", "--output", "json"}
	if detail {
		args = append(args, "--detail")
	}
	code, stdout, stderr := runInProcess(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) < 3 {
		t.Fatalf("%d lines of output, want one per interval and a summary:\n%s", len(lines), stdout)
	}
	var last latency.Report
	for i, l := range lines {
		var r latency.Report
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %d is not a report: %v: %s", i+1, err, l)
		}
		if r.Final != (i == len(lines)-1) {
			t.Errorf("line %d: final=%v", i+1, r.Final)
		}
		last = r
	}
	return last, lines
}
