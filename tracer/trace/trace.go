// Package trace runs a live trace: it loads the tracer with the selection
// asked for, reads events from the ring buffer, keeps the in-kernel filters
// current as namespaces, addresses and containers change, assembles paths
// and writes them out.
package trace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/pktfilter"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// Resolver is what a trace needs from the name resolver.
type Resolver interface {
	path.Names
	Links(netns uint32) []resolve.Link
	Refresh()
	Changes() <-chan struct{}
}

// Device names one interface to trace.
type Device struct {
	Netns   uint32
	Ifindex int
}

// NetnsChange adds or removes a namespace from the selection while tracing
// (containers starting and stopping).
type NetnsChange struct {
	Inode    uint32
	Selected bool
	// Ports are the host ports published for the namespace's container:
	// packets to them are selected from their first hop on the host,
	// before DNAT gives them the container's address.
	Ports []Port
}

// Port is a TCP or UDP destination port.
type Port struct {
	Proto uint8 // 6 (TCP) or 17 (UDP)
	Port  uint16
}

// Config describes one trace.
type Config struct {
	// Netns selects packets seen in these namespaces or addressed to or from them.
	Netns []uint32
	// Devices selects packets seen on these interfaces (instead of whole namespaces).
	Devices []Device
	// Dynamic, when not nil, adds and removes namespaces while tracing; the
	// trace is then filtered by namespace even while the selection is empty.
	Dynamic <-chan NetnsChange

	// Filter keeps only matching packets in the output (protocol, host, port).
	Filter pktfilter.Filter

	Count    int           // stop after this many paths (events with Events); 0: no limit
	Duration time.Duration // stop after this long; 0: until cancelled
	Events   bool          // stream every event instead of assembled paths
	Detail   bool          // also observe driver and backlog steps (more events per packet)

	Format output.Format
	Out    io.Writer

	Linger time.Duration // wait after an end event; 0: 50ms
	Idle   time.Duration // a path without events this long is over; 0: 300ms
	Poll   time.Duration // how often the ring buffer is read without a wake-up; 0: 20ms

	RingBytes    int
	TrackEntries int

	Symbols path.Symbolizer
	Drops   path.DropNamer

	// Ready, if set, is called once the programs are attached and the
	// filters set: packets sent from then on are traced.
	Ready func()
	// Warn, if set, receives warnings while tracing (lost events).
	Warn func(string)
	// OnPath, if set, receives every finished path instead of the output
	// writer (for callers that analyse paths, such as verify).
	OnPath func(path.Path)
}

// Result is what a finished trace reports.
type Result struct {
	Summary output.Summary
	Hooks   []loader.Hook
}

