package loader_test

// Per-kernel expectations: on whatever kernel the test runs (the host, or a
// VM of make test-kernels), the loader must take that kernel's branch, and
// what the branch promises must hold on real packets.

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

func kernelVersion(t *testing.T) (string, kernel.Version) {
	t.Helper()
	rel, v, err := kernel.Release()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s", rel)
	return rel, v
}

// loadEvents loads the default hooks in events mode with a reader on the
// ring buffer; both are closed when the test ends.
func loadEvents(t *testing.T) (*loader.Tracer, *ringbuf.Reader) {
	t.Helper()
	return loadReading(t, loader.Options{})
}

// nextEvent reads one event, or reports false when none came within wait.
func nextEvent(t *testing.T, rd *ringbuf.Reader, wait time.Duration) (event.Event, bool) {
	t.Helper()
	var e event.Event
	rd.SetDeadline(time.Now().Add(wait))
	rec, err := rd.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return e, false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := event.Decode(rec.RawSample, &e); err != nil {
		t.Fatal(err)
	}
	return e, true
}

// variantsFor is the program each hook must get on kernel v.
func variantsFor(v kernel.Version) map[event.Hook]string {
	want := map[event.Hook]string{
		event.HookNetDevQueue:     "on_net_dev_queue",
		event.HookNetDevStartXmit: "on_net_dev_start_xmit",
		event.HookNetDevXmit:      "on_net_dev_xmit",
		event.HookNetifRx:         "on_netif_rx",
		event.HookGROReceive:      "on_napi_gro_receive_entry",
		event.HookNetifReceiveSkb: "on_netif_receive_skb",
		event.HookKfreeSkb:        "on_kfree_skb_noreason", // kfree_skb(skb, location)
		event.HookConsumeSkb:      "on_consume_skb_noloc",  // consume_skb(skb)
		event.HookCopyDatagram:    "on_skb_copy_datagram_iovec",
	}
	if v.AtLeast(5, 17) {
		want[event.HookKfreeSkb] = "on_kfree_skb" // (skb, location, reason)
	}
	if v.AtLeast(6, 3) {
		want[event.HookConsumeSkb] = "on_consume_skb" // (skb, location)
	}
	return want
}

// One load serves the per-kernel checks (each load verifies the programs
// again: tens of seconds under emulation in the kernel-matrix VMs).
func TestOnThisKernel(t *testing.T) {
	privtest.RequireRoot(t)
	rel, v := kernelVersion(t)
	tr, rd := loadEvents(t)
	t.Run("variants", func(t *testing.T) { checkVariants(t, tr, rel, v) })
	t.Run("drop", func(t *testing.T) { checkDrop(t, rd, rel, v) })
	t.Run("packet_ids", func(t *testing.T) { checkPacketIDs(t, rd) })
}

// The variants loaded are the ones for this kernel's version, and the
// kernel holds exactly those programs.
func checkVariants(t *testing.T, tr *loader.Tracer, rel string, v kernel.Version) {
	want := variantsFor(v)
	progs := tr.Programs()
	if n := len(loader.HopHooks) + len(loader.EndHooks); len(progs) != n {
		t.Fatalf("%d programs, want %d", len(progs), n)
	}
	loaded := map[string]bool{}
	for _, id := range privtest.ProgramsOf(t, os.Getpid()) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil {
			loaded[info.Name] = true
		}
		p.Close()
	}
	for _, p := range progs {
		if p.Name != want[p.Hook] {
			t.Errorf("%s on %s: %s, want %s", p.Tracepoint, rel, p.Name, want[p.Hook])
		}
		// The kernel keeps 15 characters of a name; Info restores the rest from BTF where it can.
		if !loaded[p.Name] && !loaded[p.Name[:min(len(p.Name), 15)]] {
			t.Errorf("%s is not among the programs the kernel holds for this process: %v", p.Name, loaded)
		}
		t.Logf("%s (%d arguments): %s %s", p.Tracepoint, p.Args, p.Name, p.Lacks)
	}
	if tr.DropHasReason() != v.AtLeast(5, 17) || tr.ConsumeHasLocation() != v.AtLeast(6, 3) {
		t.Errorf("on %s: DropHasReason=%v ConsumeHasLocation=%v", rel, tr.DropHasReason(), tr.ConsumeHasLocation())
	}
}

