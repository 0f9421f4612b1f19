package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/verify"
)

// Rule naming: the tests add drop rules only for addresses of containers
// they created, in Docker's DOCKER-USER chain (inserted and deleted by
// exact spec) or in tables of their own, and remove them however the test
// ends.

func requireNft(t *testing.T) {
	t.Helper()
	testdocker.RequireDocker(t)
	for _, tool := range []string{"nft", "iptables", "iptables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: scripts/install-deps.sh installs nftables and iptables", tool)
			}
			t.Skipf("SKIP: %s not installed", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dockerUserDrop inserts `-s src -d dst -p icmp -j DROP` at the head of
// DOCKER-USER and deletes exactly that rule when the test ends.
func dockerUserDrop(t *testing.T, src, dst string) string {
	t.Helper()
	spec := []string{"-s", src + "/32", "-d", dst + "/32", "-p", "icmp", "-j", "DROP"}
	run(t, "iptables", append([]string{"-I", "DOCKER-USER"}, spec...)...)
	t.Cleanup(func() { exec.Command("iptables", append([]string{"-D", "DOCKER-USER"}, spec...)...).Run() })
	return "-A DOCKER-USER " + strings.Join(spec, " ")
}

// ownTable loads an nft script creating table inet NAME (NAME random) and
// deletes the table when the test ends. body is the table's content.
func ownTable(t *testing.T, body string) string {
	t.Helper()
	name := strings.ReplaceAll(testdocker.UniqueName("htest"), "-", "_")
	script := fmt.Sprintf("table inet %s {\n%s\n}\n", name, body)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", name).Run() })
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, script)
	}
	return name
}

var handleRe = regexp.MustCompile(`# handle (\d+)$`)

// ownTableRe finds a table of hoptrace's own (hoptrace_PID).
var ownTableRe = regexp.MustCompile(`table (inet|bridge) hoptrace_(\d+) `)

// orphanTables are the hoptrace tables in an nft listing whose process is
// gone: left behind. A table of a hoptrace still running (another test's,
// another user's on this machine) is that process's own.
func orphanTables(listing string) []string {
	var out []string
	for _, m := range ownTableRe.FindAllStringSubmatch(listing, -1) {
		if _, err := os.Stat("/proc/" + m[2]); err != nil {
			out = append(out, strings.TrimSpace(m[0]))
		}
	}
	return out
}

// ruleHandle finds the handle of the one rule of the chain whose nft text
// contains every part.
func ruleHandle(t *testing.T, family, table, chain string, parts ...string) uint64 {
	t.Helper()
	out := run(t, "nft", "-a", "list", "chain", family, table, chain)
	var found []uint64
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		m := handleRe.FindStringSubmatch(l)
		if m == nil || strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "table ") {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			h, _ := strconv.ParseUint(m[1], 10, 64)
			found = append(found, h)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d rules in %s %s %s contain %q:\n%s", len(found), family, table, chain, parts, out)
	}
	return found[0]
}

// hoptraceTables lists the tables hoptrace process pid owns.
func hoptraceTables(t *testing.T, pid int) []string {
	t.Helper()
	var ts []string
	for _, l := range strings.Split(run(t, "nft", "list", "tables"), "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), fmt.Sprintf(" hoptrace_%d", pid)) {
			ts = append(ts, strings.TrimSpace(l))
		}
	}
	return ts
}

func verifyJSON(t *testing.T, wantCode int, args ...string) verify.Report {
	t.Helper()
	res := runCLI(t, append([]string{"verify", "-o", "json"}, args...)...)
	if res.code != wantCode {
		t.Fatalf("verify %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, res.code, wantCode, res.stdout, res.stderr)
	}
	var r verify.Report
	if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
		t.Fatalf("verify JSON: %v: %s", err, res.stdout)
	}
	return r
}

