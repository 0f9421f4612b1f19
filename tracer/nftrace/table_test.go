package nftrace

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

func nft(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nft not installed (scripts/install-deps.sh installs nftables)")
		}
		t.Skip("SKIP: nft not installed")
	}
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v: %s", args, err, out)
	}
	return string(out)
}

// The tables hold what each mode marks, follow the selection's addresses
// and the probes, and vanish with Close. The addresses are documentation
// ranges no packet is sent to.
func TestTablesFollowSelectionAndVanish(t *testing.T) {
	privtest.RequireRoot(t)
	if _, v, err := kernel.Release(); err == nil && !v.AtLeast(5, 12) {
		t.Skipf("SKIP: Linux %s has no owned tables (TestOpenRefusedWithoutOwnerFlag covers it)", v)
	}
	name := fmt.Sprintf("%s_%d", TablePrefix, os.Getpid())
	tr, err := Open(Options{Mode: ModeAddrs, Bridge: BridgeOn})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if got := tr.TableNames(); len(got) != 2 || got[0] != "inet "+name || got[1] != "bridge "+name {
		t.Fatalf("tables %q", got)
	}
	a4, b4, a6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("192.0.2.8"), netip.MustParseAddr("2001:db8::7")
	if err := tr.SetAddrs([]netip.Addr{a4, b4, a6}); err != nil {
		t.Fatal(err)
	}
	if err := tr.SetAddrs([]netip.Addr{a4, a6}); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"inet", "bridge"} {
		out := nft(t, "list", "table", fam, name)
		for _, want := range []string{"flags owner", "elements = { 192.0.2.7 }", "elements = { 2001:db8::7 }",
			"hook prerouting priority -2147483648; policy accept;", "hook output priority -2147483648; policy accept;",
			"ip saddr @sel4 meta nftrace set 1", "ip6 daddr @sel6 meta nftrace set 1"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s table lacks %q:\n%s", fam, want, out)
			}
		}
		if strings.Contains(out, "192.0.2.8") || strings.Contains(out, " drop") || strings.Contains(out, "accept\n") {
			t.Errorf("%s table holds a removed address or a verdict:\n%s", fam, out)
		}
	}
	unmark, err := tr.Probe(ProbeMatch{Src: a4, Dst: b4, Proto: "udp", Port: 33434})
	if err != nil {
		t.Fatal(err)
	}
	probe := "ip saddr 192.0.2.7 ip daddr 192.0.2.8 ip protocol udp udp dport 33434 meta nftrace set 1"
	if out := nft(t, "list", "table", "inet", name); strings.Count(out, probe) != 2 {
		t.Errorf("probe rule not in both chains:\n%s", out)
	}
	unmark()
	if out := nft(t, "list", "table", "inet", name); strings.Contains(out, "udp dport") {
		t.Errorf("probe rule left after unmark:\n%s", out)
	}
	tr.Close()
	if out := nft(t, "list", "tables"); strings.Contains(out, name) {
		t.Errorf("tables left after Close:\n%s", out)
	}
}

// Before Linux 5.12 the kernel refuses the owner flag: Open says so, and
// leaves no table that would outlive hoptrace.
func TestOpenRefusedWithoutOwnerFlag(t *testing.T) {
	privtest.RequireRoot(t)
	_, v, err := kernel.Release()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Open(Options{Mode: ModeAddrs})
	if v.AtLeast(5, 12) {
		if err != nil {
			t.Fatalf("Linux %s: %v", v, err)
		}
		tr.Close()
		t.Skipf("SKIP: Linux %s has owned tables", v)
	}
	if err == nil {
		tr.Close()
		t.Fatalf("Linux %s accepted an owned table", v)
	}
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "5.12") {
		t.Errorf("error %q, want ErrUnavailable naming 5.12", err)
	}
	if out := nft(t, "list", "tables"); strings.Contains(out, fmt.Sprintf("%s_%d", TablePrefix, os.Getpid())) {
		t.Errorf("a table was left:\n%s", out)
	}
}
