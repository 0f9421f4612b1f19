package kernel

// Feature probes: what this kernel, and this process, let hoptrace do. Each
// probe returns a Probe: whether the feature is there, and a sentence saying
// why. Probes that load BPF programs close everything they create before
// returning; none touches a network interface or leaves a kprobe behind.

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ProbeProgPrefix starts the name of every BPF program a probe loads, so a
// test can check that none is left behind.
const ProbeProgPrefix = "htprobe_"

// Paths the probes look at; variables so tests can point them elsewhere.
var (
	BTFPath          = "/sys/kernel/btf/vmlinux"
	BPFFSPath        = "/sys/fs/bpf"
	TracefsPaths     = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}
	KprobePMUPath    = "/sys/bus/event_source/devices/kprobe/type"
	DockerSocketPath = "/var/run/docker.sock"
)

// ProbeSymbol is the kernel function the kprobe and fentry probes attach to:
// exported (so never inlined away) and present in every supported kernel.
const ProbeSymbol = "consume_skb"

// Probe is the outcome of one feature probe.
type Probe struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	// Detail explains the result in plain words.
	Detail string `json:"detail"`
	// Err is what the kernel said when the feature is missing or could not
	// be probed; nil when available.
	Err error `json:"-"`
	// Denied is set when the probe could not decide because this process
	// lacks privileges (the feature may well exist).
	Denied bool `json:"denied,omitempty"`
}

func ok(name, detail string) Probe { return Probe{Name: name, Available: true, Detail: detail} }

func missing(name, detail string, err error) Probe {
	return Probe{Name: name, Detail: detail, Err: err}
}

// denied reports a probe the kernel refused because of privileges.
func denied(name, what string, err error) Probe {
	return Probe{Name: name, Detail: what + ": not permitted without privileges (run as root)", Err: err, Denied: true}
}

func isPerm(err error) bool { return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) }

// Version is a kernel version from its release string.
type Version struct{ Major, Minor, Patch int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// ParseRelease reads the version at the start of a release string such as
// "6.12.117+deb12-amd64" or "6.1.0-56-amd64".
func ParseRelease(release string) (Version, error) {
	end := strings.IndexFunc(release, func(r rune) bool { return r != '.' && (r < '0' || r > '9') })
	if end < 0 {
		end = len(release)
	}
	parts := strings.Split(strings.TrimSuffix(release[:end], "."), ".")
	if len(parts) < 2 {
		return Version{}, fmt.Errorf("kernel release %q: no version", release)
	}
	var n [3]int
	for i := 0; i < len(parts) && i < 3; i++ {
		v, err := strconv.Atoi(parts[i])
		if err != nil {
			return Version{}, fmt.Errorf("kernel release %q: %w", release, err)
		}
		n[i] = v
	}
	return Version{n[0], n[1], n[2]}, nil
}

// Release returns the running kernel's release (uname -r) and its version.
func Release() (string, Version, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", Version{}, fmt.Errorf("uname: %w", err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	v, err := ParseRelease(rel)
	return rel, v, err
}

// KernelBTF loads the running kernel's BTF (cached by cilium/ebpf).
func KernelBTF() (*btf.Spec, error) { return btf.LoadKernelSpec() }

// ProbeBTF checks that the kernel describes its own types in BTF, which
// tp_btf programs and CO-RE relocations need (CONFIG_DEBUG_INFO_BTF).
func ProbeBTF() Probe {
	const name = "btf"
	fi, err := os.Stat(BTFPath)
	if err != nil {
		return missing(name, fmt.Sprintf("%s missing: the kernel was built without CONFIG_DEBUG_INFO_BTF", BTFPath), err)
	}
	if _, err := KernelBTF(); err != nil {
		return missing(name, fmt.Sprintf("%s present but unreadable: %v", BTFPath, err), err)
	}
	return ok(name, fmt.Sprintf("%s (%.1f MiB)", BTFPath, float64(fi.Size())/(1<<20)))
}

// nopProgram returns "r0 = 0; exit".
func nopProgram() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
}