// Run traces until ctx is cancelled, Count is reached or Duration passes.
func Run(ctx context.Context, cfg Config, names Resolver) (Result, error) {
	var res Result
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Format == "" {
		cfg.Format = output.Text
	}
	linger := orDefault(cfg.Linger, 50*time.Millisecond)
	idle := orDefault(cfg.Idle, 300*time.Millisecond)
	poll := orDefault(cfg.Poll, 20*time.Millisecond)
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	hooks := append([]loader.Hook{}, loader.HopHooks...)
	if cfg.Detail {
		hooks = append(hooks, loader.DetailHooks...)
	}
	hooks = append(hooks, loader.EndHooks...)
	kinds := FilterKinds(cfg.Devices, cfg.Netns, cfg.Dynamic)
	tr, err := loader.Load(loader.Options{
		Mode:         loader.ModeEvents,
		Hooks:        hooks,
		FilterKinds:  kinds,
		RingBytes:    cfg.RingBytes,
		TrackEntries: cfg.TrackEntries,
	})
	if err != nil {
		return res, err
	}
	defer tr.Close()
	res.Hooks = tr.Hooks()

	sel := NewSelection(tr, names)
	for _, d := range cfg.Devices {
		if err := tr.SelectDevice(d.Netns, d.Ifindex, true); err != nil {
			return res, err
		}
	}
	for _, ns := range cfg.Netns {
		sel.Set(ns, true)
	}
	if err := sel.Sync(); err != nil {
		return res, err
	}

	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		return res, fmt.Errorf("open ring buffer: %w", err)
	}
	defer rd.Close()

	if cfg.Drops == nil {
		cfg.Drops = dropNames()
	}
	if cfg.Symbols == nil {
		if syms, err := kernel.LoadSymbols("/proc/kallsyms"); err == nil {
			cfg.Symbols = syms
		}
	}

	w := output.NewWriter(cfg.Out, cfg.Format)
	defer w.Flush()
	desc := &path.Describer{Names: names, Symbols: cfg.Symbols, Drops: cfg.Drops, WallOffset: wallOffset()}
	asm := path.NewAssembler(uint64(linger), uint64(idle))
	sum := output.Summary{Verdicts: map[string]uint64{}}
	unknownNetns := map[uint32]bool{}

	emitted := 0
	done := func() bool { return cfg.Count > 0 && emitted >= cfg.Count }
	flush := func(force bool) error {
		for _, p := range asm.Flush(force) {
			if done() {
				break
			}
			if len(p.Events) > 0 && !cfg.Filter.Match(&p.Events[0].Meta) {
				continue
			}
			pa := desc.Describe(p)
			if len(pa.Hops) == 0 && !path.EarlyDrop(&pa) {
				continue // only end events: the packet's hops were not selected
			}
			sum.Packets++
			sum.Hops += uint64(len(pa.Hops))
			sum.Verdicts[pa.Verdict]++
			if pa.Verdict == path.Dropped {
				sum.Dropped++
			}
			emitted++
			if cfg.OnPath != nil {
				cfg.OnPath(pa)
				continue
			}
			if err := w.Path(&pa); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		}
		return w.Flush()
	}

	// tick releases finished paths and buffered output; it runs every poll
	// interval even while events keep coming, and reports lost events.
	lastTick, lastLostCheck := time.Now(), time.Now()
	var lostSeen uint64
	// drained says every event up to now was read (the ring buffer was
	// empty): paths then finish against the clock; otherwise against the
	// newest event read, however far the reader lags.
	tick := func(now time.Time, drained bool) error {
		lastTick = now
		if drained {
			asm.Advance(monotonicNow())
		}
		if cfg.Events {
			if err := w.Flush(); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		} else if err := flush(false); err != nil {
			return err
		}
		if now.Sub(lastLostCheck) >= time.Second {
			lastLostCheck = now
			if st, err := tr.Stats(); err == nil && st.Lost > lostSeen {
				if cfg.Warn != nil {
					cfg.Warn(fmt.Sprintf("%d events lost so far: the ring buffer was full (narrow the selection or raise --ring-size)", st.Lost))
				}
				lostSeen = st.Lost
			}
		}
		return nil
	}

	// Apply the selection changes of the start (the containers running
	// now) before saying the trace is ready: they arrive from a feed.
	if cfg.Dynamic != nil {
		wait := time.NewTimer(200 * time.Millisecond)
	initial:
		for {
			select {
			case ch, ok := <-cfg.Dynamic:
				if !ok {
					cfg.Dynamic = nil
					break initial
				}
				sel.Set(ch.Inode, ch.Selected)
				sel.SetPorts(ch.Inode, ch.Ports)
				wait.Reset(20 * time.Millisecond)
			case <-wait.C:
				break initial
			case <-ctx.Done():
				break initial
			}
		}
		wait.Stop()
		if err := sel.Sync(); err != nil {
			return res, err
		}
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}
	var rec ringbuf.Record
	var ev event.Event
	for ctx.Err() == nil && !done() {
		// Selection changes arrive between reads; none of them block.
		select {
		case ch, ok := <-cfg.Dynamic:
			if !ok {
				cfg.Dynamic = nil
				break
			}
			sel.Set(ch.Inode, ch.Selected)
			sel.SetPorts(ch.Inode, ch.Ports)
			if err := sel.Sync(); err != nil {
				return res, err
			}
		case <-names.Changes():
			if err := sel.Sync(); err != nil {
				return res, err
			}
		default:
		}

		now := time.Now()
		if now.Sub(lastTick) >= poll {
			if err := tick(now, false); err != nil {
				return res, err
			}
		}
		rd.SetDeadline(now.Add(poll))
		err := rd.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			if err := tick(time.Now(), true); err != nil {
				return res, err
			}
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return res, nil
		case err != nil:
			return res, fmt.Errorf("read ring buffer: %w", err)
		}
		if err := event.Decode(rec.RawSample, &ev); err != nil {
			return res, err
		}
		sum.Events++
		if ev.Netns != 0 && !unknownNetns[ev.Netns] {
			if _, ok := names.Namespace(ev.Netns); !ok && ev.Netns != names.HostInode() {
				unknownNetns[ev.Netns] = true
				names.Refresh()
			}
		}
		if cfg.Events {
			if !cfg.Filter.Match(&ev.Meta) {
				continue
			}
			he := hopEvent(desc, &ev)
			if err := w.Event(&he); err != nil {
				return res, fmt.Errorf("write output: %w", err)
			}
			emitted++
			continue
		}
		asm.Add(&ev)
	}
	if !cfg.Events && !done() {
		// Stopped from outside: take what is already in the ring buffer,
		// then release every path, finished or not.
		rd.SetDeadline(time.Now())
		for rd.ReadInto(&rec) == nil {
			if event.Decode(rec.RawSample, &ev) == nil {
				sum.Events++
				asm.Add(&ev)
			}
		}
		if err := flush(true); err != nil {
			return res, err
		}
	}
	if st, err := tr.Stats(); err == nil {
		sum.Lost = st.Lost
	}
	sum.Late = asm.Late()
	sum.Capped = asm.Capped()
	if cfg.Events {
		sum.Packets = 0
	}
	res.Summary = sum
	return res, nil
}