// checkRule compares a named rule with the rule expected.
func checkRule(t *testing.T, what string, got *path.Rule, want path.Rule) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no rule named, want %+v", what, want)
	}
	if got.Family != want.Family || got.Table != want.Table || got.Chain != want.Chain || got.Handle != want.Handle ||
		got.Verdict != "drop" || got.Policy != want.Policy || (want.Iptables != "" && got.Iptables != want.Iptables) {
		t.Errorf("%s: rule %+v, want %+v", what, *got, want)
	}
	if !want.Policy && !strings.HasSuffix(got.Text, "drop") {
		t.Errorf("%s: rule text %q does not end with the verdict", what, got.Text)
	}
}

// traceRules runs `trace --rules` on the container while fn sends
// traffic, and returns the paths.
func traceRules(t *testing.T, container string, fn func()) []path.Path {
	t.Helper()
	r := startCLI(t, "trace", "--rules", "--container", container, "--output", "json")
	waitAttached(t, r)
	if !strings.Contains(r.stderrText(), "naming netfilter rules: table inet hoptrace_") {
		t.Fatalf("trace --rules did not say it added its table: %s", r.stderrText())
	}
	if got := hoptraceTables(t, r.cmd.Process.Pid); len(got) != 1 {
		t.Fatalf("hoptrace's tables while tracing: %q, want one", got)
	}
	fn()
	time.Sleep(800 * time.Millisecond)
	pid := r.cmd.Process.Pid
	paths := stopJSON(t, r)
	if got := hoptraceTables(t, pid); len(got) != 0 {
		t.Errorf("tables left after the trace: %q", got)
	}
	return paths
}

func echoRequest(paths []path.Path, src, dst string) (path.Path, bool) {
	return findPath(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Src == src && p.Dst == dst && strings.Contains(p.Summary, "echo request")
	})
}

// A DOCKER-USER rule dropping ICMP between two containers on docker0 is
// named by verify and by trace --rules, with its handle and its iptables form.
func TestRulesDockerUserDrop(t *testing.T) {
	requireNft(t)
	a := box(t, testdocker.Run(t, "rules-a"), "")
	b := box(t, testdocker.Run(t, "rules-b"), "")
	ipt := dockerUserDrop(t, a.ip, b.ip)
	want := path.Rule{Family: "ip", Table: "filter", Chain: "DOCKER-USER", Iptables: ipt,
		Handle: ruleHandle(t, "ip", "filter", "DOCKER-USER", "ip saddr "+a.ip+" ", "ip daddr "+b.ip+" ", "drop")}

	r := verifyJSON(t, exitFail, a.name, "--to", b.name, "--count", "1")
	if r.Failure == nil {
		t.Fatalf("verify passed through a drop rule: %s", r.Summary)
	}
	checkRule(t, "verify failure", r.Failure.Rule, want)
	if !strings.Contains(r.Summary, fmt.Sprintf("dropped by ip filter DOCKER-USER handle %d: ", want.Handle)) || !strings.Contains(r.Summary, "(iptables: "+ipt+")") {
		t.Errorf("verify summary does not name the rule: %s", r.Summary)
	}
	if len(r.Probes) != 1 || r.Probes[0].Path == nil {
		t.Fatalf("probe path missing: %+v", r.Probes)
	}
	checkRule(t, "probe path", r.Probes[0].Path.Rule, want)

	paths := traceRules(t, a.name, func() {
		exec.Command("docker", "exec", a.name, "ping", "-c", "1", "-W", "1", b.ip).Run()
		testdocker.Exec(t, a.name, "ping", "-c", "1", "-W", "2", a.gateway)
	})
	req, ok := echoRequest(paths, a.ip, b.ip)
	if !ok {
		t.Fatalf("no echo request %s > %s among %d paths", a.ip, b.ip, len(paths))
	}
	if req.Verdict != path.Dropped || req.DropReason != "NETFILTER_DROP" {
		t.Fatalf("echo request: %s (%s)", req.Verdict, req.End)
	}
	checkRule(t, "trace", req.Rule, want)
	if !strings.Contains(req.End, fmt.Sprintf("dropped by ip filter DOCKER-USER handle %d: ", want.Handle)) {
		t.Errorf("path end does not name the rule: %s", req.End)
	}
	gw, ok := echoRequest(paths, a.ip, a.gateway)
	if !ok || gw.Verdict != path.Delivered || gw.Rule != nil {
		t.Errorf("echo request to the gateway: found %v, %s, rule %+v (a delivered packet names no rule)", ok, gw.Verdict, gw.Rule)
	}
}