// ProbeTracepoint loads a no-op tp_btf program on the named tracepoint,
// attaches it, and detaches and unloads it again.
func ProbeTracepoint(tracepoint string) Probe {
	name := "tp_btf/" + tracepoint
	if spec, err := KernelBTF(); err == nil {
		var td *btf.Typedef
		if err := spec.TypeByName("btf_trace_"+tracepoint, &td); errors.Is(err, btf.ErrNotFound) {
			return missing(name, "this kernel has no tracepoint "+tracepoint, err)
		}
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         ProbeProgPrefix + "tp",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     tracepoint,
		License:      "GPL",
		Instructions: nopProgram(),
	})
	if err != nil {
		switch {
		case errors.Is(err, btf.ErrNotFound):
			return missing(name, "this kernel has no tracepoint "+tracepoint, err)
		case isPerm(err):
			return denied(name, "loading a tp_btf program", err)
		}
		return missing(name, "loading a tp_btf program failed: "+oneLine(err), err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		if isPerm(err) {
			return denied(name, "attaching a tp_btf program", err)
		}
		return missing(name, "attaching a tp_btf program failed: "+oneLine(err), err)
	}
	if err := l.Close(); err != nil {
		return missing(name, "detaching the probe program failed: "+err.Error(), err)
	}
	return ok(name, "a tp_btf program loads and attaches")
}

// ProbeRingBuf checks for BPF_MAP_TYPE_RINGBUF (5.8), hoptrace's event channel.
func ProbeRingBuf() Probe {
	const name = "ringbuf"
	err := features.HaveMapType(ebpf.RingBuf)
	switch {
	case err == nil:
		return ok(name, "BPF ring buffer maps are supported")
	case errors.Is(err, ebpf.ErrNotSupported):
		return missing(name, "no BPF ring buffer maps (needs Linux 5.8)", err)
	case isPerm(err):
		return denied(name, "creating a ring buffer map", err)
	}
	return missing(name, "ring buffer probe failed: "+oneLine(err), err)
}

// ProbeTCX checks for tcx, the link-based tc attachment of 6.6, without
// touching an interface: it asks to attach a no-op program to an ifindex
// that cannot exist, which a tcx kernel refuses with ENODEV and an older
// kernel with EINVAL.
func ProbeTCX() Probe {
	const name = "tcx"
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         ProbeProgPrefix + "tcx",
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: nopProgram(),
	})
	if err != nil {
		if isPerm(err) {
			// Without privileges the type information still tells.
			if btfHas("tcx_entry") {
				p := ok(name, "kernel BTF has struct tcx_entry (tcx, Linux 6.6+); not attach-tested: no privileges")
				return p
			}
			return denied(name, "loading a sched_cls program", err)
		}
		return missing(name, "loading a sched_cls program failed: "+oneLine(err), err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Program: prog, Attach: ebpf.AttachTCXIngress, Interface: math.MaxInt32})
	switch {
	case err == nil:
		l.Close()
		return missing(name, "tcx probe attached to an impossible interface", errors.New("unexpected success"))
	case errors.Is(err, unix.ENODEV):
		return ok(name, "tcx links are supported (Linux 6.6+)")
	case errors.Is(err, ebpf.ErrNotSupported):
		return missing(name, "no tcx (needs Linux 6.6): tc programs would attach through a clsact qdisc", err)
	case isPerm(err):
		return denied(name, "creating a tcx link", err)
	}
	return missing(name, "tcx probe failed: "+oneLine(err), err)
}

// ProbeClsact checks for sched_cls programs, which the legacy tc path
// (clsact qdisc + bpf filter) runs.
func ProbeClsact() Probe {
	const name = "clsact"
	err := features.HaveProgramType(ebpf.SchedCLS)
	switch {
	case err == nil:
		return ok(name, "sched_cls programs load (legacy tc: clsact qdisc with a bpf filter)")
	case errors.Is(err, ebpf.ErrNotSupported):
		return missing(name, "sched_cls programs are not supported", err)
	case isPerm(err):
		return denied(name, "loading a sched_cls program", err)
	}
	return missing(name, "sched_cls probe failed: "+oneLine(err), err)
}

// ProbeKprobes checks that kprobes can be created: the kernel's kprobe
// PMU or kprobe_events exists, and a no-op kprobe program attaches to
// ProbeSymbol (and is detached at once).
func ProbeKprobes() Probe {
	const name = "kprobe"
	_, pmuErr := os.Stat(KprobePMUPath)
	events := ""
	for _, d := range TracefsPaths {
		if _, err := os.Stat(d + "/kprobe_events"); err == nil {
			events = d + "/kprobe_events"
			break
		}
	}
	if pmuErr != nil && events == "" {
		return missing(name, "kernel built without kprobes (no kprobe PMU, no kprobe_events)", ebpf.ErrNotSupported)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         ProbeProgPrefix + "kp",
		Type:         ebpf.Kprobe,
		License:      "GPL",
		Instructions: nopProgram(),
	})
	if err != nil {
		if isPerm(err) {
			return denied(name, "loading a kprobe program", err)
		}
		return missing(name, "loading a kprobe program failed: "+oneLine(err), err)
	}
	defer prog.Close()
	l, err := link.Kprobe(ProbeSymbol, prog, nil)
	if err != nil {
		switch {
		case errors.Is(err, ebpf.ErrNotSupported):
			return missing(name, "kprobes are not supported: "+oneLine(err), err)
		case isPerm(err):
			return denied(name, "creating a kprobe", err)
		}
		return missing(name, "kprobe on "+ProbeSymbol+" failed: "+oneLine(err), err)
	}
	if err := l.Close(); err != nil {
		return missing(name, "removing the probe kprobe failed: "+err.Error(), err)
	}
	return ok(name, "a kprobe on "+ProbeSymbol+" attaches")
}

