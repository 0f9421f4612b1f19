package kernel

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The feature probes must take the branch that is right for the kernel the
// test runs on. Expectations come from the kernel version, from this table
// of kernels hoptrace is tested on (make test-kernels), and for unknown
// kernels from the kernel's own configuration.

type kernelExpect struct {
	pattern string // matched against uname -r
	what    string
	kprobes bool
	fentry  bool
	// fentryEPERM: fentry is refused with EPERM even to root.
	fentryEPERM bool
}

var knownKernels = []kernelExpect{
	{`^5\.10\.0-\d+-amd64$`, "Debian 11 kernel 5.10", true, true, false},
	{`^6\.1\.0-\d+-amd64$`, "Debian 12 kernel 6.1", true, true, false},
	{`^6\.12\.\d+\+deb12-amd64$`, "Debian 12 backports kernel 6.12", true, true, false},
	// The development hosts' 6.18 kernel: CONFIG_KPROBES is not set (no
	// kprobe PMU, no kprobe_events) and fentry programs fail with EPERM.
	{`-fc-`, "6.18 Firecracker host kernel (kprobes compiled out, fentry refused)", false, false, true},
}

func requirePrivileged(t *testing.T) {
	t.Helper()
	if os.Getenv("HOPTRACE_UNPRIVILEGED") != "" {
		t.Skip("HOPTRACE_UNPRIVILEGED is set")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func release(t *testing.T) (string, Version) {
	t.Helper()
	rel, v, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s (version %s)", rel, v)
	return rel, v
}

func known(rel string) (kernelExpect, bool) {
	for _, k := range knownKernels {
		if regexp.MustCompile(k.pattern).MatchString(rel) {
			return k, true
		}
	}
	return kernelExpect{}, false
}

// kernelConfig returns the running kernel's build configuration and where
// it came from: /proc/config.gz, /boot/config-<release>, or, in the test VMs,
// the unpacked kernel package (tools/vmtest/fetch-kernel.sh); nil if none.
func kernelConfig(rel string) (map[string]string, string) {
	var r io.Reader
	var src string
	kernels := os.Getenv("VMTEST_KERNELS")
	if kernels == "" {
		kernels = "/var/tmp/vmtest/kernels"
	}
	if b, err := os.ReadFile("/proc/config.gz"); err == nil {
		if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
			r, src = zr, "/proc/config.gz"
		}
	}
	for _, p := range []string{"/boot/config-" + rel, kernels + "/" + rel + "/boot/config-" + rel} {
		if r != nil {
			break
		}
		if b, err := os.ReadFile(p); err == nil {
			r, src = bytes.NewReader(b), p
		}
	}
	if r == nil {
		return nil, ""
	}
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(k, "#") {
			cfg[k] = v
		}
	}
	return cfg, src
}

func expectProbe(t *testing.T, p Probe, want bool, why string) {
	t.Helper()
	if p.Available != want {
		t.Errorf("%s: available=%v, want %v (%s); detail: %s; err: %v", p.Name, p.Available, want, why, p.Detail, p.Err)
		return
	}
	if p.Detail == "" {
		t.Errorf("%s: no explanation", p.Name)
	}
	t.Logf("%s: available=%v as expected (%s): %s", p.Name, p.Available, why, p.Detail)
}

func TestParseRelease(t *testing.T) {
	for rel, want := range map[string]Version{
		"5.10.0-30-amd64":      {5, 10, 0},
		"6.1.0-56-amd64":       {6, 1, 0},
		"6.12.117+deb12-amd64": {6, 12, 117},
		"6.18.44-fc-v657":      {6, 18, 44},
		"5.15.0":               {5, 15, 0},
		"6.6":                  {6, 6, 0},
		"6.9.0-rc3":            {6, 9, 0},
	} {
		got, err := ParseRelease(rel)
		if err != nil || got != want {
			t.Errorf("ParseRelease(%q) = %v, %v; want %v", rel, got, err, want)
		}
	}
	for _, rel := range []string{"", "abc", "6"} {
		if _, err := ParseRelease(rel); err == nil {
			t.Errorf("ParseRelease(%q): no error", rel)
		}
	}
	v := Version{6, 3, 0}
	if !v.AtLeast(6, 3) || !v.AtLeast(5, 17) || v.AtLeast(6, 4) || v.AtLeast(7, 0) {
		t.Errorf("AtLeast wrong for %v", v)
	}
}

