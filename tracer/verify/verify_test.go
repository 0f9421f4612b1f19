package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
	"github.com/hoptrace/hoptrace/tracer/verify"
)

// binary is hoptrace built by TestMain for the exit-code tests (root only).
var binary string

func TestMain(m *testing.M) {
	code := func() int {
		// tools/vmtest/matrix.sh builds the binary once on the host: a
		// build inside an emulated VM takes minutes.
		if bin := os.Getenv("HOPTRACE_BIN"); bin != "" {
			binary = bin
		} else if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "hoptrace-verify-test")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			binary = filepath.Join(dir, "hoptrace")
			out, err := exec.Command("go", "build", "-o", binary, "github.com/hoptrace/hoptrace/cmd/hoptrace").CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "go build hoptrace: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// fixture is a bridge network of the test's own with two containers.
type fixture struct {
	t            *testing.T
	network      string
	bridge       string
	a, b         testdocker.Container
	aIP, bIP, gw string
	aVeth, bVeth string
	v            *verify.Verifier
}

func setup(t *testing.T) *fixture {
	t.Helper()
	testdocker.RequireDocker(t)
	f := &fixture{t: t}
	f.bridge = testdocker.UniqueName("hvf")
	f.network, _ = testdocker.Network(t, "hoptrace-verify", "-o", "com.docker.network.bridge.name="+f.bridge)
	f.a = testdocker.Run(t, "hoptrace-verify-a", "--network", f.network)
	f.b = testdocker.Run(t, "hoptrace-verify-b", "--network", f.network)
	f.aIP = ipOf(t, f.a.Name, f.network)
	f.bIP = ipOf(t, f.b.Name, f.network)
	nw := testdocker.Inspect(t, f.network)
	if cfgs, ok := testdocker.Field(nw, "IPAM", "Config").([]any); ok && len(cfgs) > 0 {
		f.gw, _ = cfgs[0].(map[string]any)["Gateway"].(string)
	}
	f.aVeth = hostVeth(t, f.a.Name)
	f.bVeth = hostVeth(t, f.b.Name)

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rt, err := docker.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	ann, err := docker.NewAnnotator(ctx, rt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ann.Close() })
	select {
	case <-ann.Synced():
	case <-time.After(5 * time.Second):
		t.Fatal("annotator not synced")
	}
	names, err := resolve.New(ctx, resolve.Options{Annotator: ann})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { names.Close() })
	f.v = &verify.Verifier{Runtime: rt, Names: names}
	return f
}

func ipOf(t *testing.T, container, network string) string {
	t.Helper()
	return testdocker.Docker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").IPAddress}}", container)
}

// hostVeth names the host end of the container's eth0.
func hostVeth(t *testing.T, container string) string {
	t.Helper()
	idx, err := strconv.Atoi(testdocker.Exec(t, container, "cat", "/sys/class/net/eth0/iflink"))
	if err != nil {
		t.Fatal(err)
	}
	ifi, err := net.InterfaceByIndex(idx)
	if err != nil {
		t.Fatalf("host veth of %s (ifindex %d): %v", container, idx, err)
	}
	return ifi.Name
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func (f *fixture) verify(ref string, opts verify.Options) *verify.Report {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := f.v.Verify(ctx, ref, opts)
	if err != nil {
		f.t.Fatalf("verify %s %+v: %v", ref, opts, err)
	}
	return r
}

func text(r *verify.Report) string {
	var b bytes.Buffer
	r.WriteText(&b)
	return b.String()
}

type hop struct{ netns, ifname, kind, dir string }

func hopsOf(p verify.Probe) []hop {
	var hs []hop
	for _, h := range p.Hops {
		where := h.Netns
		if h.Container != "" {
			where = h.Container
		}
		hs = append(hs, hop{where, h.Ifname, string(h.Kind), string(h.Direction)})
	}
	return hs
}

func (f *fixture) toGateway() []hop {
	return []hop{
		{f.a.Name, "eth0", "veth", "egress"},
		{"host", f.aVeth, "veth", "ingress"},
		{"host", f.bridge, "bridge", "local"},
	}
}

func (f *fixture) toB() []hop {
	return []hop{
		{f.a.Name, "eth0", "veth", "egress"},
		{"host", f.aVeth, "veth", "ingress"},
		{"host", f.bridge, "bridge", "forward"},
		{"host", f.bVeth, "veth", "egress"},
		{f.b.Name, "eth0", "veth", "ingress"},
	}
}

// requirePass asserts PASS with every probe on exactly the hops given.
func requirePass(t *testing.T, r *verify.Report, want []hop, count int) {
	t.Helper()
	if r.Verdict != verify.Pass {
		t.Fatalf("verdict %s, want PASS:\n%s", r.Summary, text(r))
	}
	if len(r.Probes) != count {
		t.Fatalf("%d probes, want %d", len(r.Probes), count)
	}
	for _, pr := range r.Probes {
		if got := hopsOf(pr); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("probe %d hops\n got %v\nwant %v", pr.Seq, got, want)
		}
		if !pr.PathOK || pr.Matched != len(want) || pr.Path == nil {
			t.Errorf("probe %d: ok %v matched %d", pr.Seq, pr.PathOK, pr.Matched)
		}
		for i, h := range pr.Hops {
			if i > 0 && h.DeltaNs != h.TsNs-pr.Hops[i-1].TsNs {
				t.Errorf("probe %d hop %d: latency %d, want %d", pr.Seq, i, h.DeltaNs, h.TsNs-pr.Hops[i-1].TsNs)
			}
		}
	}
	for _, k := range r.Checks {
		if !k.OK {
			t.Errorf("check failed on a PASS: %+v", k)
		}
	}
	if len(r.Expected) != len(want) {
		t.Errorf("%d expected hops, want %d", len(r.Expected), len(want))
	}
}