func hopEvent(d *path.Describer, e *event.Event) output.HopEvent {
	h := event.Hook(e.Hook)
	he := output.HopEvent{
		Time:       time.Unix(0, int64(e.TsNs)+int64(d.WallOffset)),
		PacketID:   e.PktId,
		Hook:       event.HookName(h),
		Direction:  string(event.HookDirection(h)),
		NetnsInode: e.Netns,
		Ifindex:    int(e.Ifindex),
		Ifname:     event.Ifname(e),
		Kind:       "unknown",
		Skb:        path.SkbString(e.Skb),
		Len:        e.Len,
		CPU:        e.Cpu,
		TsNs:       e.TsNs,
		Summary:    event.Summary(&e.Meta),
		New:        e.Flags&event.FlagNew != 0,
		Clone:      e.Flags&event.FlagClone != 0,
	}
	if event.IsEnd(h) {
		end := d.EndEvent(e)
		he.Netns, he.DropReason, he.Location = end.Netns, end.Reason, end.Location
		if end.Ifname != "" {
			he.Ifname = end.Ifname
		}
		return he
	}
	hop := d.Hop(e)
	he.Netns, he.Container, he.Ifname, he.Kind, he.Bridge, he.Direction = hop.Netns, hop.Container, hop.Ifname, hop.Kind, hop.Bridge, hop.Direction
	return he
}

// FilterKinds says which in-kernel filters a selection needs: devices when
// interfaces are named, else namespaces and their addresses when namespaces
// are (or may become, with a dynamic feed) selected, else none.
func FilterKinds(devices []Device, netns []uint32, dynamic <-chan NetnsChange) uint32 {
	switch {
	case len(devices) > 0:
		return loader.FilterDev
	case dynamic != nil:
		return loader.FilterNetns | loader.FilterAddr | loader.FilterPort
	case len(netns) > 0:
		return loader.FilterNetns | loader.FilterAddr
	}
	return 0
}

