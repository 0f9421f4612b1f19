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
	} {
		if got := run(args); got != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, got, exitUsage)
		}
	}
}

// TestLatencyCommandJSON runs the command on a throwaway pair of namespaces
// and reads its JSON: one object per interval, the last one final, with the
// traffic's pairs in it.
func TestLatencyCommandJSON(t *testing.T) {
	privtest.SameOnEveryKernel(t, "interval timing under software emulation is not meaningful; tracer/latency's tests measure the pairs on every kernel")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b, bAddr := topo.Hosts[0].Name, topo.Hosts[1].Name, topo.Hosts[1].Addr.Addr().String()
	iperf := privtest.Tool(t, "iperf3", "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", b, iperf, "-s", "-1", "-B", bAddr)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	go func() {
		time.Sleep(1200 * time.Millisecond)
		exec.CommandContext(ctx, "ip", "netns", "exec", a, iperf, "-c", bAddr, "-u", "-b", "2M", "-l", "500", "-t", "1").Run()
	}()
	code, stdout, stderr := runInProcess(t, "latency", "--netns", a, "--netns", b,
		"--interval", "500ms", "--duration", "3s", "--output", "json")
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
	found := false
	for _, p := range last.Pairs {
		if p.From.Netns == a && p.From.Interface == "eth0" && p.From.Step == latency.StepEgress &&
			p.To.Step == latency.StepXmit && p.Count >= 100 {
			found = true
		}
	}
	if !found {
		t.Errorf("the summary lacks %s eth0 egress → xmit for the traffic:\n%s", a, lines[len(lines)-1])
	}
	if len(last.Paths) == 0 {
		t.Error("no paths in the summary")
	}
}
