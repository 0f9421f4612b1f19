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

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/pcapng"
	"github.com/hoptrace/hoptrace/tracer/pktfilter"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// Resolver is what a trace needs from the name resolver.
type Resolver = selection.Resolver

// Config describes one trace.
type Config struct {
	// Selection says which packets are traced (namespaces, devices, a
	// live feed of namespaces); the zero value traces every packet.
	Selection selection.Selection

	// Filter, if set, is a filter expression run in the kernel: a packet
	// starts being traced only at a hop where its frame matches.
	Filter *pktfilter.Program
	// Capture, if set, receives every path with its frames (pcapng, -w);
	// the kernel then copies each frame's headers into its events.
	Capture *pcapng.Writer

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
	// Engine observes the hop hooks with tcx programs on devices or with
	// tracepoints; zero (EngineAuto): tcx where the kernel has it.
	Engine loader.Engine

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
	// Rules, if set, names the netfilter rule of NETFILTER_DROP paths and
	// is kept told the selection's addresses (see package nftrace).
	Rules RuleNamer
}

// RuleNamer names the rule that dropped a packet; *nftrace.Tracer
// implements it.
type RuleNamer interface {
	// Annotate sets the path's rule from the packet's first-hop headers.
	Annotate(p *path.Path, m *event.Meta)
	// SetAddrs says which addresses the selection has now.
	SetAddrs(addrs []netip.Addr) error
	// Lost counts the times trace events could not be delivered (a full socket buffer).
	Lost() uint64
}

// Result is what a finished trace reports.
type Result struct {
	Summary output.Summary
	Hooks   []loader.Hook
	Engine  loader.Engine // the engine used: tracepoint or tcx
}