// A datagram to a closed UDP port is dropped by the UDP receive path: the
// drop names that function (kfree_skb's location, through kallsyms) on every
// kernel, and carries NO_SOCKET from 5.17, no reason before.
func checkDrop(t *testing.T, rd *ringbuf.Reader, rel string, v kernel.Version) {

	// A port nobody listens on: bound, then released.
	l, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dst := l.LocalAddr().(*net.UDPAddr)
	l.Close()
	c, err := net.DialUDP("udp4", nil, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sport := uint16(c.LocalAddr().(*net.UDPAddr).Port)

	var drop *event.Event
	deadline := time.Now().Add(5 * time.Second)
	for drop == nil && time.Now().Before(deadline) {
		c.Write([]byte("hoptrace drop"))
		for end := time.Now().Add(300 * time.Millisecond); drop == nil && time.Now().Before(end); {
			e, ok := nextEvent(t, rd, 50*time.Millisecond)
			if ok && event.Hook(e.Hook) == event.HookKfreeSkb && e.Meta.L4Proto == event.ProtoUDP &&
				e.Meta.Sport == sport && e.Meta.Dport == uint16(dst.Port) {
				drop = &e
			}
		}
	}
	if drop == nil {
		t.Fatalf("no kfree_skb event for the datagram to closed port %d on %s", dst.Port, rel)
	}
	syms, err := kernel.LoadSymbols("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	where := syms.Name(drop.Location)
	t.Logf("dropped at %#x = %s, reason %d", drop.Location, where, drop.DropReason)
	if drop.Location == 0 || !strings.Contains(where, "udp") {
		t.Errorf("drop location %#x resolves to %q, want the UDP receive path", drop.Location, where)
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	reasons, err := kernel.LoadDropReasons(spec)
	if err != nil {
		t.Fatal(err)
	}
	if v.AtLeast(5, 17) {
		if got := reasons.Name(drop.DropReason); got != "NO_SOCKET" {
			t.Errorf("drop reason on %s: %d (%s), want NO_SOCKET", rel, drop.DropReason, got)
		}
	} else if drop.DropReason != 0 || reasons.Available() || reasons.Name(drop.DropReason) != "" {
		t.Errorf("on %s (no drop reasons): reason %d, reasons available=%v", rel, drop.DropReason, reasons.Available())
	}
}

// Packet ids are seq*nr_cpus + cpu + 1: never 0, never repeated, whichever
// CPU made them.
func checkPacketIDs(t *testing.T, rd *ringbuf.Reader) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}

	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dport := uint16(srv.LocalAddr().(*net.UDPAddr).Port)
	const perCPU = 50
	online := runtime.NumCPU()
	done := make(chan error, online)
	for cpu := 0; cpu < online; cpu++ {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				done <- err
				return
			}
			c, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			for i := 0; i < perCPU; i++ {
				c.Write([]byte("id"))
			}
			done <- nil
		}()
	}
	for i := 0; i < online; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}

	ids := map[uint64]uint16{}
	cpus := map[uint16]bool{}
	ours := 0
	for {
		e, ok := nextEvent(t, rd, 500*time.Millisecond)
		if !ok {
			break
		}
		if e.Flags&event.FlagNew == 0 {
			continue // a later sighting of a packet already counted
		}
		if e.PktId == 0 {
			t.Fatalf("packet id 0 at %s", event.HookName(event.Hook(e.Hook)))
		}
		if prev, dup := ids[e.PktId]; dup {
			t.Errorf("packet id %d given twice (CPUs %d and %d)", e.PktId, prev, e.Cpu)
		}
		ids[e.PktId] = e.Cpu
		if got := (e.PktId - 1) % uint64(ncpu); got != uint64(e.Cpu) {
			t.Errorf("packet id %d made on CPU %d encodes CPU %d", e.PktId, e.Cpu, got)
		}
		if e.Meta.L4Proto == event.ProtoUDP && e.Meta.Dport == dport {
			ours++
			cpus[e.Cpu] = true
		}
	}
	if ours < online*perCPU/2 {
		t.Errorf("%d new packets to port %d seen, want about %d", ours, dport, online*perCPU)
	}
	if len(cpus) != online {
		t.Errorf("packets made on CPUs %v, want all %d online CPUs", cpus, online)
	}
	t.Logf("%d new packet ids (%d ours) on %d CPUs, %d possible", len(ids), ours, len(cpus), ncpu)
}