// ProbeFentry loads and attaches a no-op fentry program on ProbeSymbol.
// Some kernels refuse fentry with EPERM even to root.
func ProbeFentry() Probe {
	const name = "fentry"
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         ProbeProgPrefix + "fe",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFEntry,
		AttachTo:     ProbeSymbol,
		License:      "GPL",
		Instructions: nopProgram(),
	})
	if err != nil {
		if isPerm(err) {
			if HasBPFPrivileges() {
				return missing(name, "the kernel refuses fentry programs (EPERM) even with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN", err)
			}
			return denied(name, "loading an fentry program", err)
		}
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.Errno(524)) /* ENOTSUPP */ || errors.Is(err, unix.EOPNOTSUPP) {
			return missing(name, "fentry programs are not supported on this kernel", err)
		}
		return missing(name, "loading an fentry program failed: "+oneLine(err), err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		if isPerm(err) {
			return missing(name, "the kernel refuses to attach fentry programs (EPERM)", err)
		}
		return missing(name, "attaching an fentry program failed: "+oneLine(err), err)
	}
	if err := l.Close(); err != nil {
		return missing(name, "detaching the probe fentry failed: "+err.Error(), err)
	}
	return ok(name, "an fentry program on "+ProbeSymbol+" loads and attaches")
}

// ProbeDropReasons checks for enum skb_drop_reason in kernel BTF (5.17+),
// from which hoptrace names drop reasons.
func ProbeDropReasons() Probe {
	const name = "drop_reasons"
	spec, err := KernelBTF()
	if err != nil {
		return missing(name, "no kernel BTF to read enum skb_drop_reason from", err)
	}
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		return missing(name, "no enum skb_drop_reason in kernel BTF (Linux < 5.17): drops are reported without a reason", err)
	}
	return ok(name, fmt.Sprintf("enum skb_drop_reason has %d values", len(e.Values)))
}

// ProbeConsumeSkbLocation reports whether the consume_skb tracepoint
// passes the caller's address (location), added in 6.3.
func ProbeConsumeSkbLocation() Probe {
	return probeTracepointArgs("consume_skb_location", "consume_skb", 2,
		"(skb, location)", "(skb only; location came in Linux 6.3)")
}

// ProbeKfreeSkbReason reports whether the kfree_skb tracepoint passes the
// drop reason, added in 5.17 (before, only skb and location).
func ProbeKfreeSkbReason() Probe {
	return probeTracepointArgs("kfree_skb_reason", "kfree_skb", 3,
		"(skb, location, reason)", "(skb, location; the reason came in Linux 5.17): drops are named by the dropping function only")
}

// probeTracepointArgs reports whether tracepoint passes at least want
// arguments, from its prototype in kernel BTF; with and without say which.
func probeTracepointArgs(name, tracepoint string, want int, with, without string) Probe {
	spec, err := KernelBTF()
	if err != nil {
		return missing(name, "no kernel BTF to read the "+tracepoint+" tracepoint from", err)
	}
	n, err := TracepointArgs(spec, tracepoint)
	if err != nil {
		return missing(name, oneLine(err), err)
	}
	args := "arguments"
	if n == 1 {
		args = "argument"
	}
	if n >= want {
		return ok(name, fmt.Sprintf("%s passes %d %s %s", tracepoint, n, args, with))
	}
	return missing(name, fmt.Sprintf("%s passes %d %s %s", tracepoint, n, args, without), nil)
}