// Run traces until ctx is cancelled, Count is reached or Duration passes.
// When every namespace the selection named goes away, it ends as if
// stopped (its Result whole) and returns an error that wraps
// selection.ErrNothingLeft.
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

	hooks := append([]loader.Hook{}, loader.HopHooks...)
	if cfg.Detail {
		hooks = append(hooks, loader.DetailHooks...)
	}
	hooks = append(hooks, loader.EndHooks...)
	engine, err := loader.ResolveEngine(cfg.Engine)
	if err != nil {
		return res, err
	}
	opts := loader.Options{
		Mode:         loader.ModeEvents,
		Engine:       engine,
		Hooks:        hooks,
		FilterKinds:  cfg.Selection.FilterKinds(),
		Filter:       cfg.Filter.Instructions(),
		RingBytes:    cfg.RingBytes,
		TrackEntries: cfg.TrackEntries,
	}
	if cfg.Capture != nil {
		opts.SnapLen = cfg.Capture.SnapLen()
	}
	tr, err := loader.Load(opts)
	if err != nil {
		return res, err
	}
	defer tr.CloseNoting(cfg.Warn)
	res.Hooks, res.Engine = tr.Hooks(), tr.Engine()

	fopts := selection.TracerOptions(tr, cfg.Warn)
	if cfg.Rules != nil {
		fopts.OnAddrs = cfg.Rules.SetAddrs
	}
	follow, err := selection.Follow(ctx, tr, names, cfg.Selection, fopts)
	if err != nil {
		return res, err
	}
	defer follow.Close()

	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		return res, fmt.Errorf("open ring buffer: %w", err)
	}
	defer rd.Close()
	waiter, err := newRingWaiter(tr.Events(), rd)
	if err == nil {
		defer waiter.Close()
	} // else the reader waits itself

	if cfg.Drops == nil {
		if d := kernel.KernelDropReasons(); d != nil {
			cfg.Drops = d
		}
	}
	if cfg.Symbols == nil {
		if syms, err := kernel.LoadSymbols("/proc/kallsyms"); err == nil {
			cfg.Symbols = syms
		}
	}

	w := output.NewWriter(cfg.Out, cfg.Format)
	defer w.Flush()
	// Names are kept from one path to the next within a flush (or between
	// two ticks with --events), and asked for again after.
	desc := &path.Describer{Names: names, Symbols: cfg.Symbols, Drops: cfg.Drops, WallOffset: wallOffset(), CacheNames: true}
	asm := path.NewAssembler(uint64(linger), uint64(idle))
	sum := output.Summary{Verdicts: map[string]uint64{}}
	unknownNetns := map[uint32]bool{}

	emitted := 0
	done := func() bool { return cfg.Count > 0 && emitted >= cfg.Count }
	// pa is the path being written, its memory reused from one to the
	// next: the writer and the capture are done with a path when they
	// return (OnPath callers keep theirs, and get their own).
	var pa path.Path
	emit := func(p *path.Packet) error {
		if cfg.OnPath != nil {
			pa = path.Path{}
		}
		desc.DescribeInto(p, &pa)
		if len(pa.Hops) == 0 && !path.EarlyDrop(&pa) {
			if cfg.Capture != nil {
				cfg.Capture.Discard(p.ID)
			}
			return nil // only end events: the packet's hops were not selected
		}
		if cfg.Rules != nil {
			cfg.Rules.Annotate(&pa, &p.Events[0].Meta)
		}
		sum.Packets++
		sum.Hops += uint64(len(pa.Hops))
		sum.Verdicts[pa.Verdict]++
		if pa.Verdict == path.Dropped {
			sum.Dropped++
		}
		emitted++
		if cfg.Capture != nil {
			if err := cfg.Capture.Path(&pa); err != nil {
				return err
			}
		}
		if cfg.OnPath != nil {
			cfg.OnPath(pa)
			return nil
		}
		if err := w.Path(&pa); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return nil
	}
	flush := func(force bool) error {
		desc.ForgetNames()
		for _, p := range asm.Flush(force) {
			if done() {
				break
			}
			err := emit(p)
			asm.Release(p)
			if err != nil {
				return err
			}
		}
		if cfg.Capture != nil {
			if err := cfg.Capture.Flush(); err != nil {
				return fmt.Errorf("write capture: %w", err)
			}
		}
		return w.Flush()
	}

	// tick releases finished paths and buffered output; it runs every poll
	// interval even while events keep coming, and reports lost events.
	lastTick, lastLostCheck := time.Now(), time.Now()
	var lostSeen, rulesLost uint64
	// drained says every event up to now was read (the ring buffer was
	// empty): paths then finish against the clock; otherwise against the
	// newest event read, however far the reader lags.
	tick := func(now time.Time, drained bool) error {
		lastTick = now
		if drained {
			asm.Advance(monotonicNow())
		}
		if cfg.Events {
			desc.ForgetNames()
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
			if cfg.Rules != nil {
				if n := cfg.Rules.Lost(); n > rulesLost {
					if cfg.Warn != nil {
						cfg.Warn(fmt.Sprintf("the nf_tables trace socket overflowed %d times so far: some drops may not name their rule", n))
					}
					rulesLost = n
				}
			}
		}
		return nil
	}

	// --duration counts from here: loading and attaching (tens of
	// seconds under emulation) is not part of it.
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}
	var rec ringbuf.Record
	var ev event.Event
	var known knownNetns
	run := 0        // records read since the last check
	var ended error // the selection went away: the trace ends as if stopped, then says why
	for !done() && ended == nil {
		// Before a read that may wait (the ring buffer looked empty), and
		// every checkEvery records while it is not: look for cancellation
		// and failed filters, tick, and set the read's deadline. In a run
		// the next record is already there, so the deadline is not looked
		// at and per-record clock reads and locks are saved.
		if rec.Remaining == 0 || run >= checkEvery {
			run = 0
			if ctx.Err() != nil {
				break
			}
			select {
			case err := <-follow.Failed():
				if !errors.Is(err, selection.ErrNothingLeft) {
					return res, err
				}
				ended = err
				continue
			default:
			}
			now := time.Now()
			if now.Sub(lastTick) >= poll {
				known.reset()
				if err := tick(now, false); err != nil {
					return res, err
				}
			}
			if waiter == nil {
				rd.SetDeadline(now.Add(poll))
			} else {
				if rec.Remaining == 0 {
					if err := waiter.wait(now.Add(poll)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
						return res, fmt.Errorf("wait for the ring buffer: %w", err)
					}
				}
				// data waits (or the deadline passed): read without waiting
				rd.SetDeadline(now)
			}
		}
		run++
		err := rd.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			rec.Remaining = 0
			known.reset()
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
		if cfg.Capture != nil {
			cfg.Capture.Keep(&ev, rec.RawSample)
		}
		if ev.Netns != 0 && !known.has(ev.Netns) && !unknownNetns[ev.Netns] {
			if _, ok := names.Namespace(ev.Netns); !ok && ev.Netns != names.HostInode() {
				unknownNetns[ev.Netns] = true
				names.Refresh()
			} else {
				known.add(ev.Netns)
			}
		}
		if cfg.Events {
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
				if cfg.Capture != nil {
					cfg.Capture.Keep(&ev, rec.RawSample)
				}
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
	if cfg.Capture != nil {
		if err := cfg.Capture.Close(sum); err != nil {
			return res, fmt.Errorf("write capture: %w", err)
		}
	}
	return res, ended
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
	he.Netns, he.Container, he.Ifname, he.Kind, he.Bridge, he.Direction = hop.Netns, hop.Container, hop.Ifname, string(hop.Kind), hop.Bridge, string(hop.Direction)
	return he
}

// checkEvery is how many records in a run are read between two checks of
// the clock and the context (a few µs of work at most).
const checkEvery = 64

// knownNetns remembers a few namespaces the resolver knew, so that most
// events skip asking it again; it is emptied on every tick, so that a
// namespace gone and its inode reused is asked about again soon.
type knownNetns struct {
	inodes [8]uint32
	n      int
}

func (k *knownNetns) has(inode uint32) bool {
	for _, x := range k.inodes[:k.n] {
		if x == inode {
			return true
		}
	}
	return false
}

func (k *knownNetns) add(inode uint32) {
	if k.n < len(k.inodes) {
		k.inodes[k.n] = inode
		k.n++
	}
}

func (k *knownNetns) reset() { k.n = 0 }

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