// Features every supported kernel (5.10+ with BTF) has, and, row by row
// from the Features table, the ones that depend on the version.
func TestVersionedFeatures(t *testing.T) {
	requirePrivileged(t)
	_, v := release(t)
	expectProbe(t, ProbeBTF(), true, "every supported kernel is built with CONFIG_DEBUG_INFO_BTF")
	expectProbe(t, ProbeClsact(), true, "sched_cls programs exist on every supported kernel")
	for _, f := range Features {
		p := f.Probe()
		if p.Name != f.Name {
			t.Errorf("feature %s: its probe is named %s", f.Name, p.Name)
		}
		expectProbe(t, p, f.Has(v), fmt.Sprintf("%s iff Linux >= %d.%d; without: %s", f.Name, f.Since.Major, f.Since.Minor, f.Without))
	}
}

// The table is ordered and every row says what happens without the feature.
func TestFeatureTable(t *testing.T) {
	seen := map[string]bool{}
	for i, f := range Features {
		if f.Name == "" || f.Probe == nil || f.Without == "" || seen[f.Name] {
			t.Errorf("row %d: %+v", i, f)
		}
		seen[f.Name] = true
		if i > 0 && !Features[i-1].Has(f.Since) { // f.Since older than the row before
			t.Errorf("row %d (%s, %v) comes before older row %d", i, f.Name, f.Since, i-1)
		}
	}
	v510 := Version{5, 10, 0}
	for _, name := range []string{"ringbuf"} {
		if f := feature(t, name); !f.Has(v510) {
			t.Errorf("%s: 5.10 should have it", name)
		}
	}
	for _, name := range []string{"atomic_fetch", "kfree_skb_reason", "drop_reasons", "consume_skb_location", "tcx"} {
		if f := feature(t, name); f.Has(v510) {
			t.Errorf("%s: 5.10 should lack it", name)
		}
	}
}