// ProbeAtomicFetch loads a socket filter doing an atomic fetch-and-add on
// the stack: BPF_FETCH atomics came in 5.12 (older verifiers refuse them
// with "BPF_STX uses reserved fields"). hoptrace's programs must not use
// them; the probe says why.
func ProbeAtomicFetch() Probe {
	const name = "atomic_fetch"
	fetchAdd := asm.FetchAdd.Mem(asm.R1, asm.R2, asm.DWord, 0)
	// The operation travels in the immediate; set it here too, since the
	// encoder takes the immediate from Constant.
	fetchAdd.Constant = int64(asm.FetchAdd >> 8)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: ProbeProgPrefix + "afetch",
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.StoreMem(asm.R10, -8, asm.R1, asm.DWord),
			asm.Mov.Reg(asm.R1, asm.R10),
			asm.Add.Imm(asm.R1, -8),
			asm.Mov.Imm(asm.R2, 1),
			fetchAdd,
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		if isPerm(err) {
			return denied(name, "loading a socket filter", err)
		}
		return missing(name, "the verifier refuses atomic fetch-and-add (needs Linux 5.12): "+oneLine(err), err)
	}
	prog.Close()
	return ok(name, "atomic fetch-and-add loads (Linux 5.12+); hoptrace does not use it")
}

// Feature is a kernel capability that comes with a kernel version and
// changes what hoptrace loads or reports.
type Feature struct {
	Name string
	// Since is the first kernel version that has it: the expectation test
	// (features_test.go) asserts on every kernel of the matrix that Probe
	// finds the feature iff the kernel is at least Since.
	Since Version
	Probe func() Probe
	// Without says what hoptrace does on a kernel that lacks it.
	Without string
}

// Features are the version-dependent features, oldest first. A new
// attachment or kernel-dependent behaviour (an nftables trace needing
// NFT_TABLE_F_OWNER in 5.12, a tcx attachment with a tracepoint fallback,
// an in-kernel filter using a newer helper) adds its probe here, and the
// per-kernel expectation test checks it on every kernel of make test-kernels.
var Features = []Feature{
	{"ringbuf", Version{5, 8, 0}, ProbeRingBuf, "hoptrace cannot run (its events go through a ring buffer)"},
	{"atomic_fetch", Version{5, 12, 0}, ProbeAtomicFetch, "nothing: packet ids come from a per-CPU sequence, no fetch-and-add"},
	{"kfree_skb_reason", Version{5, 17, 0}, ProbeKfreeSkbReason, "on_kfree_skb_noreason: drops carry the dropping function, no reason"},
	{"drop_reasons", Version{5, 17, 0}, ProbeDropReasons, "drops say \"no reason on this kernel\""},
	{"consume_skb_location", Version{6, 3, 0}, ProbeConsumeSkbLocation, "on_consume_skb_noloc: consumed packets carry no caller"},
	{"tcx", Version{6, 6, 0}, ProbeTCX, "nothing today (hoptrace attaches no tc programs); tc programs would use a clsact qdisc"},
}

// Has reports whether the running kernel v is new enough for the feature.
func (f Feature) Has(v Version) bool { return v.AtLeast(f.Since.Major, f.Since.Minor) }

// ProbeBPFFS checks that a bpf filesystem is mounted at BPFFSPath.
func ProbeBPFFS() Probe {
	const name = "bpffs"
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFSPath, &st); err != nil {
		return missing(name, BPFFSPath+": "+err.Error(), err)
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return missing(name, "no bpf filesystem mounted at "+BPFFSPath+" (mount -t bpf bpf "+BPFFSPath+")", nil)
	}
	return ok(name, "mounted at "+BPFFSPath)
}

// ProbeTracefs checks that tracefs is mounted at one of TracefsPaths.
func ProbeTracefs() Probe {
	const name = "tracefs"
	for _, p := range TracefsPaths {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && uint32(st.Type) == unix.TRACEFS_MAGIC {
			return ok(name, "mounted at "+p)
		}
	}
	return missing(name, "not mounted at "+strings.Join(TracefsPaths, " or ")+" (mount -t tracefs tracefs /sys/kernel/tracing)", nil)
}

// Capabilities hoptrace cares about.
var capNames = []struct {
	Name string
	Bit  uint
}{
	{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN},
	{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN},
	{"CAP_PERFMON", unix.CAP_PERFMON},
	{"CAP_SYS_RESOURCE", unix.CAP_SYS_RESOURCE}, // before 5.11 only (RLIMIT_MEMLOCK)
	{"CAP_BPF", unix.CAP_BPF},
}

// Privileges describes the effective user and capabilities of this process.
type Privileges struct {
	Root bool            `json:"root"`
	Caps map[string]bool `json:"capabilities"`
	Err  error           `json:"-"`
}

// ProbePrivileges reads the effective capabilities with capget(2).
func ProbePrivileges() Privileges {
	p := Privileges{Root: os.Geteuid() == 0, Caps: map[string]bool{}}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		p.Err = fmt.Errorf("capget: %w", err)
		return p
	}
	for _, c := range capNames {
		p.Caps[c.Name] = data[c.Bit/32].Effective&(1<<(c.Bit%32)) != 0
	}
	return p
}

