// Package loader loads hoptrace's BPF programs, attaches them to the
// kernel's networking tracepoints (and, with the tcx engine, to devices) and
// owns every link and map until Close. All attachments are bpf_link file
// descriptors held by this process and never pinned, so the kernel detaches
// them however the process exits.
package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/benign"
	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// Mode selects what the programs do with an observation (enum run_mode).
type Mode = bpfobj.HoptraceRunMode

const (
	// ModeEvents sends every observation to the ring buffer.
	ModeEvents = bpfobj.HoptraceRunModeMODE_EVENTS
	// ModeLatency adds hop-to-hop deltas to in-kernel histograms; no events.
	ModeLatency = bpfobj.HoptraceRunModeMODE_LATENCY
)

// Hook is one tracepoint hoptrace can observe (see bpf/hoptrace.h).
type Hook = event.Hook

// HopHooks are the hooks that show a packet at a device: one egress and one
// ingress observation per device crossed. DetailHooks add the driver and
// backlog steps in between (net_dev_xmit is left out: on a veth it fires
// after the peer has already received the packet, which reads as time
// running backwards). EndHooks say where a packet's life ended.
var (
	HopHooks    = []Hook{event.HookNetDevQueue, event.HookNetifReceiveSkb}
	DetailHooks = []Hook{event.HookNetDevStartXmit, event.HookNetifRx, event.HookGROReceive}
	EndHooks    = []Hook{event.HookKfreeSkb, event.HookConsumeSkb, event.HookCopyDatagram}
)

// FilterKind is a set of in-kernel filters (enum filter_flag).
type FilterKind = bpfobj.HoptraceFilterFlag

// Filter kinds: a packet is tracked from where it matches one of the kinds set.
const (
	FilterNetns = bpfobj.HoptraceFilterFlagFILTER_NETNS
	FilterDev   = bpfobj.HoptraceFilterFlagFILTER_DEV
	FilterAddr  = bpfobj.HoptraceFilterFlagFILTER_ADDR
	FilterPort  = bpfobj.HoptraceFilterFlagFILTER_PORT // destination ports (a container's published ports, before DNAT)
)

// Options configure Load. The zero value traces every packet in every
// namespace at the hop and end hooks.
type Options struct {
	Mode Mode
	// Engine: EngineTCX observes the hop hooks with tcx programs on the
	// devices the caller attaches (AttachDevices); EngineTracepoint and
	// EngineAuto (the zero value: the loader attaches no device by itself)
	// with tracepoints. ResolveEngine says what EngineAuto means for callers
	// that attach devices.
	Engine Engine
	Hooks  []Hook // nil: HopHooks + EndHooks
	// FilterKinds says which filter maps are consulted (FilterNetns|...);
	// 0 traces everything. The maps' contents can change while running.
	FilterKinds FilterKind
	// RingBytes is the ring buffer size (power of two, >= page size); 0: 8 MiB.
	RingBytes int
	// TrackEntries bounds the in-flight packet maps; 0: TrackEntries(0, CPUs).
	TrackEntries int
	// HistPairs bounds the number of latency histograms; 0: 1024.
	HistPairs int
	// StaleAfter: a tracked skb address seen again after this long is a new
	// packet even if its headers match; 0: 1s.
	StaleAfter time.Duration
	// WakeupBytes: the reader is woken only once this much data waits; 0: RingBytes/8.
	WakeupBytes int
	// KernelBTF, if set, is used instead of loading /sys/kernel/btf/vmlinux.
	KernelBTF *btf.Spec
	// Filter, if set, is a filter expression's program (pktfilter.Program's
	// Insns): a packet starts being tracked only where its frame matches.
	Filter asm.Instructions
	// SnapLen > 0 appends the first SnapLen bytes of the frame to every
	// event (event.Snapshot); 0 captures nothing.
	SnapLen int
	// Sample, in latency mode, measures one packet in Sample, chosen at
	// its first hop by the headers NAT leaves alone (every hop takes the
	// same decision); 0 or 1: every packet.
	Sample uint32
	// BenignDrops, in latency mode, say which kfree_skb calls are no drop
	// (tracer/benign's rules compiled for this kernel); such ends count as
	// consumed. Nil: compiled from /proc/kallsyms and the kernel's BTF.
	BenignDrops []benign.Entry

	// probeParse makes the tcx programs read headers with probe reads, as
	// the tracepoint programs do, instead of from the packet (tests
	// compare the two).
	probeParse bool
}