func feature(t *testing.T, name string) Feature {
	t.Helper()
	for _, f := range Features {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("no feature %s", name)
	return Feature{}
}

func TestTracepoints(t *testing.T) {
	requirePrivileged(t)
	release(t)
	for _, tp := range []string{
		"net_dev_queue", "net_dev_start_xmit", "net_dev_xmit", "netif_rx",
		"napi_gro_receive_entry", "netif_receive_skb", "kfree_skb", "consume_skb",
		"skb_copy_datagram_iovec",
	} {
		expectProbe(t, ProbeTracepoint(tp), true, "hoptrace's tracepoints exist on every supported kernel")
	}
	p := ProbeTracepoint("hoptrace_no_such_tracepoint")
	if p.Available || p.Denied || !strings.Contains(p.Detail, "no tracepoint") {
		t.Errorf("unknown tracepoint: %+v", p)
	}
}

func TestFunctionHooks(t *testing.T) {
	requirePrivileged(t)
	rel, _ := release(t)
	k, isKnown := known(rel)
	cfg, cfgSrc := kernelConfig(rel)
	if cfg != nil {
		t.Logf("kernel config from %s: CONFIG_KPROBES=%q CONFIG_KPROBE_EVENTS=%q", cfgSrc, cfg["CONFIG_KPROBES"], cfg["CONFIG_KPROBE_EVENTS"])
	}
	var wantKprobes bool
	var why string
	switch {
	case isKnown:
		wantKprobes, why = k.kprobes, k.what
		if cfg != nil && (cfg["CONFIG_KPROBE_EVENTS"] == "y") != k.kprobes {
			t.Errorf("table says kprobes=%v for %s but %s has CONFIG_KPROBE_EVENTS=%q", k.kprobes, rel, cfgSrc, cfg["CONFIG_KPROBE_EVENTS"])
		}
	case cfg != nil:
		wantKprobes, why = cfg["CONFIG_KPROBE_EVENTS"] == "y", cfgSrc+": CONFIG_KPROBE_EVENTS="+cfg["CONFIG_KPROBE_EVENTS"]
	default:
		_, err := os.Stat(KprobePMUPath)
		wantKprobes, why = err == nil, "unknown kernel without a config: kprobe PMU present="+boolWord(err == nil)
	}
	if !wantKprobes {
		// Stated explicitly: a kernel without kprobes has neither the PMU
		// nor kprobe_events, and the probe must say it was compiled out.
		if _, err := os.Stat(KprobePMUPath); err == nil {
			t.Errorf("expected no kprobes on %s, but %s exists", rel, KprobePMUPath)
		}
	}
	p := ProbeKprobes()
	expectProbe(t, p, wantKprobes, why)
	if !wantKprobes && !strings.Contains(p.Detail, "without kprobes") {
		t.Errorf("kprobe detail should say the kernel has no kprobes: %s", p.Detail)
	}

	f := ProbeFentry()
	if !isKnown {
		t.Logf("fentry on unknown kernel %s: available=%v: %s", rel, f.Available, f.Detail)
		return
	}
	expectProbe(t, f, k.fentry, k.what)
	if k.fentryEPERM {
		if !errors.Is(f.Err, unix.EPERM) || f.Denied || !strings.Contains(f.Detail, "EPERM") {
			t.Errorf("fentry on %s: want a refusal with EPERM despite privileges, got denied=%v err=%v detail=%q", rel, f.Denied, f.Err, f.Detail)
		}
	}
}

func TestFilesystemsAndPrivileges(t *testing.T) {
	requirePrivileged(t)
	release(t)
	mounts := mountTypes(t)
	expectProbe(t, ProbeBPFFS(), mounts[BPFFSPath] == "bpf", "bpffs per /proc/self/mountinfo")
	wantTrace := false
	for _, p := range TracefsPaths {
		wantTrace = wantTrace || mounts[p] == "tracefs"
	}
	expectProbe(t, ProbeTracefs(), wantTrace, "tracefs per /proc/self/mountinfo")
	if os.Getenv("HOPTRACE_VM") != "" && (mounts[BPFFSPath] != "bpf" || mounts["/sys/kernel/tracing"] != "tracefs") {
		t.Errorf("the VM runner mounts bpffs and tracefs: %v", mounts)
	}

	priv := ProbePrivileges()
	if priv.Err != nil || !priv.Root {
		t.Fatalf("privileges: %+v", priv)
	}
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"} {
		if !priv.Caps[c] {
			t.Errorf("root test process lacks %s: %v", c, priv.Caps)
		}
	}
	expectProbe(t, priv.Probe(), true, "root has every capability")
	noCaps := Privileges{Caps: map[string]bool{"CAP_NET_ADMIN": true}}
	if p := noCaps.Probe(); p.Available || !strings.Contains(p.Detail, "lacks") || !strings.Contains(p.Detail, "CAP_BPF (hoptrace needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN)") {
		t.Errorf("unprivileged summary: %+v", p)
	}
}

