package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

// tsharkFields runs tshark on a capture and returns its tab-separated field rows.
func tsharkFields(t *testing.T, file, filter string, fields ...string) [][]string {
	t.Helper()
	args := []string{"-r", file, "-T", "fields", "-E", "separator=\t"}
	if filter != "" {
		args = append(args, "-Y", filter)
	}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("tshark", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tshark %v: %v: %s", args, err, stderr.String())
	}
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		if l != "" {
			rows = append(rows, strings.Split(l, "\t"))
		}
	}
	return rows
}

// stopCLI interrupts a hoptrace run and waits for its clean exit.
func stopCLI(t *testing.T, r *running) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGINT)
	waitExit(t, r, 15*time.Second)
}

// waitExit waits for a hoptrace run to end by itself, successfully.
func waitExit(t *testing.T, r *running, timeout time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatalf("hoptrace did not exit within %s", timeout)
	}
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("hoptrace: %v: %s", err, r.stderrText())
	}
}

// readyTimeout is how long hoptrace may take to load and attach.
func readyTimeout() time.Duration {
	if os.Getenv("HOPTRACE_VM") != "" {
		return 3 * time.Minute // software emulation
	}
	return 30 * time.Second
}

// waitStderr waits until a hoptrace run has written text to standard error.
func waitStderr(t *testing.T, r *running, text string) {
	t.Helper()
	wait := readyTimeout()
	deadline := time.Now().Add(wait)
	for !strings.Contains(r.stderrText(), text) {
		select {
		case <-r.done:
			t.Fatalf("hoptrace exited before writing %q: %s", text, r.stderrText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hoptrace did not write %q within %s: %s", text, wait, r.stderrText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A traced ping written with -w opens in tshark: each hop of the request
// is a packet on an interface named after its device and namespace, in path
// order, with the hop in its comment, the direction in its flags, and a
// real-time timestamp; the last hop carries the verdict.
func TestPcapngPingHops(t *testing.T) {
	privtest.SameOnEveryKernel(t, "the pcapng writer is userspace; the hops are TestTraceJSONContractAndInterrupt's and the captured bytes TestFilterMatchesTcpdump's on every kernel")
	privtest.RequireRoot(t)
	requireTool(t, "tshark")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	file := filepath.Join(t.TempDir(), "ping.pcapng")
	r := startCLI(t, "trace", "--netns", a.Name, "-w", file, "icmp")
	waitAttached(t, r)
	before := time.Now()
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	time.Sleep(800 * time.Millisecond)
	stopCLI(t, r)
	if !strings.Contains(strings.Join(r.lines, "\n"), "=> delivered") {
		t.Errorf("-w FILE: paths not printed on stdout: %q", r.lines)
	}

	rows := tsharkFields(t, file, "icmp.type == 8", "frame.interface_name", "frame.comment", "frame.packet_flags_direction", "frame.time_epoch", "ip.dst")
	want := []struct{ iface, dir, hook string }{
		{"eth0@" + a.Name, "0x00000002", "net_dev_queue egress"},
		{a.HostVeth + "@host", "0x00000001", "netif_receive_skb ingress"},
		{topo.Bridge + "@host", "0x00000000", "bridge_forward forward"},
		{b.HostVeth + "@host", "0x00000002", "net_dev_queue egress"},
		{"eth0@" + b.Name, "0x00000001", "netif_receive_skb ingress"},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d echo request packets in the capture, want one per hop (%d): %q", len(rows), len(want), rows)
	}
	for i, w := range want {
		row := rows[i]
		if len(row) < 5 {
			t.Fatalf("row %d: %q", i, row)
		}
		iface, comment, dir, ts, dst := row[0], row[1], row[2], row[3], row[4]
		if iface != w.iface {
			t.Errorf("hop %d on interface %q, want %q", i+1, iface, w.iface)
		}
		if !strings.HasPrefix(comment, fmt.Sprintf("hoptrace packet ")) || !strings.Contains(comment, fmt.Sprintf(" hop %d/%d %s", i+1, len(want), w.hook)) {
			t.Errorf("hop %d comment %q, want hop %d/%d %s", i+1, comment, i+1, len(want), w.hook)
		}
		if i > 0 && !strings.Contains(comment, "us") {
			t.Errorf("hop %d comment %q has no time since the previous hop", i+1, comment)
		}
		if dir != w.dir {
			t.Errorf("hop %d direction flags %q, want %s", i+1, dir, w.dir)
		}
		sec, err := strconv.ParseFloat(ts, 64)
		if err != nil || sec < float64(before.Add(-2*time.Second).Unix()) || sec > float64(time.Now().Unix()+1) {
			t.Errorf("hop %d time %q is not the real time of the ping (%s)", i+1, ts, before)
		}
		if dst != b.Addr.Addr().String() {
			t.Errorf("hop %d: frame's ip.dst %q, want %s (the headers were not captured)", i+1, dst, b.Addr.Addr())
		}
	}
	if last := rows[len(rows)-1][1]; !strings.Contains(last, "; delivered") {
		t.Errorf("last hop comment %q lacks the verdict", last)
	}
	// one interface description per device, naming its namespace
	descs := tsharkFields(t, file, "", "frame.interface_name", "frame.interface_description")
	for _, d := range descs {
		if len(d) == 2 && d[0] == "eth0@"+a.Name && !strings.Contains(d[1], "netns "+a.Name) {
			t.Errorf("interface %s description %q does not name its namespace", d[0], d[1])
		}
	}
	// the reply's hops are there too
	if n := len(tsharkFields(t, file, "icmp.type == 0", "frame.number")); n != 5 {
		t.Errorf("%d echo reply packets, want 5", n)
	}
}

// A packet dropped by netfilter is found with a display filter on the
// comment of its last hop.
func TestPcapngDropComment(t *testing.T) {
	privtest.RequireRoot(t)
	requireTool(t, "tshark")
	requireTool(t, "nft")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	table := "hoptrace_pcapng_" + strings.TrimPrefix(topo.Bridge, "ht")
	rules := fmt.Sprintf("table bridge %s {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tip daddr %s ip protocol icmp drop\n\t}\n}\n", table, b.Addr.Addr())
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "bridge", table).Run() })

	file := filepath.Join(t.TempDir(), "drop.pcapng")
	r := startCLI(t, "trace", "--netns", a.Name, "-w", file, "icmp")
	waitAttached(t, r)
	if n, _ := a.Ping(b.Addr.Addr(), 1, 500*time.Millisecond); n != 0 {
		t.Fatal("ping went through the drop rule")
	}
	time.Sleep(800 * time.Millisecond)
	stopCLI(t, r)
	// Before 5.17 the kernel gives no reason: the comment names the
	// dropping function instead, and the display filter looks for that.
	verdict := "; dropped NETFILTER_DROP at nft_do_chain"
	needle := "NETFILTER_DROP"
	if privtest.DropReason(t, "NETFILTER_DROP") == "" {
		// (the netfilter drop's location: nft_do_chain, or nf_hook_slow on 5.10)
		verdict, needle = "; dropped at ", "; dropped at "
	}
	rows := tsharkFields(t, file, `frame.comment contains "`+needle+`"`, "frame.interface_name", "frame.comment", "ip.dst")
	if len(rows) != 1 {
		t.Fatalf("%d packets with %q in their comment, want 1 (the dropped request's last hop): %q", len(rows), needle, rows)
	}
	if rows[0][0] != a.HostVeth+"@host" || !strings.Contains(rows[0][1], verdict) || rows[0][2] != b.Addr.Addr().String() {
		t.Errorf("drop row %q: want the request's last hop on %s@host with its verdict", rows[0], a.HostVeth)
	}
}

// -w - writes the capture to standard output and nothing else: tshark
// reads it from a pipe.
func TestPcapngToStdout(t *testing.T) {
	privtest.SameOnEveryKernel(t, "-w - into a pipe is userspace; TestFilterMatchesTcpdump writes pcapng on every kernel")
	privtest.RequireRoot(t)
	requireTool(t, "tshark")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	ht := exec.Command(hoptraceBin, "trace", "--netns", a.Name, "-w", "-", "--count", "2", "--duration", "5m", "icmp")
	var htErr privtest.SyncBuffer
	ht.Stderr = &htErr
	pipe, err := ht.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	ts := exec.Command("tshark", "-r", "-", "-T", "fields", "-e", "frame.interface_name", "-e", "icmp.type")
	ts.Stdin = pipe
	var tsOut, tsErr bytes.Buffer
	ts.Stdout, ts.Stderr = &tsOut, &tsErr
	if err := ht.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ht.Process.Kill(); ht.Wait() })
	if err := ts.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(readyTimeout())
	for !strings.Contains(htErr.String(), "hoptrace: tracing ") {
		if time.Now().After(deadline) {
			t.Fatalf("hoptrace not tracing: %s", htErr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	if err := ht.Wait(); err != nil {
		t.Fatalf("hoptrace: %v: %s", err, htErr.String())
	}
	if err := ts.Wait(); err != nil {
		t.Fatalf("tshark -r -: %v: %s", err, tsErr.String())
	}
	rows := strings.Split(strings.TrimSpace(tsOut.String()), "\n")
	if len(rows) != 10 {
		t.Fatalf("tshark read %d packets from the pipe, want 10 (5 hops of the request and of the reply): %q", len(rows), tsOut.String())
	}
	if rows[0] != "eth0@"+a.Name+"\t8" || rows[9] != "eth0@"+a.Name+"\t0" {
		t.Errorf("first and last packets %q, %q: want the request leaving and the reply arriving at eth0@%s", rows[0], rows[9], a.Name)
	}
	if !strings.Contains(htErr.String(), "2 packets") {
		t.Errorf("summary not on stderr: %q", htErr.String())
	}
}
