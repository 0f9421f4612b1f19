package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

func TestTraceUsageErrors(t *testing.T) {
	privtest.SameOnEveryKernel(t, "usage errors are found before anything touches the kernel")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"trace", "--output", "xml"}, exitUsage, `unknown output format "xml"`},
		{[]string{"trace", "icmp", "and"}, exitUsage, `filter expression "icmp and": can't parse filter expression: syntax error`},
		{[]string{"trace", "--proto", "udp", "port", "99999"}, exitUsage, "port 99999"},
		{[]string{"trace", "ip6 protochain 6"}, exitUsage, "protochain is not supported"},
		{[]string{"latency", "tcp", "or"}, exitUsage, `filter expression "tcp or": can't parse filter expression`},
		{[]string{"trace", "--snaplen", "8", "-w", "x.pcapng"}, exitUsage, "--snaplen must be from 16 to 4096"},
		{[]string{"trace", "--events", "-w", "x.pcapng"}, exitUsage, "cannot be combined with --events"},
		{[]string{"trace", "--snaplen", "64"}, exitUsage, "give -w FILE too"},
		{[]string{"trace", "icmp", "-c", "3"}, exitUsage, "(flags go before the expression)"},
		{[]string{"trace", "--count", "-1"}, exitUsage, "--count must not be negative"},
		{[]string{"trace", "--bogus"}, exitUsage, "flag provided but not defined: -bogus"},
		{[]string{"trace", "--duration", "soon"}, exitUsage, "invalid value"},
		{[]string{"trace", "--proto", "sctpx"}, exitUsage, "unknown protocol"},
		{[]string{"trace", "--ring-size", "3"}, exitUsage, "--ring-size must be a power of two"},
		{[]string{"trace", "--host", "10.0.0.300"}, exitUsage, "bad --host"},
		{[]string{"trace", "--proto", "icmp", "--port", "80"}, exitUsage, "--port needs tcp or udp"},
		{[]string{"trace", "--engine", "xdp"}, exitUsage, `--engine: engine "xdp": want auto, tcx or tracepoint`},
		{[]string{"latency", "--engine", "kprobe"}, exitUsage, `--engine: engine "kprobe"`},
	} {
		r := runCLI(t, tc.args...)
		if r.code != tc.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tc.args, r.code, tc.code, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, "hoptrace: ") || !strings.Contains(last, tc.msg) {
			t.Errorf("%v: last stderr line %q, want hoptrace: ...%s", tc.args, last, tc.msg)
		}
	}
}

func TestTraceBadSelection(t *testing.T) {
	privtest.SameOnEveryKernel(t, "an unknown namespace or interface is refused before anything is loaded")
	privtest.RequireRoot(t)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"trace", "--netns", "no-such-ns-hoptrace"}, `no-such-ns-hoptrace`},
		{[]string{"trace", "--interface", "nosuchif0"}, `interface "nosuchif0": no such interface`},
		{[]string{"trace", "--netns", "/etc/hostname"}, `/etc/hostname`},
	} {
		r := runCLI(t, tc.args...)
		if r.code != exitFail {
			t.Errorf("%v: exit %d, want %d", tc.args, r.code, exitFail)
		}
		if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); !strings.Contains(r.stderr, tc.msg) || n > 1 {
			t.Errorf("%v: stderr %q, want one line naming %s", tc.args, r.stderr, tc.msg)
		}
	}
}

func TestTraceNeedsRoot(t *testing.T) {
	privtest.SameOnEveryKernel(t, "the root check comes before loading; the per-kernel privilege rule is TestPrivilegeRuleSharedByDoctorAndTrace's")
	privtest.RequireRoot(t) // to switch to another user
	cmd := exec.Command(hoptraceBin, "trace")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != exitFail {
		t.Fatalf("as nobody: %v, want exit %d", err, exitFail)
	}
	if !strings.Contains(stderr.String(), "trace needs root") {
		t.Errorf("stderr %q does not say root is needed", stderr.String())
	}
}

// running is a hoptrace process whose stdout is read line by line.
type running struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	stderr privtest.SyncBuffer
	done   chan struct{}
	progs  []ebpf.ProgramID
}

func (r *running) stderrText() string { return r.stderr.String() }

func startCLI(t *testing.T, args ...string) *running {
	t.Helper()
	r := &running{cmd: exec.Command(hoptraceBin, args...), done: make(chan struct{})}
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.cmd.Stderr = &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			r.mu.Lock()
			r.lines = append(r.lines, sc.Text())
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	})
	return r
}