func TestHealthyContainerToGateway(t *testing.T) {
	f := setup(t)
	r := f.verify(f.a.Name, verify.Options{Count: 2})
	requirePass(t, r, f.toGateway(), 2)
	if r.Target.Kind != verify.TargetGateway || r.Target.IP != f.gw || r.Source != f.aIP || r.Bridge != f.bridge {
		t.Errorf("target %+v source %s bridge %s", r.Target, r.Source, r.Bridge)
	}
	if r.Delivery == nil || r.Delivery.Outcome != verify.OutcomeAccepted || r.Delivery.Probes[verify.OutcomeAccepted] != 2 {
		t.Errorf("delivery %+v", r.Delivery)
	}
	for _, pr := range r.Probes {
		if !strings.Contains(pr.Response, "echo reply") {
			t.Errorf("probe %d response %q", pr.Seq, pr.Response)
		}
		if pr.Reply == nil || len(pr.Reply.Hops) != 3 {
			t.Errorf("probe %d: echo reply path not traced: %+v", pr.Seq, pr.Reply)
		}
	}
	out := text(r)
	for _, want := range []string{"✓  host " + f.aVeth, "bridge port " + f.aVeth + " → " + f.bridge, "gateway " + f.gw, "\nPASS: 2/2 probes"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("\n%s", out)
}

func TestContainerToContainerSameBridge(t *testing.T) {
	f := setup(t)
	r := f.verify(f.a.Name, verify.Options{To: f.b.Name, Count: 2})
	requirePass(t, r, f.toB(), 2)
	if r.Target.Kind != verify.TargetContainer || r.Target.Name != f.b.Name || r.Target.HostVeth != f.bVeth {
		t.Errorf("target %+v", r.Target)
	}
	// By address, the target is found among the containers.
	r = f.verify(f.a.Name, verify.Options{To: f.bIP, Count: 1, Proto: "tcp", Port: 81})
	requirePass(t, r, f.toB(), 1)
	if r.Target.Name != f.b.Name {
		t.Errorf("target by IP resolved to %+v", r.Target)
	}
	if r.Delivery == nil || r.Delivery.Outcome != verify.OutcomeNoSocket || !strings.Contains(r.Probes[0].Response, "refused") {
		t.Errorf("tcp to a closed port: delivery %+v response %q", r.Delivery, r.Probes[0].Response)
	}
	t.Logf("\n%s", text(r))

	// With a listener, the same probe is accepted.
	testdocker.Docker(t, "exec", "-d", f.b.Name, "nc", "-ll", "-p", "8080", "-e", "cat")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(testdocker.Exec(t, f.b.Name, "netstat", "-lnt"), ":8080 ") {
		if time.Now().After(deadline) {
			t.Fatal("nc did not listen on 8080 in the target")
		}
		time.Sleep(100 * time.Millisecond)
	}
	r = f.verify(f.a.Name, verify.Options{To: f.b.Name, Count: 1, Proto: "tcp", Port: 8080})
	requirePass(t, r, f.toB(), 1)
	if r.Delivery == nil || r.Delivery.Outcome != verify.OutcomeAccepted || !strings.Contains(r.Probes[0].Response, "connection accepted") {
		t.Errorf("tcp to a listener: delivery %+v response %q", r.Delivery, r.Probes[0].Response)
	}
	if rp := r.Probes[0].Reply; rp == nil || !strings.Contains(rp.Summary, "[S.]") {
		t.Errorf("SYN-ACK path not traced: %+v", rp)
	}
}

func TestUDPNoListenerIsDeliveryNotPath(t *testing.T) {
	f := setup(t)
	r := f.verify(f.a.Name, verify.Options{To: f.b.Name, Proto: "udp", Port: 9, Count: 2})
	requirePass(t, r, f.toB(), 2)
	d := r.Delivery
	if d == nil || d.Outcome != verify.OutcomeNoSocket || d.Reason != "NO_SOCKET" || d.Probes[verify.OutcomeNoSocket] != 2 {
		t.Fatalf("delivery %+v", d)
	}
	for _, pr := range r.Probes {
		if pr.Path.Verdict != "dropped" || pr.Path.DropReason != "NO_SOCKET" {
			t.Errorf("probe %d path %s %s", pr.Seq, pr.Path.Verdict, pr.Path.DropReason)
		}
		if !strings.Contains(pr.Response, "port unreachable") {
			t.Errorf("probe %d response %q, want the ICMP port unreachable", pr.Seq, pr.Response)
		}
		if pr.Sport == 0 || int(pr.Path.Sport) != pr.Sport || pr.Path.Dport != 9 {
			t.Errorf("probe %d not identified by its source port: %d vs path %d>%d", pr.Seq, pr.Sport, pr.Path.Sport, pr.Path.Dport)
		}
	}
	out := text(r)
	if !strings.Contains(out, "delivery: no_socket (NO_SOCKET)") || !strings.Contains(out, "not a path failure") {
		t.Errorf("text output:\n%s", out)
	}
	t.Logf("\n%s", out)
}

func TestHostVethDown(t *testing.T) {
	f := setup(t)
	run(t, "ip", "link", "set", f.aVeth, "down")
	t.Cleanup(func() { exec.Command("ip", "link", "set", f.aVeth, "up").Run() })
	r := f.verify(f.a.Name, verify.Options{})
	if r.Verdict != verify.Fail || r.Failure == nil {
		t.Fatalf("verdict %s:\n%s", r.Summary, text(r))
	}
	if r.Failure.Stage != verify.StageConfig || r.Failure.Hop != "host "+f.aVeth || !strings.Contains(r.Failure.Reason, "is down") {
		t.Errorf("failure %+v", r.Failure)
	}
	if len(r.Probes) != 0 || r.ProbesSkipped == "" {
		t.Errorf("probes sent although the configuration fails: %+v", r.Probes)
	}
	t.Logf("\n%s", text(r))

	run(t, "ip", "link", "set", f.aVeth, "up")
	waitCarrier(t, f.a.Name)
	requirePass(t, f.verify(f.a.Name, verify.Options{Count: 1}), f.toGateway(), 1)
}

// waitCarrier waits until the container's eth0 has its carrier back: the
// kernel raises it shortly after the peer is set up again.
func waitCarrier(t *testing.T, container string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec.Command("docker", "exec", container, "cat", "/sys/class/net/eth0/carrier").Output()
		if strings.TrimSpace(string(out)) == "1" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("eth0 of %s has no carrier 5s after its peer came up", container)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHostVethNotOnBridge(t *testing.T) {
	f := setup(t)
	run(t, "ip", "link", "set", f.aVeth, "nomaster")
	t.Cleanup(func() { exec.Command("ip", "link", "set", f.aVeth, "master", f.bridge).Run() })
	r := f.verify(f.a.Name, verify.Options{To: f.b.Name})
	if r.Verdict != verify.Fail || r.Failure == nil {
		t.Fatalf("verdict %s:\n%s", r.Summary, text(r))
	}
	want := "bridge port " + f.aVeth + " → " + f.bridge
	if r.Failure.Stage != verify.StageConfig || r.Failure.Hop != want || !strings.Contains(r.Failure.Reason, "not enslaved to any bridge") {
		t.Errorf("failure %+v, want at %q", r.Failure, want)
	}
	if r.Summary != "FAIL at "+want+": "+r.Failure.Reason {
		t.Errorf("summary %q", r.Summary)
	}
	t.Logf("\n%s", text(r))

	run(t, "ip", "link", "set", f.aVeth, "master", f.bridge)
	requirePass(t, f.verify(f.a.Name, verify.Options{To: f.b.Name, Count: 1}), f.toB(), 1)
}

func TestNetfilterDropInForwardPath(t *testing.T) {
	f := setup(t)
	if err := exec.Command("iptables", "-L", "DOCKER-USER", "-n").Run(); err != nil {
		t.Fatalf("no DOCKER-USER chain (Docker creates it): %v", err)
	}
	rule := []string{"DOCKER-USER", "-s", f.aIP, "-d", f.bIP, "-j", "DROP"}
	run(t, "iptables", append([]string{"-I"}, rule...)...)
	removed := false
	t.Cleanup(func() {
		if !removed {
			exec.Command("iptables", append([]string{"-D"}, rule...)...).Run()
		}
	})
	r := f.verify(f.a.Name, verify.Options{To: f.b.Name, Count: 2})
	if r.Verdict != verify.Fail || r.Failure == nil {
		t.Fatalf("verdict %s:\n%s", r.Summary, text(r))
	}
	fl := r.Failure
	if fl.Stage != verify.StagePath || fl.DropReason != "NETFILTER_DROP" || fl.Hop != "host "+f.bridge+" (forward)" {
		t.Errorf("failure %+v", fl)
	}
	if !strings.Contains(fl.Reason, "forward path toward "+f.bVeth) || !strings.Contains(fl.Reason, "last seen at host "+f.aVeth+" ingress") {
		t.Errorf("reason %q", fl.Reason)
	}
	for _, pr := range r.Probes {
		if got := hopsOf(pr); fmt.Sprint(got) != fmt.Sprint(f.toB()[:2]) {
			t.Errorf("probe %d hops %v, want the first two", pr.Seq, got)
		}
		if pr.Matched != 2 || pr.PathOK {
			t.Errorf("probe %d matched %d ok %v", pr.Seq, pr.Matched, pr.PathOK)
		}
	}
	if !strings.HasPrefix(r.Summary, "FAIL at host "+f.bridge+" (forward): NETFILTER_DROP") {
		t.Errorf("summary %q", r.Summary)
	}
	t.Logf("\n%s", text(r))

	run(t, "iptables", append([]string{"-D"}, rule...)...)
	removed = true
	requirePass(t, f.verify(f.a.Name, verify.Options{To: f.b.Name, Count: 1}), f.toB(), 1)
}

func TestTargetErrors(t *testing.T) {
	f := setup(t)
	stopped := testdocker.Create(t, "hoptrace-verify-stopped", "--network", f.network)
	ctx := context.Background()
	for _, tc := range []struct {
		to, want string
	}{
		{"hoptrace-verify-nosuch", "no such container"},
		{"127.0.0.1", "an address of the host itself"},
		{stopped.Name, "is not running"},
		{f.a.Name, "the container itself"},
		{f.aIP, "own address"},
	} {
		_, err := f.v.Verify(ctx, f.a.Name, verify.Options{To: tc.to})
		if !errors.Is(err, verify.ErrTarget) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--to %s: %v, want ErrTarget with %q", tc.to, err, tc.want)
		}
	}
	// An address in the subnet that no container holds.
	ip := net.ParseIP(f.bIP).To4()
	ip[3] = 250
	if _, err := f.v.Verify(ctx, f.a.Name, verify.Options{To: ip.String()}); !errors.Is(err, verify.ErrTarget) || !strings.Contains(err.Error(), "no running container has this address") {
		t.Errorf("--to %s: %v", ip, err)
	}
	if _, err := f.v.Verify(ctx, "hoptrace-verify-nosuch", verify.Options{}); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("unknown source: %v", err)
	}
	none := testdocker.Run(t, "hoptrace-verify-none", "--network", "none")
	if _, err := f.v.Verify(ctx, none.Name, verify.Options{}); !errors.Is(err, verify.ErrNoPath) {
		t.Errorf("--network none: %v", err)
	}
}