// LoadBenignDrops compiles tracer/benign's rules for the running kernel:
// code ranges from /proc/kallsyms (none when it cannot be read: only the
// rules that hold anywhere remain), reasons from kspec.
func LoadBenignDrops(kspec *btf.Spec) ([]benign.Entry, error) {
	syms, err := kernel.LoadSymbols("/proc/kallsyms")
	if err != nil {
		syms = nil
	}
	reasons, err := kernel.LoadDropReasons(kspec)
	if err != nil {
		return nil, fmt.Errorf("benign drops: %w", err)
	}
	return benign.Compile(syms, reasons)
}

// The default size of the in-flight table gives every possible CPU room for
// at least minTrackPerCPU packets in flight.
const (
	defaultTrackEntries = 65536
	minTrackPerCPU      = 2048
)

// TrackEntries is the size of the in-flight table for a requested size (0:
// the default, 65536 or 2048 per possible CPU, whichever is larger) on a
// machine with ncpu possible CPUs. The table rounds it up to a power of two
// (TrackSets).
func TrackEntries(requested, ncpu int) int {
	if requested > 0 {
		return requested
	}
	return max(defaultTrackEntries, minTrackPerCPU*ncpu)
}

// HeadSlots is the size of the clone table (by_head, direct-mapped) for
// track in-flight entries: the power of two at or above it.
func HeadSlots(track int) int { return pow2Ceil(track) }

// pow2Ceil is the least power of two at or above n (1 for n < 1).
func pow2Ceil(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}

// MaxSnapLen bounds Options.SnapLen (every event record carries that many bytes).
const MaxSnapLen = 4096

// Tracer owns the loaded objects and links.
type Tracer struct {
	maps       bpfobj.HoptraceMaps
	progs      []*ebpf.Program
	links      []link.Link
	hooks      []Hook
	chosenProg []Program
	ringBytes  int
	engine     Engine
	tcx        *tcxState // EngineTCX only
	bloom      bloom
	quiet      *quietKeeper
	inflight   *InFlight // mapped on first use
}