// A host INPUT drop of ICMP to the gateway of a bridge the test created,
// in a table of the test's own: verify's path passes, its delivery is the
// drop, and the rule is named.
func TestRulesHostInputDrop(t *testing.T) {
	requireNft(t)
	net, _ := testdocker.Network(t, "rules-in")
	a := box(t, testdocker.Run(t, "rules-in", "--network", net), net)
	table := ownTable(t, fmt.Sprintf(`chain input {
	type filter hook input priority 0; policy accept;
	ip saddr %s ip daddr %s icmp type echo-request drop
}`, a.ip, a.gateway))
	want := path.Rule{Family: "inet", Table: table, Chain: "input", Handle: ruleHandle(t, "inet", table, "input", "drop")}

	r := verifyJSON(t, 0, a.name, "--count", "1")
	if r.Verdict != verify.Pass || r.Delivery == nil || r.Delivery.Outcome != verify.OutcomeDropped {
		t.Fatalf("verify: %s, delivery %+v", r.Summary, r.Delivery)
	}
	checkRule(t, "delivery", r.Delivery.Rule, want)
	if r.Delivery.Rule != nil && r.Delivery.Rule.Iptables != "" {
		t.Errorf("a rule of an nft table has an iptables form: %q", r.Delivery.Rule.Iptables)
	}
	if !strings.Contains(r.Delivery.Detail, fmt.Sprintf("dropped by inet %s input handle %d", table, want.Handle)) {
		t.Errorf("delivery detail does not name the rule: %s", r.Delivery.Detail)
	}
}

// Between two user-defined networks Docker's isolation rule drops the
// packet, and trace --rules names it.
func TestRulesDockerIsolation(t *testing.T) {
	requireNft(t)
	n1, _ := testdocker.Network(t, "rules-iso")
	n2, id2 := testdocker.Network(t, "rules-iso")
	a := box(t, testdocker.Run(t, "rules-iso", "--network", n1), n1)
	b := box(t, testdocker.Run(t, "rules-iso", "--network", n2), n2)
	br2 := "br-" + id2[:12]
	want := path.Rule{Family: "ip", Table: "filter", Chain: "DOCKER-ISOLATION-STAGE-2", Iptables: "-A DOCKER-ISOLATION-STAGE-2 -o " + br2 + " -j DROP",
		Handle: ruleHandle(t, "ip", "filter", "DOCKER-ISOLATION-STAGE-2", `oifname "`+br2+`"`, "drop")}
	paths := traceRules(t, a.name, func() {
		exec.Command("docker", "exec", a.name, "ping", "-c", "1", "-W", "1", b.ip).Run()
	})
	req, ok := echoRequest(paths, a.ip, b.ip)
	if !ok {
		t.Fatalf("no echo request %s > %s among %d paths", a.ip, b.ip, len(paths))
	}
	checkRule(t, "isolation", req.Rule, want)
}