func TestAll(t *testing.T) {
	f := setup(t)
	none := testdocker.Run(t, "hoptrace-verify-none", "--network", "none")
	mine := map[string]bool{f.a.Name: true, f.b.Name: true, none.Name: true}
	opts := verify.Options{Count: 1, Select: func(c runtime.Container) bool { return mine[c.Name] }}
	all := func() map[string]*verify.Report {
		rs, err := f.v.All(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*verify.Report{}
		for _, r := range rs {
			out[r.Container] = r
			t.Log(r.Line())
		}
		if len(out) != 3 {
			t.Fatalf("%d reports, want 3", len(rs))
		}
		return out
	}
	rs := all()
	if rs[f.a.Name].Verdict != verify.Pass || rs[f.b.Name].Verdict != verify.Pass || rs[none.Name].Verdict != verify.Skip {
		t.Fatalf("verdicts: a %s, b %s, none %s", rs[f.a.Name].Summary, rs[f.b.Name].Summary, rs[none.Name].Summary)
	}
	run(t, "ip", "link", "set", f.bVeth, "down")
	t.Cleanup(func() { exec.Command("ip", "link", "set", f.bVeth, "up").Run() })
	rs = all()
	if rs[f.a.Name].Verdict != verify.Pass || rs[f.b.Name].Verdict != verify.Fail {
		t.Fatalf("with b's veth down: a %s, b %s", rs[f.a.Name].Summary, rs[f.b.Name].Summary)
	}
	if line := rs[f.b.Name].Line(); !strings.HasPrefix(line, "FAIL  "+f.b.Name+"  at host "+f.bVeth+":") {
		t.Errorf("line %q", line)
	}
	var list []*verify.Report
	for _, r := range rs {
		list = append(list, r)
	}
	if !verify.Failed(list...) {
		t.Error("Failed reports no failure")
	}
}

// hoptrace runs the binary and returns stdout, stderr and the exit code.
func hoptrace(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %s: %v", binary, err)
	}
	return stdout.String(), stderr.String(), code
}