// Load loads and attaches the programs. On error nothing stays loaded.
func Load(opts Options) (*Tracer, error) {
	if err := kernel.RequirePrivileges("tracing"); err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to memcg.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	kspec := opts.KernelBTF
	if kspec == nil {
		var err error
		if kspec, err = btf.LoadKernelSpec(); err != nil {
			return nil, fmt.Errorf("kernel BTF is required (CONFIG_DEBUG_INFO_BTF, /sys/kernel/btf/vmlinux): %w", err)
		}
	}
	hooks := opts.Hooks
	if hooks == nil {
		hooks = append(append([]Hook{}, HopHooks...), EndHooks...)
	}

	spec, err := bpfobj.LoadHoptrace()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	var specs bpfobj.HoptraceSpecs
	if err := spec.Assign(&specs); err != nil {
		return nil, fmt.Errorf("embedded BPF object: %w", err)
	}
	ring := opts.RingBytes
	if ring == 0 {
		ring = 8 << 20
	}
	if ring < os.Getpagesize() || ring&(ring-1) != 0 {
		return nil, fmt.Errorf("ring buffer size %d: must be a power of two of at least %d bytes", ring, os.Getpagesize())
	}
	specs.Events.MaxEntries = uint32(ring)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	track := TrackEntries(opts.TrackEntries, ncpu)
	sets := TrackSets(track)
	specs.BySkb.MaxEntries = uint32(sets)
	if err := specs.SetMask.Set(uint32(sets - 1)); err != nil {
		return nil, fmt.Errorf("set set_mask: %w", err)
	}
	slots := HeadSlots(track)
	specs.ByHead.MaxEntries = uint32(slots)
	if err := specs.HeadMask.Set(uint32(slots - 1)); err != nil {
		return nil, fmt.Errorf("set head_mask: %w", err)
	}
	if opts.HistPairs > 0 {
		specs.Hists.MaxEntries = uint32(opts.HistPairs)
	}
	stale := opts.StaleAfter
	if stale == 0 {
		stale = time.Second
	}
	wakeup := opts.WakeupBytes
	if wakeup == 0 {
		wakeup = ring / 8
	}
	if err := specs.Mode.Set(uint32(opts.Mode)); err != nil {
		return nil, fmt.Errorf("set mode: %w", err)
	}
	if err := specs.FilterFlags.Set(uint32(opts.FilterKinds)); err != nil {
		return nil, fmt.Errorf("set filter: %w", err)
	}
	if err := specs.StaleNs.Set(uint64(stale.Nanoseconds())); err != nil {
		return nil, fmt.Errorf("set stale_ns: %w", err)
	}
	if err := specs.WakeupBytes.Set(uint64(wakeup)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	if opts.Mode == ModeLatency {
		if err := setBenignDrops(spec, opts.BenignDrops, kspec); err != nil {
			return nil, err
		}
	}
	if opts.Sample > 1 && opts.Mode != ModeLatency {
		return nil, fmt.Errorf("sampling (one packet in %d) is for latency mode only", opts.Sample)
	}
	if err := specs.SampleN.Set(opts.Sample); err != nil {
		return nil, fmt.Errorf("set sample_n: %w", err)
	}
	if opts.SnapLen < 0 || opts.SnapLen > MaxSnapLen {
		return nil, fmt.Errorf("snapshot length %d: want 0 to %d bytes", opts.SnapLen, MaxSnapLen)
	}
	if err := specs.SnapLen.Set(uint32(opts.SnapLen)); err != nil {
		return nil, fmt.Errorf("set snap_len: %w", err)
	}
	if opts.probeParse {
		if err := specs.TcxProbeParse.Set(uint32(1)); err != nil {
			return nil, fmt.Errorf("set tcx_probe_parse: %w", err)
		}
	}
	if opts.Filter != nil {
		if err := specs.ExprFilter.Set(uint32(1)); err != nil {
			return nil, fmt.Errorf("set expr_filter: %w", err)
		}
	}

	// Each hook's program variant that this kernel's tracepoint can feed
	// (kfree_skb's reason came in 5.17, consume_skb's location in 6.3).
	progs, err := ChoosePrograms(kspec, hooks)
	if err != nil {
		return nil, err
	}
	engine := opts.Engine
	if engine == EngineAuto {
		engine = EngineTracepoint
	}
	// Load only the programs of the hooks asked for; under the tcx engine
	// the hop hooks are tcx programs instead of tracepoints.
	var tpSpecs []*ebpf.ProgramSpec // programs attached to tracepoints
	tcxSpecs := map[Hook]*ebpf.ProgramSpec{}
	wanted := map[*ebpf.ProgramSpec]bool{}
	for i, p := range progs {
		if engine == EngineTCX {
			if ps := tcxProgram(&specs.HoptraceProgramSpecs, p.Hook); ps != nil {
				tcxSpecs[p.Hook] = ps
				wanted[ps] = true
				progs[i] = Program{Hook: p.Hook, Tracepoint: ps.SectionName, Name: ps.Name, Args: -1}
				continue
			}
		}
		ps, ok := spec.Programs[p.Name]
		if !ok {
			return nil, fmt.Errorf("program %s not in the BPF object", p.Name)
		}
		tpSpecs = append(tpSpecs, ps)
		wanted[ps] = true
	}
	for name, ps := range spec.Programs {
		if !wanted[ps] {
			delete(spec.Programs, name)
		}
	}
	if err := specs.NrCpus.Set(uint32(ncpu)); err != nil {
		return nil, fmt.Errorf("set nr_cpus: %w", err)
	}

	if opts.Filter != nil {
		for name, p := range spec.Programs {
			if p.Instructions, err = injectFilter(p.Instructions, opts.Filter); err != nil {
				return nil, fmt.Errorf("program %s: %w", name, err)
			}
		}
	}

	t := &Tracer{hooks: hooks, chosenProg: progs, ringBytes: ring, engine: engine}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{KernelTypes: kspec},
	})
	if err != nil {
		return nil, loadError(err)
	}
	defer coll.Close() // closes whatever t did not take over
	if err := coll.Assign(&t.maps); err != nil {
		return nil, fmt.Errorf("assign BPF maps: %w", err)
	}
	if t.quiet, err = startQuietKeeper(t.maps.Activity, stale); err != nil {
		t.Close()
		return nil, err
	}
	if engine == EngineTCX {
		t.tcx = &tcxState{devs: map[DevKey]*devLinks{}}
		for h, ps := range tcxSpecs {
			prog := coll.Programs[ps.Name]
			delete(coll.Programs, ps.Name)
			t.progs = append(t.progs, prog)
			if h == event.HookNetDevQueue {
				t.tcx.egress = prog
			} else {
				t.tcx.ingress = prog
			}
		}
	}
	for _, ps := range tpSpecs {
		prog := coll.Programs[ps.Name]
		delete(coll.Programs, ps.Name)
		t.progs = append(t.progs, prog)
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("attach %s to tracepoint %s: %w", ps.Name, ps.AttachTo, err)
		}
		t.links = append(t.links, l)
	}
	return t, nil
}