// On a network with enable_icc=false Docker's FORWARD rule drops traffic
// between its containers; verify names it.
func TestRulesICCDisabled(t *testing.T) {
	requireNft(t)
	net, id := testdocker.Network(t, "rules-icc", "-o", "com.docker.network.bridge.enable_icc=false")
	a := box(t, testdocker.Run(t, "rules-icc", "--network", net), net)
	b := box(t, testdocker.Run(t, "rules-icc", "--network", net), net)
	br := "br-" + id[:12]
	want := path.Rule{Family: "ip", Table: "filter", Chain: "FORWARD", Iptables: "-A FORWARD -i " + br + " -o " + br + " -j DROP",
		Handle: ruleHandle(t, "ip", "filter", "FORWARD", `iifname "`+br+`" oifname "`+br+`"`, "drop")}
	r := verifyJSON(t, exitFail, a.name, "--to", b.name, "--count", "1")
	if r.Failure == nil {
		t.Fatalf("verify: %s", r.Summary)
	}
	checkRule(t, "icc", r.Failure.Rule, want)
}

// A chain's policy drop is named as such. The test's own forward chain
// accepts everything but IPv4 from one of its containers to the other,
// so the policy applies to the test's packets alone.
func TestRulesChainPolicyDrop(t *testing.T) {
	requireNft(t)
	net, _ := testdocker.Network(t, "rules-pol")
	a := box(t, testdocker.Run(t, "rules-pol", "--network", net), net)
	b := box(t, testdocker.Run(t, "rules-pol", "--network", net), net)
	table := ownTable(t, fmt.Sprintf(`chain forward {
	type filter hook forward priority -10; policy drop;
	meta nfproto != ipv4 accept
	ip saddr != %s accept
	ip daddr != %s accept
}`, a.ip, b.ip))
	r := verifyJSON(t, exitFail, a.name, "--to", b.name, "--count", "1")
	if r.Failure == nil {
		t.Fatalf("verify: %s", r.Summary)
	}
	checkRule(t, "policy", r.Failure.Rule, path.Rule{Family: "inet", Table: table, Chain: "forward", Policy: true})
	if !strings.Contains(r.Summary, "policy drop of inet "+table+" forward") {
		t.Errorf("summary does not name the policy: %s", r.Summary)
	}
}

// With rules on and nothing dropped, no path names a rule.
func TestRulesNoDropNoRule(t *testing.T) {
	requireNft(t)
	net, _ := testdocker.Network(t, "rules-ok")
	a := box(t, testdocker.Run(t, "rules-ok", "--network", net), net)
	b := box(t, testdocker.Run(t, "rules-ok", "--network", net), net)
	paths := traceRules(t, a.name, func() {
		testdocker.Exec(t, a.name, "ping", "-c", "2", "-W", "2", b.ip)
		testdocker.Exec(t, a.name, "ping", "-c", "1", "-W", "2", a.gateway)
	})
	if _, ok := echoRequest(paths, a.ip, b.ip); !ok {
		t.Fatalf("no echo request %s > %s among %d paths", a.ip, b.ip, len(paths))
	}
	for _, p := range paths {
		if p.Rule != nil {
			t.Errorf("%s (%s) names a rule: %+v", p.Summary, p.Verdict, *p.Rule)
		}
	}
}