// One rule: root, or all four capabilities; CAP_BPF and CAP_PERFMON alone
// (enough to load programs) are not enough to enter namespaces.
func TestPrivilegeRule(t *testing.T) {
	all := map[string]bool{"CAP_BPF": true, "CAP_PERFMON": true, "CAP_NET_ADMIN": true, "CAP_SYS_ADMIN": true}
	// Before 5.11 maps are charged to RLIMIT_MEMLOCK: CAP_SYS_RESOURCE too.
	extra := ""
	if MemlockCharged() {
		all["CAP_SYS_RESOURCE"] = true
		extra = " CAP_SYS_RESOURCE"
		t.Logf("this kernel charges BPF maps to RLIMIT_MEMLOCK: CAP_SYS_RESOURCE is required too")
	}
	for _, tc := range []struct {
		p    Privileges
		want bool
		lack string
	}{
		{Privileges{Root: true, Caps: map[string]bool{}}, true, "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN" + extra},
		{Privileges{Caps: all}, true, ""},
		{Privileges{Caps: map[string]bool{"CAP_BPF": true, "CAP_PERFMON": true}}, false, "CAP_NET_ADMIN CAP_SYS_ADMIN" + extra},
		{Privileges{Caps: map[string]bool{"CAP_SYS_ADMIN": true}}, false, "CAP_BPF CAP_PERFMON CAP_NET_ADMIN" + extra},
	} {
		if got := tc.p.CanTrace(); got != tc.want {
			t.Errorf("%+v: CanTrace = %v, want %v", tc.p, got, tc.want)
		}
		if got := strings.Join(tc.p.Lacking(), " "); got != tc.lack {
			t.Errorf("%+v: Lacking = %q, want %q", tc.p, got, tc.lack)
		}
	}
}

func TestDockerSocket(t *testing.T) {
	t.Setenv("DOCKER_HOST", "")
	old := DockerSocketPath
	t.Cleanup(func() { DockerSocketPath = old })
	DockerSocketPath = t.TempDir() + "/docker.sock"
	p := ProbeDockerSocket()
	if p.Available || !strings.Contains(p.Detail, "no Docker socket") {
		t.Errorf("missing socket: %+v", p)
	}
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/d.sock")
	if got := DockerSocket(); got != "/nonexistent/d.sock" {
		t.Errorf("DockerSocket with DOCKER_HOST: %s", got)
	}
	if os.Getenv("HOPTRACE_VM") != "" {
		// The VM sees the host's files but no daemon behind the socket.
		t.Setenv("DOCKER_HOST", "")
		DockerSocketPath = old
		expectProbe(t, ProbeDockerSocket(), false, "no dockerd inside the test VM")
	}
}

// No probe may leave a program (or, through it, a link) behind.
func TestProbesLeaveNothing(t *testing.T) {
	requirePrivileged(t)
	kpBefore := kprobeEvents()
	ProbeTracepoint("net_dev_queue")
	ProbeTracepoint("hoptrace_no_such_tracepoint")
	ProbeRingBuf()
	ProbeAtomicFetch()
	ProbeTCX()
	ProbeClsact()
	ProbeKprobes()
	ProbeFentry()
	deadline := time.Now().Add(5 * time.Second) // programs are freed asynchronously
	for {
		left := probePrograms(t)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe programs still loaded: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if after := kprobeEvents(); after != kpBefore {
		t.Errorf("kprobe_events changed:\nbefore: %q\nafter:  %q", kpBefore, after)
	}
}

func probePrograms(t *testing.T) []string {
	var names []string
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return names
		}
		if err != nil {
			t.Fatalf("iterate programs: %v", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // freed meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err == nil && strings.HasPrefix(info.Name, ProbeProgPrefix) {
			names = append(names, info.Name)
		}
	}
}

func kprobeEvents() string {
	for _, d := range TracefsPaths {
		if b, err := os.ReadFile(d + "/kprobe_events"); err == nil {
			return string(b)
		}
	}
	return ""
}

// mountTypes maps mount points to filesystem types from /proc/self/mountinfo.
func mountTypes(t *testing.T) map[string]string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 1 {
			m[f[4]] = g[0]
		}
	}
	return m
}

func boolWord(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