func setBenignDrops(spec *ebpf.CollectionSpec, entries []benign.Entry, kspec *btf.Spec) error {
	if entries == nil {
		var err error
		if entries, err = LoadBenignDrops(kspec); err != nil {
			return err
		}
	}
	if len(entries) > benign.MaxEntries {
		return fmt.Errorf("%d benign drop entries, at most %d", len(entries), benign.MaxEntries)
	}
	var (
		start, end [benign.MaxEntries]uint64
		reason     [benign.MaxEntries][2]uint32
		anyReason  [benign.MaxEntries]uint8
		packet     [benign.MaxEntries]benign.Packet
	)
	for i, e := range entries {
		start[i], end[i], reason[i], packet[i] = e.Start, e.End, e.Reasons, e.Packet
		if e.AnyReason {
			anyReason[i] = 1
		}
	}
	for name, v := range map[string]any{
		"benign_count": uint32(len(entries)),
		"benign_start": start, "benign_end": end,
		"benign_reason": reason, "benign_any_reason": anyReason, "benign_packet_of": packet,
	} {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("set %s: no such variable in the BPF object", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// filterStub is the function in the BPF object whose body is a filter
// expression's program.
const filterStub = "pcap_filter"

// injectFilter replaces the body of the filter stub, a BPF-to-BPF function
// linked into the program, with the filter's instructions. The function's
// first instruction keeps its metadata (symbol, BTF function and line info),
// so calls and the verifier's view of subprograms stay as compiled.
func injectFilter(insns asm.Instructions, filter asm.Instructions) (asm.Instructions, error) {
	if len(filter) == 0 {
		return nil, errors.New("empty filter program")
	}
	start := -1
	for i, ins := range insns {
		if ins.Symbol() == filterStub {
			start = i
			break
		}
	}
	if start < 0 {
		return insns, nil // a program that never starts tracking (end hooks) has no call to it
	}
	end := len(insns)
	for i := start + 1; i < len(insns); i++ {
		if btf.FuncMetadata(&insns[i]) != nil {
			end = i
			break
		}
	}
	body := make(asm.Instructions, len(filter))
	copy(body, filter)
	body[0] = body[0].WithMetadata(insns[start].Metadata)
	out := make(asm.Instructions, 0, len(insns)-(end-start)+len(body))
	out = append(out, insns[:start]...)
	out = append(out, body...)
	return append(out, insns[end:]...), nil
}

// loadError turns a load failure into one clear sentence, printing the
// verifier log in full first when there is one.
func loadError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		fmt.Fprintf(os.Stderr, "BPF verifier log:\n%+v\n", ve)
		return fmt.Errorf("the kernel's verifier rejected a hoptrace program (log above): %w", err)
	}
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("loading BPF programs was refused (check kernel.unprivileged_bpf_disabled and lockdown): %w", err)
	case errors.Is(err, unix.ENOMEM):
		return fmt.Errorf("not enough memory for BPF maps (memory cgroup limit?): %w", err)
	}
	return fmt.Errorf("load BPF programs: %w", err)
}