// kill -9 of trace --rules leaves no hoptrace table: the kernel removes
// the owned table with its socket.
func TestRulesTraceSIGKILLLeavesNoTable(t *testing.T) {
	requireNft(t)
	c := testdocker.Run(t, "rules-kill")
	r := startCLI(t, "trace", "--rules", "--container", c.Name)
	waitAttached(t, r)
	pid := r.cmd.Process.Pid
	if got := hoptraceTables(t, pid); len(got) != 1 {
		t.Fatalf("tables of hoptrace while tracing: %q, want one", got)
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	r.cmd.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for len(hoptraceTables(t, pid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL, nft list tables still shows %q", hoptraceTables(t, pid))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// verify --no-rules leaves the ruleset byte-identical (stateless listing:
// counters change with any traffic); so does verify with rules, once done.
func TestRulesVerifyNoRulesLeavesRuleset(t *testing.T) {
	requireNft(t)
	net, _ := testdocker.Network(t, "rules-same")
	a := box(t, testdocker.Run(t, "rules-same", "--network", net), net)
	for _, args := range [][]string{{"--no-rules"}, nil} {
		// Other work on this machine may change the ruleset meanwhile
		// (Docker networks come and go): a run counts when nothing else
		// did, and no run may differ in anything of hoptrace's.
		same := false
		var before, after string
		for try := 0; try < 6 && !same; try++ {
			before = run(t, "nft", "-s", "list", "ruleset")
			r := verifyJSON(t, 0, append([]string{a.name, "--count", "1"}, args...)...)
			if r.Verdict != verify.Pass {
				t.Fatalf("verify %v: %s", args, r.Summary)
			}
			after = run(t, "nft", "-s", "list", "ruleset")
			if left := orphanTables(after); len(left) > 0 {
				t.Fatalf("verify %v left %q:\n%s", args, left, after)
			}
			same = before == after
			// a table of another running hoptrace appearing or going
			// meanwhile is other work on this machine: try again
			if d := lineDiff(before, after); !ownTableRe.MatchString(d) && strings.Contains(d, "nftrace set") {
				t.Fatalf("verify %v changed the ruleset:\n%s", args, d)
			}
		}
		if !same {
			t.Errorf("verify %v changed the ruleset in 6 tries; last try:\n%s", args, lineDiff(before, after))
		}
	}
}

// --rules names rules at the end of paths; with --events there are none.
func TestRulesUsage(t *testing.T) {
	res := runCLI(t, "trace", "--rules", "--events")
	if res.code != exitUsage || !strings.Contains(res.stderr, "--rules") || strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
		t.Errorf("trace --rules --events: exit %d, stderr %q; want a one-line usage error", res.code, res.stderr)
	}
}

// lineDiff lists the lines only one of a and b has.
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var d []string
	for l, n := range count {
		switch {
		case n > 0:
			d = append(d, "- "+l)
		case n < 0:
			d = append(d, "+ "+l)
		}
	}
	return strings.Join(d, "\n")
}

// The address set follows the selection: a container named before it
// starts gets its address into hoptrace's set, and its drop is named.
func TestRulesContainerStartedDuringTrace(t *testing.T) {
	requireNft(t)
	b := box(t, testdocker.Run(t, "rules-late-b"), "")
	name := testdocker.UniqueName("rules-late")
	r := startCLI(t, "trace", "--rules", "--container", name, "--output", "json", "--proto", "icmp")
	waitAttached(t, r)
	t.Cleanup(func() { testdocker.DockerErr("rm", "-f", name) })
	id := testdocker.Docker(t, "run", "-d", "--name", name, "--label", "hoptrace-test=1", testdocker.Image, "sleep", "3600")
	a := box(t, testdocker.Container{Name: name, ID: id}, "")
	table := fmt.Sprintf("hoptrace_%d", r.cmd.Process.Pid)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(run(t, "nft", "list", "set", "inet", table, "sel4"), a.ip) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's address %s never reached hoptrace's set:\n%s", name, a.ip, run(t, "nft", "list", "table", "inet", table))
		}
		time.Sleep(50 * time.Millisecond)
	}
	ipt := dockerUserDrop(t, a.ip, b.ip)
	exec.Command("docker", "exec", a.name, "ping", "-c", "1", "-W", "1", b.ip).Run()
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	req, ok := echoRequest(paths, a.ip, b.ip)
	if !ok {
		t.Fatalf("no echo request %s > %s among %d paths", a.ip, b.ip, len(paths))
	}
	checkRule(t, "late container", req.Rule, path.Rule{Family: "ip", Table: "filter", Chain: "DOCKER-USER", Iptables: ipt,
		Handle: ruleHandle(t, "ip", "filter", "DOCKER-USER", "ip saddr "+a.ip+" ", "ip daddr "+b.ip+" ", "drop")})
}