// RequiredCaps are what hoptrace needs when not root: CAP_BPF and
// CAP_PERFMON to load and attach tracing programs, CAP_NET_ADMIN for
// netlink in every namespace (and verify's probes), CAP_SYS_ADMIN to enter
// network namespaces (setns).
var RequiredCaps = []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}

// MemlockCharged reports whether this kernel charges BPF maps to
// RLIMIT_MEMLOCK (before 5.11; later ones charge the memory cgroup): a
// process that is not root then also needs CAP_SYS_RESOURCE to raise it.
func MemlockCharged() bool {
	_, v, err := Release()
	return err == nil && !v.AtLeast(5, 11)
}

// requiredCaps are RequiredCaps on this kernel: CAP_SYS_RESOURCE too where
// maps are charged to RLIMIT_MEMLOCK.
func requiredCaps() []string {
	if MemlockCharged() {
		return append(append([]string{}, RequiredCaps...), "CAP_SYS_RESOURCE")
	}
	return RequiredCaps
}

// privilegeRule is the one rule, in words, that doctor, the commands and
// the loader state.
const privilegeRule = "root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN"

// CanTrace is the privilege rule doctor, the commands and the loader share:
// root, or every capability of RequiredCaps.
func (p Privileges) CanTrace() bool {
	return p.Root || len(p.Lacking()) == 0
}

// Lacking lists the capabilities of RequiredCaps the process does not have.
func (p Privileges) Lacking() []string {
	var lack []string
	for _, c := range requiredCaps() {
		if !p.Caps[c] {
			lack = append(lack, c)
		}
	}
	return lack
}

// RequirePrivileges returns nil when this process may trace, else an error
// saying what what needs and what is lacking.
func RequirePrivileges(what string) error {
	p := ProbePrivileges()
	if p.CanTrace() {
		return nil
	}
	if p.Err != nil {
		return fmt.Errorf("%s needs %s: %w", what, privilegeRule, p.Err)
	}
	rule := privilegeRule
	if MemlockCharged() {
		rule += " (and CAP_SYS_RESOURCE before Linux 5.11, which charges BPF maps to RLIMIT_MEMLOCK)"
	}
	return fmt.Errorf("%s needs %s (lacks %s): it loads BPF programs and enters network namespaces; run it as root", what, rule, strings.Join(p.Lacking(), ", "))
}

// Probe summarises the privileges as a Probe named "privileges".
func (p Privileges) Probe() Probe {
	const name = "privileges"
	if p.Err != nil {
		return missing(name, p.Err.Error(), p.Err)
	}
	var have, lack []string
	for _, c := range capNames {
		if c.Name == "CAP_SYS_RESOURCE" && !MemlockCharged() {
			continue // not needed on this kernel
		}
		if p.Caps[c.Name] {
			have = append(have, c.Name)
		} else {
			lack = append(lack, c.Name)
		}
	}
	who := "not root"
	if p.Root {
		who = "root"
	}
	detail := who
	if len(have) > 0 {
		detail += "; has " + strings.Join(have, " ")
	}
	if len(lack) > 0 {
		detail += "; lacks " + strings.Join(lack, " ")
	}
	if !p.CanTrace() {
		return missing(name, detail+" (hoptrace needs "+privilegeRule+")", unix.EPERM)
	}
	return ok(name, detail)
}

// HasBPFPrivileges reports whether this process may load tracing programs.
func HasBPFPrivileges() bool { return ProbePrivileges().CanTrace() }

// DockerSocket returns the Docker socket path: DOCKER_HOST when it is a
// unix:// address, else DockerSocketPath.
func DockerSocket() string {
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		return strings.TrimPrefix(h, "unix://")
	}
	return DockerSocketPath
}

// ProbeDockerSocket connects to the Docker socket and hangs up.
func ProbeDockerSocket() Probe {
	const name = "docker"
	path := DockerSocket()
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		detail := "cannot connect to " + path
		switch {
		case errors.Is(err, os.ErrNotExist):
			detail = "no Docker socket at " + path + " (Docker not installed or not running)"
		case errors.Is(err, unix.ECONNREFUSED):
			detail = "nothing listens on " + path + " (dockerd not running)"
		case isPerm(err):
			detail = "no permission to connect to " + path
		}
		return missing(name, detail, err)
	}
	c.Close()
	return ok(name, "connected to "+path)
}

func btfHas(structName string) bool {
	spec, err := KernelBTF()
	if err != nil {
		return false
	}
	var s *btf.Struct
	return spec.TypeByName(structName, &s) == nil
}

func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