// Check loads, attaches and unloads the full program set of each mode.
func TestCheckLeavesNothing(t *testing.T) {
	privtest.RequireRoot(t)
	privtest.SameOnEveryKernel(t, "two full loads cost about 40 s under emulation, and tracer/doctor's TestDoctorOnThisKernel makes the same loader.Check loads in both modes on every kernel")
	_, v := kernelVersion(t)
	want := variantsFor(v)
	if v.AtLeast(6, 6) {
		// the engine auto picks there is tcx: the hop hooks are tcx programs
		want[event.HookNetDevQueue] = "on_tcx_egress"
		want[event.HookNetifReceiveSkb] = "on_tcx_ingress"
	}
	for _, mode := range []loader.Mode{loader.ModeEvents, loader.ModeLatency} {
		progs, err := loader.Check(mode)
		if err != nil {
			t.Fatalf("check mode %d: %v", mode, err)
		}
		if len(progs) != len(loader.AllHooks) {
			t.Errorf("mode %d: %d programs checked, want %d", mode, len(progs), len(loader.AllHooks))
		}
		for _, p := range progs {
			if p.Name != want[p.Hook] {
				t.Errorf("mode %d, %s: %s, want %s", mode, p.Tracepoint, p.Name, want[p.Hook])
			}
		}
	}
	if left := privtest.ProgramsOf(t, os.Getpid()); len(left) != 0 {
		t.Errorf("Check left %d programs", len(left))
	}
}

// No program may use an atomic with BPF_FETCH (its result used): kernels
// before 5.12 refuse them ("BPF_STX uses reserved fields"). Plain atomic
// adds (BPF_XADD) load everywhere.
func TestNoAtomicFetch(t *testing.T) {
	spec, err := bpfobj.LoadHoptrace()
	if err != nil {
		t.Fatal(err)
	}
	scanned, adds := 0, 0
	for name, p := range spec.Programs {
		scanned += len(p.Instructions)
		for i, ins := range p.Instructions {
			if ins.OpCode.Class() != asm.StXClass || ins.OpCode.Mode() != asm.AtomicMode {
				continue
			}
			if ins.OpCode.AtomicOp() != asm.AddAtomic {
				t.Errorf("%s instruction %d: %v needs Linux 5.12", name, i, ins)
			}
			adds++
		}
	}
	// (the histograms are per CPU: today no program needs an atomic at all)
	t.Logf("%d instructions in %d programs, %d atomic adds", scanned, len(spec.Programs), adds)
	if len(spec.Programs) < len(loader.AllHooks) || scanned < 1000 {
		t.Errorf("%d instructions in %d programs: the scan looked at nothing", scanned, len(spec.Programs))
	}
}

// The variant table follows the tracepoint's prototype: kfree_skb with and
// without its reason, consume_skb with and without its location.
func TestChooseProgramsByPrototype(t *testing.T) {
	for _, tc := range []struct {
		kfreeArgs, consumeArgs int
		kfree, consume         string
	}{
		{2, 1, "on_kfree_skb_noreason", "on_consume_skb_noloc"}, // 5.10 .. 5.16
		{3, 1, "on_kfree_skb", "on_consume_skb_noloc"},          // 5.17 .. 6.2
		{4, 2, "on_kfree_skb", "on_consume_skb"},                // 6.3+ (kfree_skb also passes rx_sk from 6.11)
	} {
		spec := tracepointSpec(t, map[string]int{"kfree_skb": tc.kfreeArgs, "consume_skb": tc.consumeArgs})
		progs, err := loader.ChoosePrograms(spec, []loader.Hook{event.HookKfreeSkb, event.HookConsumeSkb})
		if err != nil {
			t.Fatal(err)
		}
		if progs[0].Name != tc.kfree || progs[1].Name != tc.consume {
			t.Errorf("kfree_skb/%d, consume_skb/%d: %s, %s; want %s, %s", tc.kfreeArgs, tc.consumeArgs, progs[0].Name, progs[1].Name, tc.kfree, tc.consume)
		}
		if (progs[0].Lacks == "") != (tc.kfree == "on_kfree_skb") {
			t.Errorf("%s: lacks %q", progs[0].Name, progs[0].Lacks)
		}
	}
}

// tracepointSpec builds kernel-like BTF with a btf_trace_<name> typedef per
// tracepoint: a pointer to a prototype of (void *data, args...).
func tracepointSpec(t *testing.T, args map[string]int) *btf.Spec {
	t.Helper()
	var b btf.Builder
	ptr := &btf.Pointer{Target: &btf.Void{}}
	for name, n := range args {
		params := []btf.FuncParam{{Name: "__data", Type: ptr}}
		for i := 0; i < n; i++ {
			params = append(params, btf.FuncParam{Name: "a", Type: ptr})
		}
		proto := &btf.FuncProto{Return: &btf.Void{}, Params: params}
		if _, err := b.Add(&btf.Typedef{Name: "btf_trace_" + name, Type: &btf.Pointer{Target: proto}}); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}