// Engine is the engine loaded: EngineTracepoint or EngineTCX.
func (t *Tracer) Engine() Engine { return t.engine }

// ConsumeHasLocation reports whether the consume_skb program loaded
// receives the caller's address (6.3+).
func (t *Tracer) ConsumeHasLocation() bool {
	return t.program(event.HookConsumeSkb) == "on_consume_skb"
}

// DropHasReason reports whether the kfree_skb program loaded receives the
// drop reason (5.17+); without it drops carry only the dropping function.
func (t *Tracer) DropHasReason() bool { return t.program(event.HookKfreeSkb) == "on_kfree_skb" }

// Programs returns the program loaded for each hook, in Hooks order.
func (t *Tracer) Programs() []Program { return append([]Program(nil), t.chosenProg...) }

func (t *Tracer) program(h Hook) string {
	for _, p := range t.chosenProg {
		if p.Hook == h {
			return p.Name
		}
	}
	return ""
}

// Hooks returns the hooks attached.
func (t *Tracer) Hooks() []Hook { return t.hooks }

// Events is the ring buffer map the programs write to.
func (t *Tracer) Events() *ebpf.Map { return t.maps.Events }

// RingBytes is the ring buffer's size.
func (t *Tracer) RingBytes() int { return t.ringBytes }

// Hists is the latency histogram map: a per-CPU hash, struct hop_pair -> one
// struct hist per possible CPU (latency.Snapshot sums them).
func (t *Tracer) Hists() *ebpf.Map { return t.maps.Hists }

// Quiet reports whether the programs are in their quiet state: nothing was
// tracked for StaleAfter + StaleAfter/8, so no in-flight entry can match.
func (t *Tracer) Quiet() bool { return t.quiet != nil && t.quiet.isQuiet() }

// InFlight is the in-flight table of tracked skbs, mapped on first use
// (Close unmaps it).
func (t *Tracer) InFlight() (*InFlight, error) {
	if t.inflight == nil {
		f, err := MapInFlight(t.maps.BySkb)
		if err != nil {
			return nil, err
		}
		t.inflight = f
	}
	return t.inflight, nil
}

// slowDetachLinks is how many tcx links take long enough to close (about
// 10 ms each, one at a time: see tcxWorkers) for CloseNoting to say so.
const slowDetachLinks = 128

// CloseNoting is Close, first telling note when closing the tcx links will
// take more than a second or so, so that a Ctrl-C that seems to hang is
// explained.
func (t *Tracer) CloseNoting(note func(string)) error {
	if t.tcx != nil && note != nil {
		if n := t.tcx.links(); n >= slowDetachLinks {
			note(fmt.Sprintf("detaching %d tcx links: the kernel takes them one at a time", n))
		}
	}
	return t.Close()
}