// waitAttached waits until the process says it is tracing (its programs
// attached and its filters set) and remembers the programs it holds.
func waitAttached(t *testing.T, r *running) {
	t.Helper()
	waitStderr(t, r, "hoptrace: tracing ")
	r.progs = privtest.ProgramsOf(t, r.cmd.Process.Pid)
	if len(r.progs) == 0 {
		t.Fatal("hoptrace says it is tracing but holds no programs")
	}
}

// The JSON output keeps its documented contract, and Ctrl-C ends the trace
// with a summary and nothing left attached.
func TestTraceJSONContractAndInterrupt(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	r := startCLI(t, "trace", "--netns", a.Name, "--output", "json")
	waitAttached(t, r)
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	time.Sleep(800 * time.Millisecond)
	r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("hoptrace did not exit within 10s of SIGINT")
	}
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGINT: %v (stderr %q)", err, r.stderrText())
	}
	if !strings.Contains(r.stderrText(), "packets,") || !strings.Contains(r.stderrText(), "lost events") {
		t.Errorf("no summary line on stderr: %q", r.stderrText())
	}
	var request map[string]any
	for _, l := range r.lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("stdout line is not JSON: %q", l)
		}
		if m["proto"] == "ICMP" && strings.Contains(m["summary"].(string), "echo request") {
			request = m
		}
	}
	if request == nil {
		t.Fatalf("no echo request path in %d lines", len(r.lines))
	}
	for _, k := range []string{"time", "proto", "src", "dst", "sport", "dport", "len", "summary", "verdict", "drop_reason", "hops"} {
		if _, ok := request[k]; !ok {
			t.Errorf("path object lacks %q", k)
		}
	}
	if ts, _ := request["time"].(string); func() bool { _, err := time.Parse(time.RFC3339Nano, ts); return err != nil }() {
		t.Errorf("time %q is not RFC 3339", request["time"])
	}
	if request["src"] != a.Addr.Addr().String() || request["dst"] != b.Addr.Addr().String() || request["verdict"] != "delivered" {
		t.Errorf("request: src %v dst %v verdict %v", request["src"], request["dst"], request["verdict"])
	}
	hops, _ := request["hops"].([]any)
	if len(hops) != 5 {
		t.Fatalf("%d hops, want 5", len(hops))
	}
	for i, h := range hops {
		hm := h.(map[string]any)
		for _, k := range []string{"netns", "netns_inode", "ifindex", "ifname", "kind", "direction", "bridge", "container", "ts_ns", "delta_ns"} {
			if _, ok := hm[k]; !ok {
				t.Errorf("hop %d lacks %q", i, k)
			}
		}
	}
	if hm := hops[2].(map[string]any); hm["inferred"] != true || hm["direction"] != "forward" {
		t.Errorf("bridge hop: %v", hm)
	}
	if left := privtest.WaitGone(r.progs, 5*time.Second); len(left) != 0 {
		t.Errorf("programs %v programs left after SIGINT", left)
	}
}

// However the process ends, even by SIGKILL, no program stays attached:
// every attachment is a link file descriptor that dies with the process.
func TestTraceSIGKILLLeavesNothing(t *testing.T) {
	privtest.RequireRoot(t)
	r := startCLI(t, "trace", "--output", "json")
	waitAttached(t, r)
	r.cmd.Process.Kill()
	r.cmd.Wait()
	if left := privtest.WaitGone(r.progs, 5*time.Second); len(left) != 0 {
		t.Fatalf("programs %v hoptrace programs still loaded after SIGKILL", left)
	}
}

// The tcx engine's device links die with the process too: while a trace
// runs, the devices of a namespace it watches (the namespace's eth0, its
// host veth and the bridge) carry its tcx programs; after a SIGKILL no tcx
// link of it is left. With --engine tracepoint there is none to begin with.
func TestTraceSIGKILLLeavesNoTCXLink(t *testing.T) {
	privtest.RequireTCX(t, "the tracepoint engine is used; TestTraceSIGKILLLeavesNothing covers it")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a := topo.Hosts[0]

	tp := startCLI(t, "trace", "--netns", a.Name, "--engine", "tracepoint")
	waitAttached(t, tp)
	if links := privtest.TCXLinksOf(t, tp.progs); len(links) != 0 {
		t.Errorf("--engine tracepoint holds tcx links %v", links)
	}
	tp.cmd.Process.Kill()
	tp.cmd.Wait()

	r := startCLI(t, "trace", "--netns", a.Name, "--output", "json")
	waitAttached(t, r)
	links := privtest.TCXLinksOf(t, r.progs)
	// at least ingress+egress on a's eth0, its host veth and the bridge
	if len(links) < 6 {
		t.Fatalf("trace holds %d tcx links (%v), want at least 6", len(links), links)
	}
	held := map[ebpf.ProgramID]bool{}
	for _, p := range r.progs {
		held[p] = true
	}
	for _, dev := range []struct{ netns, ifname string }{{a.Path, "eth0"}, {"", a.HostVeth}, {"", topo.Bridge}} {
		in, eg := privtest.TCXPrograms(t, dev.netns, dev.ifname)
		if !slices.ContainsFunc(in, func(id ebpf.ProgramID) bool { return held[id] }) ||
			!slices.ContainsFunc(eg, func(id ebpf.ProgramID) bool { return held[id] }) {
			t.Errorf("%s (netns %q) does not carry the trace's programs at tcx ingress and egress: %v, %v", dev.ifname, dev.netns, in, eg)
		}
	}
	r.cmd.Process.Kill()
	r.cmd.Wait()
	if left := privtest.WaitLinksGone(links, 5*time.Second); len(left) != 0 {
		t.Fatalf("tcx links %v still exist after SIGKILL", left)
	}
	if left := privtest.WaitGone(r.progs, 5*time.Second); len(left) != 0 {
		t.Fatalf("programs %v still loaded after SIGKILL", left)
	}
}

