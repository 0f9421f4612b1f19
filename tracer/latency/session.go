package latency

import (
	"context"
	"errors"
	"time"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/pktfilter"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// DefaultHooks are the hooks latency mode observes unless told otherwise:
// the same as a trace with the same detail (trace.Config.Detail), so that
// the per-hop deltas of `hoptrace trace [--detail]` and the pairs here
// measure the same steps. Without detail these are the device hops and the
// ends: with the tcx engine, programs on the devices plus the end
// tracepoints, so traffic nobody selected pays only the devices it crosses
// and the end tracepoints' one lookup. The detail hooks (net_dev_start_xmit,
// netif_rx, napi_gro_receive_entry) are tracepoints that run for every
// packet of the host, selected or not, with either engine.
func DefaultHooks(detail bool) []loader.Hook {
	hooks := append([]loader.Hook{}, loader.HopHooks...)
	if detail {
		hooks = append(hooks, loader.DetailHooks...)
	}
	return append(hooks, loader.EndHooks...)
}

// Config describes one latency session.
type Config struct {
	// Selection says which packets are measured, as for a trace.
	Selection selection.Selection
	// Filter, if set, is a filter expression run in the kernel: only
	// packets whose frame matches where they would start being tracked
	// are measured.
	Filter *pktfilter.Program

	Interval time.Duration // report every; 0: 1s
	Duration time.Duration // stop after; 0: until cancelled

	// Detail also measures the driver transmit and backlog steps (xmit,
	// backlog, gro): more pairs per path, at the cost of tracepoints that
	// run for every packet of the host.
	Detail bool
	Hooks  []loader.Hook // nil: DefaultHooks(Detail)
	// Engine: tcx programs on devices or tracepoints for the hop hooks;
	// zero (EngineAuto): tcx where the kernel has it.
	Engine loader.Engine
	// Sample measures one packet in Sample, chosen at its first hop (the
	// same packets at every hop); counts and sums are scaled by Sample in
	// every report and metric, and the reports say so. 0 or 1: every packet.
	Sample       uint32
	TrackEntries int // in-flight map size; 0: the loader's default
	HistPairs    int // histogram map size; 0: the loader's default
	// ExpireAfter: in-flight entries whose last hop is older are expired;
	// 0: 2s (twice the tracer's StaleAfter).
	ExpireAfter time.Duration
	// IdleIntervals: a pair's kernel histogram unchanged for this many
	// intervals is deleted; 0: 60, negative: never.
	IdleIntervals int

	// Report receives each interval's report and, last, the final one
	// (cumulative since the start). An error stops the session.
	Report func(*Report) error
	// Metrics, if set, is updated after every interval.
	Metrics *Metrics
	// Drops names kernel drop reasons; may be nil.
	Drops DropNamer
	// Ready, if set, is called once the programs are attached and the
	// filters set.
	Ready func()
	// Warn, if set, receives warnings (devices that could not be attached).
	Warn func(string)
}

// Run loads the tracer in latency mode and reports until ctx is cancelled
// or Duration passes; the final report covers the whole session. When
// every namespace the selection named goes away, it makes that final report
// and returns an error that wraps selection.ErrNothingLeft.
func Run(ctx context.Context, cfg Config, names selection.Resolver) error {
	interval := cfg.Interval
	if interval <= 0 {
		interval = time.Second
	}
	hooks := cfg.Hooks
	if hooks == nil {
		hooks = DefaultHooks(cfg.Detail)
	}
	engine, err := loader.ResolveEngine(cfg.Engine)
	if err != nil {
		return err
	}
	tr, err := loader.Load(loader.Options{
		Mode:         loader.ModeLatency,
		Engine:       engine,
		Hooks:        hooks,
		FilterKinds:  cfg.Selection.FilterKinds(),
		Sample:       cfg.Sample,
		Filter:       cfg.Filter.Instructions(),
		TrackEntries: cfg.TrackEntries,
		HistPairs:    cfg.HistPairs,
		RingBytes:    4096 * 4, // no events in latency mode: keep the ring small
	})
	if err != nil {
		return err
	}
	defer tr.CloseNoting(cfg.Warn)

	follow, err := selection.Follow(ctx, tr, names, cfg.Selection, selection.TracerOptions(tr, cfg.Warn))
	if err != nil {
		return err
	}
	defer follow.Close()

	rd := NewReader(tr.Hists())
	switch {
	case cfg.IdleIntervals < 0:
		rd.IdleAfter = 0
	case cfg.IdleIntervals > 0:
		rd.IdleAfter = cfg.IdleIntervals
	}
	expire := cfg.ExpireAfter
	if expire <= 0 {
		expire = 2 * time.Second
	}
	table, err := tr.InFlight()
	if err != nil {
		return err
	}
	sw := NewSweeper(table, expire)
	totals := map[Pair]*Hist{}
	var prevStats loader.Stats
	var startStats loader.Stats
	start := time.Now()
	last := start

	tick := func(final bool) error {
		hists, err := rd.Read()
		if err != nil {
			return err
		}
		for _, h := range hists {
			h.Scale(cfg.Sample)
		}
		for k, h := range hists {
			t := totals[k]
			if t == nil {
				t = new(Hist)
				totals[k] = t
			}
			t.Merge(h)
		}
		swept, err := sw.Sweep()
		if err != nil {
			return err
		}
		st, err := tr.Stats()
		if err != nil {
			return err
		}
		now := time.Now()
		refreshUnknown(names, hists)
		if cfg.Metrics != nil {
			cfg.Metrics.update(names, cfg.Drops, totals, st, sw, rd.Evicted(), swept.Entries, max(cfg.Sample, 1))
		}
		var rep Report
		if final {
			rep = BuildReport(totals, names, cfg.Drops)
			rep.Interval = now.Sub(start).Seconds()
			rep.Kernel = kernelDelta(st, startStats, rd.Evicted())
			rep.Tracking.Expired = sw.Expired()
		} else {
			rep = BuildReport(hists, names, cfg.Drops)
			rep.Interval = now.Sub(last).Seconds()
			rep.Kernel = kernelDelta(st, prevStats, 0)
			rep.Tracking.Expired = swept.Expired
		}
		rep.Time = now
		rep.Final = final
		if cfg.Sample > 1 {
			rep.Sample = cfg.Sample
		}
		rep.Tracking.Entries = swept.Entries
		rep.Tracking.Capacity = sw.Capacity()
		if sw.Capacity() > 0 {
			rep.Tracking.Fill = float64(swept.Entries) / float64(sw.Capacity())
		}
		rep.Tracking.Total = sw.Expired()
		prevStats = st
		last = now
		if cfg.Report != nil {
			return cfg.Report(&rep)
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
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return tick(true)
		case err := <-follow.Failed():
			if errors.Is(err, selection.ErrNothingLeft) {
				// the last report, as at a stop, then why it ended
				if terr := tick(true); terr != nil {
					return terr
				}
			}
			return err
		case <-ticker.C:
			if err := tick(false); err != nil {
				return err
			}
		}
	}
}

func kernelDelta(cur, prev loader.Stats, evicted uint64) Kernel {
	return Kernel{
		Packets:      cur.Packets - prev.Packets,
		HistUpdates:  cur.HistUpdates - prev.HistUpdates,
		HistFull:     cur.HistFull - prev.HistFull,
		HistNoMem:    cur.HistNoMem - prev.HistNoMem,
		Lost:         cur.Lost - prev.Lost,
		PairsEvicted: evicted,
	}
}

// refreshUnknown asks the resolver to rescan when a hop's namespace is
// unknown to it.
func refreshUnknown(names selection.Resolver, hists map[Pair]*Hist) {
	for k := range hists {
		for _, ns := range []uint32{k.From.Netns, k.To.Netns} {
			if ns == 0 || ns == names.HostInode() {
				continue
			}
			if _, ok := names.Namespace(ns); !ok {
				names.Refresh()
				return
			}
		}
	}
}