// Close detaches every program and frees every map. Safe to call twice.
func (t *Tracer) Close() error {
	var errs []error
	if t.tcx != nil {
		errs = append(errs, t.tcx.closeLinks())
	}
	for _, l := range t.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	t.links = nil
	if t.quiet != nil {
		errs = append(errs, t.quiet.close())
	}
	errs = append(errs, t.inflight.Close())
	t.inflight = nil
	if err := t.maps.Close(); err != nil {
		errs = append(errs, err)
	}
	t.maps = bpfobj.HoptraceMaps{}
	for _, p := range t.progs {
		if err := p.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	t.progs = nil
	return errors.Join(errs...)
}

// Stats are the kernel-side counters, summed over CPUs.
type Stats struct {
	Lost        uint64 // dropped: ring buffer full
	Packets     uint64 // packet identities created
	Reused      uint64 // skb addresses found reused by another packet
	HistUpdates uint64
	HistFull    uint64 // hop pairs not recorded: histogram map full
	HistNoMem   uint64 // hop pairs not recorded: no kernel memory for a new histogram
	Evicted     uint64 // packets in flight pushed out of the in-flight table by a new one
}

// Stats reads the counters.
func (t *Tracer) Stats() (Stats, error) {
	var s Stats
	read := func(idx bpfobj.HoptraceStatCounter) (uint64, error) {
		var perCPU []uint64
		if err := t.maps.Stats.Lookup(uint32(idx), &perCPU); err != nil {
			return 0, fmt.Errorf("read stat %d: %w", idx, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		return sum, nil
	}
	var err error
	for _, f := range []struct {
		idx bpfobj.HoptraceStatCounter
		dst *uint64
	}{
		{bpfobj.HoptraceStatCounterSTAT_LOST, &s.Lost},
		{bpfobj.HoptraceStatCounterSTAT_PACKETS, &s.Packets},
		{bpfobj.HoptraceStatCounterSTAT_REUSED, &s.Reused},
		{bpfobj.HoptraceStatCounterSTAT_HIST_UPDATES, &s.HistUpdates},
		{bpfobj.HoptraceStatCounterSTAT_HIST_FULL, &s.HistFull},
		{bpfobj.HoptraceStatCounterSTAT_HIST_NOMEM, &s.HistNoMem},
		{bpfobj.HoptraceStatCounterSTAT_EVICTED, &s.Evicted},
	} {
		if *f.dst, err = read(f.idx); err != nil {
			return s, err
		}
	}
	return s, nil
}

// SelectNetns starts (or, with on=false, stops) tracking packets seen in a namespace.
func (t *Tracer) SelectNetns(inode uint32, on bool) error {
	if err := setKey(t.maps.FilterNetns, inode, on, "netns filter"); err != nil {
		return err
	}
	return t.bloom.set(t.maps.FilterBloom, bloomNetns, inode, inode, on)
}

// SelectDevice starts or stops tracking packets seen on a device.
func (t *Tracer) SelectDevice(netns uint32, ifindex int, on bool) error {
	k := bpfobj.HoptraceDevKey{Netns: netns, Ifindex: uint32(ifindex)}
	if err := setKey(t.maps.FilterDev, k, on, "device filter"); err != nil {
		return err
	}
	return t.bloom.set(t.maps.FilterBloom, bloomDev, k, devFold(k.Netns, k.Ifindex), on)
}

// SelectAddr starts or stops tracking packets from or to an address.
func (t *Tracer) SelectAddr(a netip.Addr, on bool) error {
	var k bpfobj.HoptraceAddrKey
	a = a.Unmap()
	if a.Is4() {
		k.Family = 4
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = 6
		k.Addr = a.As16()
	}
	if err := setKey(t.maps.FilterAddr, k, on, "address filter"); err != nil {
		return err
	}
	return t.bloom.set(t.maps.FilterBloom, bloomAddr, k, addrFold(k.Family, k.Addr), on)
}

// SelectPort starts or stops tracking packets to a TCP or UDP port (proto
// 6 or 17), wherever they are addressed: a container's published port
// before DNAT rewrites it.
func (t *Tracer) SelectPort(proto uint8, port uint16, on bool) error {
	k := bpfobj.HoptracePortKey{Port: port, Proto: proto}
	return setKey(t.maps.FilterPort, k, on, "port filter")
}

func setKey(m *ebpf.Map, key any, on bool, what string) error {
	if on {
		if err := m.Update(key, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update %s: %w", what, err)
		}
		return nil
	}
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete from %s: %w", what, err)
	}
	return nil
}
