package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

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

// pairNetns builds a bridge and two named namespaces on it with iproute2
// (10.233.X.0/24), removed when the test ends.
func pairNetns(t *testing.T) (a, b, bAddr string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: privileged test needs root (network namespaces, BPF); run with sudo")
	}
	var rb [3]byte
	rand.Read(rb[:])
	sfx := hex.EncodeToString(rb[:])
	x := int(rb[0])%200 + 20
	br, a, b := "hlbr"+sfx, "hla"+sfx, "hlb"+sfx
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", a).Run()
		exec.Command("ip", "netns", "del", b).Run()
		exec.Command("ip", "link", "del", br).Run()
		exec.Command("iptables", "-w", "-D", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT").Run()
	})
	sh("ip", "link", "add", br, "type", "bridge")
	sh("ip", "link", "set", br, "up")
	sh("iptables", "-w", "-I", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT")
	for i, ns := range []string{a, b} {
		veth := fmt.Sprintf("hlv%s%d", sfx, i)
		sh("ip", "netns", "add", ns)
		sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		sh("ip", "link", "set", veth, "master", br, "up")
		sh("ip", "-n", ns, "addr", "add", fmt.Sprintf("10.233.%d.%d/24", x, i+2), "dev", "eth0")
		sh("ip", "-n", ns, "link", "set", "eth0", "up")
		sh("ip", "-n", ns, "link", "set", "lo", "up")
	}
	return a, b, fmt.Sprintf("10.233.%d.3", x)
}

// TestLatencyCommandJSON runs the command on a throwaway pair of namespaces
// and reads its JSON: one object per interval, the last one final, with the
// traffic's pairs in it.
func TestLatencyCommandJSON(t *testing.T) {
	if os.Getenv("HOPTRACE_VM") != "" {
		t.Skip("SKIP: interval timing under software emulation (kernel-matrix VM) is not meaningful")
	}
	a, b, bAddr := pairNetns(t)
	iperf, err := exec.LookPath("iperf3")
	if err != nil {
		t.Skip("SKIPPED: iperf3 not installed")
	}
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