func TestBinaryExitCodes(t *testing.T) {
	f := setup(t)
	otherNet, _ := testdocker.Network(t, "hoptrace-verify-other")
	c := testdocker.Run(t, "hoptrace-verify-c", "--network", otherNet)

	out, errOut, code := hoptrace(t, "verify", f.a.Name, "--count", "1")
	if code != 0 || !strings.Contains(out, "\nPASS: 1/1 probes") {
		t.Errorf("healthy: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = hoptrace(t, "verify", f.a.Name, "--to", f.b.Name, "--proto", "udp", "--port", "9", "--count", "1", "--output", "json")
	var r verify.Report
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.Verdict != verify.Pass || r.Delivery == nil || r.Delivery.Reason != "NO_SOCKET" {
		t.Errorf("udp no listener: exit %d, report %+v\n%s%s", code, r.Delivery, out, errOut)
	}
	out, errOut, code = hoptrace(t, "verify", f.a.Name, "--to", c.Name, "--count", "1")
	if code != 1 || !strings.Contains(out, "\nFAIL at host routing: NETFILTER_DROP") {
		t.Errorf("other network (Docker's isolation drops it): exit %d\n%s%s", code, out, errOut)
	}
	for _, args := range [][]string{
		{"verify"},
		{"verify", f.a.Name, f.b.Name},
		{"verify", f.a.Name, "--proto", "sctp"},
		{"verify", f.a.Name, "--port", "80"},
		{"verify", f.a.Name, "--count", "0"},
		{"verify", f.a.Name, "--output", "yaml"},
		{"verify", "--all", f.a.Name},
		{"verify", "--all", "--to", f.b.Name},
	} {
		if _, errOut, code := hoptrace(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errOut)
		}
	}

	run(t, "ip", "link", "set", f.aVeth, "down")
	t.Cleanup(func() { exec.Command("ip", "link", "set", f.aVeth, "up").Run() })
	out, errOut, code = hoptrace(t, "verify", f.a.Name)
	if code != 1 || !strings.Contains(out, "\nFAIL at host "+f.aVeth+": ") {
		t.Errorf("veth down: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = hoptrace(t, "verify", f.a.Name, "-o", "json")
	r = verify.Report{}
	if code != 1 || json.Unmarshal([]byte(out), &r) != nil || r.Verdict != verify.Fail || r.Failure == nil || r.Failure.Stage != verify.StageConfig {
		t.Errorf("veth down, json: exit %d\n%s", code, out)
	}
	run(t, "ip", "link", "set", f.aVeth, "up")
	if out, errOut, code := hoptrace(t, "verify", f.a.Name, "--count", "1"); code != 0 {
		t.Errorf("repaired: exit %d\n%s%s", code, out, errOut)
	}
}

// A container on another user-defined network: the expected path crosses
// the host's routing into the other bridge, and Docker's isolation rules
// drop the probe there: a FAIL naming the routing hop and the reason.
func TestIsolationBetweenNetworks(t *testing.T) {
	f := setup(t)
	otherBridge := testdocker.UniqueName("hvo")
	otherNet, _ := testdocker.Network(t, "hoptrace-verify-other", "-o", "com.docker.network.bridge.name="+otherBridge)
	c := testdocker.Run(t, "hoptrace-verify-c", "--network", otherNet)
	cVeth := hostVeth(t, c.Name)
	r := f.verify(f.a.Name, verify.Options{To: c.Name, Count: 1})
	want := []string{f.a.Name + " eth0", "host " + f.aVeth, "host " + f.bridge + " (local delivery)", "host routing",
		"host " + otherBridge, "host " + cVeth, c.Name + " eth0"}
	var got []string
	for _, h := range r.Expected {
		got = append(got, h.Label())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("expected path\n got %v\nwant %v", got, want)
	}
	if r.Verdict != verify.Fail || r.Failure == nil || r.Failure.Stage != verify.StagePath || r.Failure.Hop != "host routing" ||
		r.Failure.DropReason != "NETFILTER_DROP" || !strings.Contains(strings.ToLower(r.Failure.Reason), "isolation") {
		t.Fatalf("want FAIL at host routing with NETFILTER_DROP (isolation):\n%s", text(r))
	}
	t.Logf("\n%s", text(r))
}

// An address routed out of another host device (a namespace of the test's
// behind a host veth): PASS, with Docker's MASQUERADE shown on the hop
// where the probe leaves the host.
func TestRoutedOutOfTheHostWithMasquerade(t *testing.T) {
	f := setup(t)
	out := testnet.NewOutside(t)
	r := f.verify(f.a.Name, verify.Options{To: out.Addr.Addr().String(), Count: 2})
	want := []hop{
		{f.a.Name, "eth0", "veth", "egress"},
		{"host", f.aVeth, "veth", "ingress"},
		{"host", f.bridge, "bridge", "local"},
		{"host", "", "routed", "forward"},
		{"host", out.HostVeth, "veth", "egress"},
		{out.Name, "eth0", "veth", "ingress"},
	}
	if r.Verdict != verify.Pass || len(r.Probes) != 2 || len(r.Expected) != 5 {
		t.Fatalf("want PASS over 5 expected hops with 2 probes:\n%s", text(r))
	}
	snat := "SNAT " + f.aIP + " -> " + out.HostAddr.Addr().String()
	for _, pr := range r.Probes {
		if got := hopsOf(pr); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("probe %d observed\n got %v\nwant %v", pr.Seq, got, want)
		}
		nat := ""
		for _, h := range pr.Hops {
			if h.NAT != "" {
				nat = h.Ifname + ": " + h.NAT
			}
		}
		if nat != out.HostVeth+": "+snat {
			t.Errorf("probe %d: nat %q, want %s: %s", pr.Seq, nat, out.HostVeth, snat)
		}
		if !strings.Contains(pr.Response, "echo reply") {
			t.Errorf("probe %d response %q", pr.Seq, pr.Response)
		}
	}
	if !strings.Contains(text(r), "* "+snat) {
		t.Errorf("text output does not mark the SNAT row:\n%s", text(r))
	}
	t.Logf("\n%s", text(r))
}