// Selection keeps the in-kernel namespace and address filters equal to the
// selected namespaces and the addresses their interfaces have right now.
// Latency sessions use it too.
type Selection struct {
	tr    *loader.Tracer
	names Resolver
	netns map[uint32]bool
	ports map[uint32][]Port // published ports, by the namespace they lead to
	// what the kernel maps hold
	inKernelNetns map[uint32]bool
	inKernelAddrs map[netip.Addr]bool
	inKernelPorts map[Port]bool
}

// NewSelection starts with nothing selected.
func NewSelection(tr *loader.Tracer, names Resolver) *Selection {
	return &Selection{
		tr: tr, names: names,
		netns:         map[uint32]bool{},
		ports:         map[uint32][]Port{},
		inKernelNetns: map[uint32]bool{},
		inKernelAddrs: map[netip.Addr]bool{},
		inKernelPorts: map[Port]bool{},
	}
}

// SetPorts sets the published ports leading to a namespace (none: nil);
// Sync applies them while the namespace is selected.
func (s *Selection) SetPorts(inode uint32, ports []Port) {
	if len(ports) == 0 {
		delete(s.ports, inode)
		return
	}
	s.ports[inode] = ports
}

// Set selects (or unselects) a namespace; Sync applies it.
func (s *Selection) Set(inode uint32, on bool) {
	if on {
		s.netns[inode] = true
	} else {
		delete(s.netns, inode)
	}
}

// Sync makes the kernel's filters match the selection and the current
// addresses of the selected namespaces.
func (s *Selection) Sync() error {
	wantAddrs := map[netip.Addr]bool{}
	for ns := range s.netns {
		if !s.inKernelNetns[ns] {
			if err := s.tr.SelectNetns(ns, true); err != nil {
				return err
			}
			s.inKernelNetns[ns] = true
		}
		for _, l := range s.names.Links(ns) {
			for _, cidr := range l.Addrs {
				p, err := netip.ParsePrefix(cidr)
				if err != nil || p.Addr().IsLoopback() {
					continue
				}
				wantAddrs[p.Addr()] = true
			}
		}
	}
	for ns := range s.inKernelNetns {
		if !s.netns[ns] {
			if err := s.tr.SelectNetns(ns, false); err != nil {
				return err
			}
			delete(s.inKernelNetns, ns)
		}
	}
	wantPorts := map[Port]bool{}
	for ns, ports := range s.ports {
		if s.netns[ns] {
			for _, p := range ports {
				wantPorts[p] = true
			}
		}
	}
	for p := range wantPorts {
		if !s.inKernelPorts[p] {
			if err := s.tr.SelectPort(p.Proto, p.Port, true); err != nil {
				return err
			}
			s.inKernelPorts[p] = true
		}
	}
	for p := range s.inKernelPorts {
		if !wantPorts[p] {
			if err := s.tr.SelectPort(p.Proto, p.Port, false); err != nil {
				return err
			}
			delete(s.inKernelPorts, p)
		}
	}
	for a := range wantAddrs {
		if !s.inKernelAddrs[a] {
			if err := s.tr.SelectAddr(a, true); err != nil {
				return err
			}
			s.inKernelAddrs[a] = true
		}
	}
	for a := range s.inKernelAddrs {
		if !wantAddrs[a] {
			if err := s.tr.SelectAddr(a, false); err != nil {
				return err
			}
			delete(s.inKernelAddrs, a)
		}
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// monotonicNow is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// wallOffset converts monotonic event times to wall-clock times.
func wallOffset() time.Duration {
	return time.Duration(time.Now().UnixNano() - int64(monotonicNow()))
}

// dropNames reads this kernel's drop reason names; numbers are shown without them.
func dropNames() path.DropNamer {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil
	}
	d, err := kernel.LoadDropReasons(spec)
	if err != nil {
		return nil
	}
	return d
}
