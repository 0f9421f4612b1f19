package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// userNetwork creates a Docker network of the test's own with a container
// on it; traffic to addresses of its subnet stays on the test's bridge.
func userNetwork(t *testing.T) (dockerBox, string) {
	t.Helper()
	network, _ := testdocker.Network(t, "ht-drop")
	c := testdocker.Run(t, "ht-drop", "--network", network)
	return box(t, c, network), network
}

// unusedAddr is an address of b's /16 or /24 subnet nobody has: .250 of its
// last octet range, never given out by Docker this early.
func unusedAddr(t *testing.T, b dockerBox) string {
	t.Helper()
	a, err := netip.ParseAddr(b.ip)
	if err != nil {
		t.Fatal(err)
	}
	x := a.As4()
	x[3] = 250
	return netip.AddrFrom4(x).String()
}

func nsenterNft(t *testing.T, pid string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft not found: %v (scripts/install-deps.sh installs nftables)", err)
	}
	cmd := append([]string{"-t", pid, "-n", "nft"}, args...)
	if out, err := exec.Command("nsenter", cmd...).CombinedOutput(); err != nil {
		t.Fatalf("nsenter %s: %v: %s", strings.Join(cmd, " "), err, out)
	}
}

func earlyDrop(paths []path.Path, match func(path.Path) bool) (path.Path, bool) {
	return findPath(paths, func(p path.Path) bool { return len(p.Hops) == 0 && match(p) })
}

// A packet queued for a neighbour that never answers is dropped (3 s
// later) before it reaches any device: it still gets a path of its own.
func TestNeighbourFailureBeforeTheFirstHop(t *testing.T) {
	testdocker.RequireDocker(t)
	c, _ := userNetwork(t)
	dst := unusedAddr(t, c)
	r := startCLI(t, "trace", "--container", c.name, "--output", "json")
	waitAttached(t, r)
	testdocker.DockerErr("exec", c.name, "ping", "-c", "1", "-W", "1", dst) // no reply: exits 1
	time.Sleep(4 * time.Second)
	paths := stopJSON(t, r)
	p, ok := earlyDrop(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Src == c.ip && p.Dst == dst
	})
	if !ok {
		for _, p := range paths {
			t.Logf("%s => %s: %s", p.Summary, p.Verdict, p.End)
		}
		t.Fatalf("no path for the echo request to %s dropped in the neighbour queue", dst)
	}
	if p.Verdict != path.Dropped || p.DropReason != "NEIGH_FAILED" ||
		!strings.HasPrefix(p.End, "dropped before its first hop: in "+c.name+" eth0: NEIGH_FAILED") {
		t.Errorf("verdict %s reason %s end %q", p.Verdict, p.DropReason, p.End)
	}
}

// A drop in the container's own OUTPUT chain (an nft table of the test's,
// inside the container's namespace) is shown, before any device.
func TestOutputDropInsideContainer(t *testing.T) {
	testdocker.RequireDocker(t)
	c, _ := userNetwork(t)
	pid := testdocker.String(testdocker.Inspect(t, c.name), "State", "Pid")
	table := "ht" + strings.ReplaceAll(testdocker.UniqueName("out")[4:], "-", "")
	nsenterNft(t, pid, "add", "table", "ip", table)
	nsenterNft(t, pid, "add", "chain", "ip", table, "out", "{ type filter hook output priority 0 ; }")
	nsenterNft(t, pid, "add", "rule", "ip", table, "out", "ip", "daddr", c.gateway, "icmp", "type", "echo-request", "drop")
	t.Cleanup(func() { exec.Command("nsenter", "-t", pid, "-n", "nft", "delete", "table", "ip", table).Run() })

	r := startCLI(t, "trace", "--container", c.name, "--output", "json")
	waitAttached(t, r)
	testdocker.DockerErr("exec", c.name, "ping", "-c", "1", "-W", "1", c.gateway) // EPERM
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	p, ok := earlyDrop(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Src == c.ip && p.Dst == c.gateway
	})
	if !ok {
		t.Fatalf("no path for the echo request dropped by OUTPUT in %s (%d paths)", c.name, len(paths))
	}
	if p.Verdict != path.Dropped || p.DropReason != "NETFILTER_DROP" || !strings.Contains(p.End, "before its first hop: in "+c.name) {
		t.Errorf("verdict %s reason %s end %q", p.Verdict, p.DropReason, p.End)
	}
}

// A FORWARD drop right after DNAT (a DOCKER-USER rule of the test's,
// exact spec, removed after): the client's SYN, selected by the published
// port from the client's eth0 on, ends dropped with the DNAT named.
func TestDockerUserDropAfterDNAT(t *testing.T) {
	testdocker.RequireDocker(t)
	out := testnet.NewOutside(t)
	web, port := webServer(t)
	rule := []string{"DOCKER-USER", "-s", out.Addr.Addr().String(), "-d", web.ip, "-p", "tcp", "--dport", "80", "-j", "DROP"}
	if b, err := exec.Command("iptables", append([]string{"-w", "-I"}, rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("iptables -I %v: %v: %s", rule, err, b)
	}
	t.Cleanup(func() { exec.Command("iptables", append([]string{"-w", "-D"}, rule...)...).Run() })

	r := startCLI(t, "trace", "--container", web.name, "--output", "json")
	waitAttached(t, r)
	if c, err := out.DialTCP(netip.AddrPortFrom(out.HostAddr.Addr(), uint16(port)), 500*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("connected through a DROP rule")
	}
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	syn, ok := findPath(paths, func(p path.Path) bool {
		return p.Proto == "TCP" && p.Src == out.Addr.Addr().String() && int(p.Dport) == port && strings.Contains(p.Summary, "[S]")
	})
	if !ok {
		t.Fatalf("no SYN to the published port %d among %d paths", port, len(paths))
	}
	if !hasHop(syn, out.Name+"/eth0/veth/egress") || !hasHop(syn, "host/"+out.HostVeth+"/veth/ingress") {
		t.Errorf("SYN not followed from the client's eth0: %s", hopNames(syn))
	}
	dnat := fmt.Sprintf("DNAT %s:%d -> %s:80", out.HostAddr.Addr(), port, web.ip)
	if syn.Verdict != path.Dropped || syn.DropReason != "NETFILTER_DROP" || !strings.Contains(syn.End, dnat) {
		t.Errorf("SYN: %s (%s) end %q, want dropped after %s", syn.Verdict, syn.DropReason, syn.End, dnat)
	}
}