// --count ends the trace by itself after N paths, in text form.
func TestTraceCountText(t *testing.T) {
	privtest.SameOnEveryKernel(t, "--count and the text output are userspace; the hops behind them are TestTraceJSONContractAndInterrupt's on every kernel")
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	r := startCLI(t, "trace", "--netns", a.Name, "--proto", "icmp", "--count", "2", "--duration", "20s")
	waitAttached(t, r)
	if n, err := a.Ping(b.Addr.Addr(), 3, 2*time.Second); err != nil || n != 3 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Fatal("--count 2 did not end the trace")
	}
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	out := strings.Join(r.lines, "\n")
	if n := strings.Count(out, "=> "); n != 2 {
		t.Errorf("%d paths printed, want 2:\n%s", n, out)
	}
	for _, want := range []string{a.Name, "eth0", a.HostVeth, topo.Bridge, "veth", "egress", "ingress"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
}

// --interface starts tracking at that interface; --events streams each
// observation with its hook, in order.
func TestTraceInterfaceEvents(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	r := startCLI(t, "trace", "--interface", b.HostVeth, "--events", "--output", "json", "--proto", "icmp")
	waitAttached(t, r)
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	time.Sleep(500 * time.Millisecond)
	r.cmd.Process.Signal(syscall.SIGINT)
	<-r.done
	r.cmd.Wait()
	var seq []string
	var id float64
	for _, l := range r.lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		if !strings.Contains(m["summary"].(string), "echo request") {
			continue
		}
		if m["clone"] == true {
			continue // a packet socket's copy (tcpdump may run on the machine)
		}
		if id == 0 {
			id = m["packet_id"].(float64)
		}
		if m["packet_id"].(float64) != id {
			t.Errorf("echo request events under two ids: %v and %v", id, m["packet_id"])
		}
		seq = append(seq, fmt.Sprintf("%s@%s/%s", m["hook"], m["netns"], m["ifname"]))
	}
	want := []string{
		"net_dev_queue@host/" + b.HostVeth,
		"netif_receive_skb@" + b.Name + "/eth0",
		"consume_skb@" + b.Name + "/eth0",
	}
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Errorf("echo request events\n got %v\nwant %v", seq, want)
	}
}

// --detail adds the driver and backlog steps between egress and ingress.
func TestTraceDetailHooks(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	r := startCLI(t, "trace", "--netns", a.Name, "--detail", "--output", "json", "--proto", "icmp")
	waitAttached(t, r)
	if n, err := a.Ping(b.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	time.Sleep(800 * time.Millisecond)
	r.cmd.Process.Signal(syscall.SIGINT)
	<-r.done
	r.cmd.Wait()
	for _, l := range r.lines {
		var m struct {
			Summary string
			Hops    []struct{ Hook, Netns, Ifname string }
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		if !strings.Contains(m.Summary, "echo request") {
			continue
		}
		var got []string
		for _, h := range m.Hops {
			got = append(got, h.Hook+"@"+h.Ifname)
		}
		want := []string{
			"net_dev_queue@eth0", "net_dev_start_xmit@eth0", "netif_rx@" + a.HostVeth, "netif_receive_skb@" + a.HostVeth,
			"bridge_forward@" + topo.Bridge,
			"net_dev_queue@" + b.HostVeth, "net_dev_start_xmit@" + b.HostVeth, "netif_rx@eth0", "netif_receive_skb@eth0",
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("detail hops\n got %v\nwant %v", got, want)
		}
		return
	}
	t.Fatalf("no echo request path in %d lines", len(r.lines))
}
