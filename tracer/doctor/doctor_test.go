package doctor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

var wantTracepoints = []string{
	"net_dev_queue", "net_dev_start_xmit", "net_dev_xmit", "netif_rx", "napi_gro_receive_entry",
	"netif_receive_skb", "kfree_skb", "consume_skb", "skb_copy_datagram_iovec",
}

func check(t *testing.T, r *Report, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in the report", name)
	return Check{}
}

func TestTracepointsFromObject(t *testing.T) {
	tps, err := Tracepoints()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tps, wantTracepoints) {
		t.Errorf("tracepoints = %v, want %v", tps, wantTracepoints)
	}
}

// The doctor, run in-process on whatever kernel the test runs on, must
// report that kernel's branch: consume_skb variant, tcx, function hooks.
func TestDoctorOnThisKernel(t *testing.T) {
	if os.Getenv("HOPTRACE_UNPRIVILEGED") != "" {
		t.Skip("HOPTRACE_UNPRIVILEGED is set")
	}
	privtest.RequireRoot(t)
	rel, v, err := kernel.Release()
	if err != nil {
		t.Fatal(err)
	}
	r := sharedRun()
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("doctor output on %s:\n%s", rel, text.String())
	out := text.String()

	if !r.CanRun || len(r.Missing) != 0 || r.Problem() != "" {
		t.Errorf("root on a supported kernel: can_run=%v missing=%v", r.CanRun, r.Missing)
	}
	if !strings.Contains(out, "hoptrace can run here.") {
		t.Error("text does not say hoptrace can run")
	}
	if r.Release != rel || !strings.HasPrefix(out, "Kernel "+rel+" (Linux "+v.String()+")") {
		t.Errorf("release %q, text starts %q", r.Release, strings.SplitN(out, "\n", 2)[0])
	}
	for _, name := range []string{"btf", "ringbuf", "privileges"} {
		if c := check(t, r, name); !c.Available || !c.Required {
			t.Errorf("%s: %+v", name, c)
		}
	}
	if !reflect.DeepEqual(r.Plan.Tracepoints, wantTracepoints) {
		t.Errorf("plan tracepoints %v", r.Plan.Tracepoints)
	}
	for _, tp := range wantTracepoints {
		c := check(t, r, tp)
		if c.Group != GroupTracepoints || !c.Available || !c.Required {
			t.Errorf("tracepoint %s: %+v", tp, c)
		}
		if !regexp.MustCompile(`(?m)^  yes  ` + tp + ` `).MatchString(out) {
			t.Errorf("text has no 'yes' line for tracepoint %s", tp)
		}
	}

	// consume_skb: the location argument came in 6.3.
	wantLoc := v.AtLeast(6, 3)
	if c := check(t, r, "consume_skb_location"); c.Available != wantLoc {
		t.Errorf("consume_skb location on %s: %v, want %v", rel, c.Available, wantLoc)
	}
	wantProg, wantWords := "on_consume_skb_noloc", "without the location argument"
	if wantLoc {
		wantProg, wantWords = "on_consume_skb", "with the location argument"
	}
	if r.Plan.ConsumeSkbProgram != wantProg || !strings.Contains(out, wantWords) {
		t.Errorf("consume_skb plan on %s: %s (%q), want %s", rel, r.Plan.ConsumeSkbProgram, r.Plan.ConsumeSkb, wantProg)
	}

	// The verdict rests on loading hoptrace's own programs in both modes,
	// with the variants this kernel's tracepoints take.
	wantKfree := "on_kfree_skb_noreason"
	if v.AtLeast(5, 17) {
		wantKfree = "on_kfree_skb"
	}
	if c := check(t, r, "kfree_skb_reason"); c.Available != v.AtLeast(5, 17) || c.Required {
		t.Errorf("kfree_skb reason on %s: %+v, want available=%v", rel, c, v.AtLeast(5, 17))
	}
	for _, name := range []string{"programs_events", "programs_latency"} {
		c := check(t, r, name)
		if c.Group != GroupPrograms || !c.Available || !c.Required {
			t.Errorf("%s: %+v", name, c)
		}
		for _, prog := range []string{wantKfree, wantProg} {
			if !regexp.MustCompile(`\b` + prog + `\b`).MatchString(c.Detail) {
				t.Errorf("%s on %s does not name %s: %s", name, rel, prog, c.Detail)
			}
		}
	}
	if !regexp.MustCompile(`(?m)^  yes  trace programs .*\b`+wantKfree+`\b`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^  yes  latency programs `).MatchString(out) {
		t.Errorf("text lacks the program load lines with %s", wantKfree)
	}
	if r.Plan.KfreeSkbProgram != wantKfree || len(r.Plan.Programs) != len(wantTracepoints) {
		t.Errorf("plan on %s: kfree_skb %s (want %s), %d programs", rel, r.Plan.KfreeSkbProgram, wantKfree, len(r.Plan.Programs))
	}
	var wantLacks []string
	if !v.AtLeast(5, 17) {
		wantLacks = append(wantLacks, "kfree_skb events: no drop reason")
		if !strings.HasPrefix(r.Plan.DropReasons, "none on this kernel") || !strings.Contains(out, "drops are reported with the dropping function") {
			t.Errorf("drop reasons plan on %s: %q", rel, r.Plan.DropReasons)
		}
	}
	if !wantLoc {
		wantLacks = append(wantLacks, "consume_skb events: no caller")
	}
	if len(r.Plan.Lacks) != len(wantLacks) {
		t.Errorf("lacks on %s: %q, want %q", rel, r.Plan.Lacks, wantLacks)
	}
	for i := range wantLacks {
		if i < len(r.Plan.Lacks) && !strings.HasPrefix(r.Plan.Lacks[i], wantLacks[i]) {
			t.Errorf("lacks[%d] on %s: %q, want %q...", i, rel, r.Plan.Lacks[i], wantLacks[i])
		}
	}
	if strings.Contains(out, "What this kernel does not give:") != (len(wantLacks) > 0) {
		t.Errorf("text on %s: 'What this kernel does not give' section iff something is lacking (%d)", rel, len(wantLacks))
	}
	if left := privtest.ProgramsOf(t, os.Getpid()); len(left) != 0 {
		t.Errorf("doctor left %d hoptrace programs loaded", len(left))
	}

	// tcx from 6.6, the legacy path everywhere.
	wantTCX := v.AtLeast(6, 6)
	if c := check(t, r, "tcx"); c.Available != wantTCX || c.Required {
		t.Errorf("tcx on %s: %+v, want available=%v", rel, c, wantTCX)
	}
	mark := map[bool]string{true: "yes", false: "no "}
	if !strings.Contains(out, "  "+mark[wantTCX]+"  tcx ") {
		t.Errorf("text tcx line should start with %q", mark[wantTCX])
	}
	// The engine: tcx exactly where the kernel has tcx.
	wantEngine := map[bool]string{true: "tcx", false: "tracepoint"}[wantTCX]
	if r.Plan.Engine != wantEngine || !strings.Contains(out, "  - engine "+wantEngine+": ") {
		t.Errorf("engine on %s: %q (%q), want %s", rel, r.Plan.Engine, r.Plan.EngineDetail, wantEngine)
	}
	if c := check(t, r, "legacy_tc"); !c.Available {
		t.Errorf("legacy tc: %+v", c)
	}

	// Function hooks: reported, never required.
	if !strings.HasPrefix(r.Plan.FunctionHooks, "none; hoptrace needs no kprobes and no fentry") {
		t.Errorf("function hooks plan: %q", r.Plan.FunctionHooks)
	}
	// On every kernel, what the doctor says must be what a second,
	// independent attempt finds.
	kp, how := kprobesWork(t)
	if c := check(t, r, "kprobe"); c.Available != kp || c.Required {
		t.Errorf("kprobe on %s: %+v, want available=%v (%s)", rel, c, kp, how)
	}
	fe, how := fentryWorks(t)
	if c := check(t, r, "fentry"); c.Available != fe || c.Required {
		t.Errorf("fentry on %s: %+v, want available=%v (%s)", rel, c, fe, how)
	}

	if os.Getenv("HOPTRACE_VM") != "" {
		for _, name := range []string{"bpffs", "tracefs"} {
			if c := check(t, r, name); !c.Available {
				t.Errorf("the VM mounts %s: %+v", name, c)
			}
		}
		if c := check(t, r, "docker"); c.Available || c.Required || !strings.HasPrefix(r.Plan.Containers, "none, ") {
			t.Errorf("no Docker daemon in the VM: %+v, plan %q", c, r.Plan.Containers)
		}
	}

	// JSON carries the same report.
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("doctor JSON: %v\n%s", err, js.String())
	}
	if !reflect.DeepEqual(&back, r) {
		t.Errorf("JSON round trip differs:\n%s", js.String())
	}
	var raw map[string]any
	json.Unmarshal(js.Bytes(), &raw)
	for _, k := range []string{"kernel_release", "kernel_version", "checks", "will_use", "can_run"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
}

// A kernel whose verifier refuses hoptrace's programs cannot run it, even
// when every tracepoint probe passes.
func TestVerdictFollowsTheLoad(t *testing.T) {
	privtest.RequireRoot(t)
	privtest.SameOnEveryKernel(t, "the verdict logic is userspace; the real load is TestDoctorOnThisKernel's on every kernel")
	refused := errors.New("the kernel's verifier rejected a hoptrace program: BPF_STX uses reserved fields")
	r := run(func(loader.Mode) ([]loader.Program, error) { return nil, refused })
	var text bytes.Buffer
	r.WriteText(&text)
	if r.CanRun || !reflect.DeepEqual(r.Missing, []string{"programs_events", "programs_latency"}) {
		t.Errorf("can_run=%v missing=%v", r.CanRun, r.Missing)
	}
	for _, s := range []string{"  NO   trace programs ", "BPF_STX uses reserved fields", "hoptrace cannot run here: missing programs_events, programs_latency."} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, text.String())
		}
	}
	// The plan still says which variants the loader would take.
	if r.Plan.KfreeSkbProgram == "" || r.Plan.ConsumeSkbProgram == "" {
		t.Errorf("plan without variants: %+v", r.Plan)
	}
}

func TestProblemNamesWhatIsMissing(t *testing.T) {
	r := &Report{
		Release: "9.9.9-test", Version: "9.9.9",
		Checks: []Check{
			{Name: "btf", Group: GroupKernel, Required: true, Detail: "/sys/kernel/btf/vmlinux missing"},
			{Name: "netif_rx", Group: GroupTracepoints, Required: true, Detail: "this kernel has no tracepoint netif_rx"},
			{Name: "kprobe", Group: GroupFunctions, Detail: "kernel built without kprobes"},
		},
		Missing: []string{"btf", "tracepoint netif_rx"},
	}
	want := "cannot run here: missing btf, tracepoint netif_rx"
	if got := r.Problem(); got != want {
		t.Errorf("Problem() = %q, want %q", got, want)
	}
	var b bytes.Buffer
	r.WriteText(&b)
	for _, s := range []string{"  NO   BTF ", "  NO   netif_rx ", "  no   kprobes ", "hoptrace " + want + "."} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, b.String())
		}
	}
}

// The doctor says whether rule naming works: on the development hosts
// and CI (6.18, iptables-nft) it does; its owned-table probe leaves no
// table behind.
func TestDoctorRuleNaming(t *testing.T) {
	privtest.RequireRoot(t)
	r := sharedRun()
	for _, name := range []string{"nf_tables", "nft_table_owner", "iptables_backend", "nft_command"} {
		c := check(t, r, name)
		if c.Group != GroupRules || c.Required || c.Detail == "" {
			t.Errorf("check %s: %+v", name, c)
		}
		if os.Getenv("HOPTRACE_VM") == "" && !c.Available {
			t.Errorf("check %s unavailable on this host: %s", name, c.Detail)
		}
	}
	if os.Getenv("HOPTRACE_VM") == "" && !strings.HasPrefix(r.Plan.RuleNaming, "a temporary owned nftables table") {
		t.Errorf("rule naming plan: %s", r.Plan.RuleNaming)
	}
	var text bytes.Buffer
	r.WriteText(&text)
	if !strings.Contains(text.String(), "rule naming: ") || !strings.Contains(text.String(), "owned tables (5.12+)") {
		t.Errorf("text report lacks rule naming:\n%s", text.String())
	}
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil && strings.Contains(string(out), "hoptrace_check_") {
		t.Errorf("the doctor left its probe table:\n%s", out)
	}
}

// kprobesWork creates a kprobe on kernel.ProbeSymbol another way than the
// doctor (which attaches a program through the kprobe PMU): tracefs's
// kprobe_events text interface where it is mounted, else perf_event_open
// on the kprobe PMU directly.
func kprobesWork(t *testing.T) (bool, string) {
	t.Helper()
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		events := dir + "/kprobe_events"
		if _, err := os.Stat(events); err != nil {
			continue
		}
		ev := fmt.Sprintf("hoptrace_doctor_test/kp%d", os.Getpid())
		if err := appendLine(events, "p:"+ev+" "+kernel.ProbeSymbol); err != nil {
			return false, events + ": " + err.Error()
		}
		if err := appendLine(events, "-:"+ev); err != nil {
			t.Errorf("remove kprobe %s: %v", ev, err)
		}
		return true, "a kprobe created through " + events
	}
	b, err := os.ReadFile(kernel.KprobePMUPath)
	if err != nil {
		return false, "no kprobe_events in tracefs and no kprobe PMU"
	}
	typ, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		t.Fatalf("%s: %v", kernel.KprobePMUPath, err)
	}
	sym, err := unix.BytePtrFromString(kernel.ProbeSymbol)
	if err != nil {
		t.Fatal(err)
	}
	attr := unix.PerfEventAttr{Type: uint32(typ), Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{})), Ext1: uint64(uintptr(unsafe.Pointer(sym)))}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return false, "perf_event_open on the kprobe PMU: " + err.Error()
	}
	unix.Close(fd)
	return true, "perf_event_open on the kprobe PMU"
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// fentryWorks loads and attaches an fentry program on another function
// than the doctor's probe.
func fentryWorks(t *testing.T) (bool, string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFEntry,
		AttachTo:     "kfree_skb_partial",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false, "load: " + err.Error()
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return false, "attach: " + err.Error()
	}
	l.Close()
	return true, "an fentry program on kfree_skb_partial"
}

// sharedRun is one Run() for the tests that only read its report: a run
// loads every program variant, over a minute in an emulated matrix VM.
var sharedRun = sync.OnceValue(Run)
