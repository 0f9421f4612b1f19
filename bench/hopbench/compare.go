package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// A condition is what runs beside the workload: nothing, tcpdump, or hoptrace.
type Condition struct {
	Name string
	// Argv builds the command line; nil for the baseline.
	Argv     func(nt *Net) []string
	ReadyRe  *regexp.Regexp
	MinLinks int
	// InProc, instead of Argv, attaches something in this process.
	InProc func(nt *Net) (io.Closer, error)
}

// Workload is one measurement.
type Workload struct {
	Name string
	Run  func(ctx context.Context, nt *Net, dur time.Duration) (map[string]float64, error)
	// Only, if set, limits the workload to these conditions.
	Only []string
}

// Sample is one (round, condition, workload) measurement.
type Sample struct {
	Round     int                `json:"round"`
	Condition string             `json:"condition"`
	Workload  string             `json:"workload"`
	Metrics   map[string]float64 `json:"metrics"`
	Summary   string             `json:"summary,omitempty"`
	Error     string             `json:"error,omitempty"`
}

// hoptraceReady matches a line hoptrace may print once its programs are
// attached; without one the BPF link count is used.
var hoptraceReady = regexp.MustCompile(`(?i)^hoptrace: .*(ready|attached|tracing|listening)`)

// The measured pair is the Net's first two namespaces; the third is idle,
// selected by the *_idle conditions while the pair talks.
func conditions(hoptrace string, withLatency bool) []Condition {
	measured := func(nt *Net) []string {
		var f []string
		for _, h := range nt.Hosts[:2] {
			f = append(f, "--netns", h.Name)
		}
		return f
	}
	idle := func(nt *Net) []string { return []string{"--netns", nt.Hosts[2].Name} }
	cs := []Condition{
		{Name: "baseline"},
		{Name: "empty", InProc: func(*Net) (io.Closer, error) { return attachEmpty() }},
		{Name: "tcx_floor", InProc: attachTCXFloor},
		{Name: "tcx_floor4", InProc: attachTCXFloor4},
		{Name: "idle_floor", InProc: attachIdleFloor},
		{Name: "state_floor", InProc: attachStateFloor},
		{
			Name:    "tcpdump",
			Argv:    func(*Net) []string { return []string{"tcpdump", "-i", "any", "-w", "/dev/null", "-s", "96"} },
			ReadyRe: regexp.MustCompile(`listening on`),
		},
		{
			Name: "trace",
			Argv: func(nt *Net) []string {
				return append([]string{hoptrace, "trace", "--output", "json"}, measured(nt)...)
			},
			ReadyRe:  hoptraceReady,
			MinLinks: 5, // two hop hooks, three end hooks
		},
		{
			// No selection: every packet of every namespace is traced,
			// the bench's own traffic included (what "trace everything" costs).
			Name: "trace_all",
			Argv: func(nt *Net) []string {
				return []string{hoptrace, "trace", "--output", "json"}
			},
			ReadyRe:  hoptraceReady,
			MinLinks: 5,
		},
		{
			Name: "trace_idle",
			Argv: func(nt *Net) []string {
				return append([]string{hoptrace, "trace", "--output", "json"}, idle(nt)...)
			},
			ReadyRe:  hoptraceReady,
			MinLinks: 5,
		},
	}
	if withLatency {
		cs = append(cs, Condition{
			Name: "latency",
			Argv: func(nt *Net) []string {
				return append([]string{hoptrace, "latency"}, measured(nt)...)
			},
			ReadyRe:  hoptraceReady,
			MinLinks: 5, // hop and end hooks (the detail hooks only with --detail)
		}, Condition{
			// Target 4: one packet in 16 measured, chosen at its first hop.
			Name: "latency_sample16",
			Argv: func(nt *Net) []string {
				return append([]string{hoptrace, "latency", "--sample", "16"}, measured(nt)...)
			},
			ReadyRe:  hoptraceReady,
			MinLinks: 5,
		}, Condition{
			Name: "latency_idle",
			Argv: func(nt *Net) []string {
				return append([]string{hoptrace, "latency"}, idle(nt)...)
			},
			ReadyRe:  hoptraceReady,
			MinLinks: 5,
		})
	}
	return cs
}

// eventRate is the event rate the trace target is about; the fixed-rate UDP
// workload aims a little higher (eventAim), as iperf3's pacing falls short.
const (
	eventRate = 300_000
	eventAim  = 330_000
)

func workloads(eventsPerPacket func() float64) []Workload {
	return []Workload{
		{Name: "tcp_stream", Run: tcpStream},
		{Name: "udp64", Run: func(ctx context.Context, nt *Net, d time.Duration) (map[string]float64, error) {
			return udp64(ctx, nt, d, "1G")
		}},
		{Name: "tcp_rr", Run: tcpRR},
		{Name: "udp64_300kev", Only: []string{"trace"}, Run: func(ctx context.Context, nt *Net, d time.Duration) (map[string]float64, error) {
			pps := eventAim / eventsPerPacket()
			m, err := udp64(ctx, nt, d, fmt.Sprintf("%.0f", pps*64*8))
			if m != nil {
				m["target_pps"] = pps
			}
			return m, err
		}},
	}
}

// CompareOptions configure the A/B comparison.
type CompareOptions struct {
	Rounds   int
	Duration time.Duration
	Hoptrace string
	Latency  bool     // include hoptrace latency
	Only     []string // conditions to run (baseline always); empty: all
	BPFStats int      // rounds of a separate pass that collects BPF program run time (0: none)
	PerfDir  string   // if set, profile UDP 64 B under each BPF condition with perf, after the rounds
	Log      io.Writer
}

// Compare runs every workload under every condition, condition after
// condition within a round, round after round.
//
// The ratios come from rounds with the kernel's BPF run time statistics off:
// statistics add two clock reads to every program run, a cost no user pays.
// The statistics come from a pass of their own after the rounds (stats), run
// the same way with statistics on.
func Compare(ctx context.Context, nt *Net, opts CompareOptions) (samples, stats []Sample, profiles []Profile, err error) {
	srv, err := startServers(ctx, nt)
	if err != nil {
		return nil, nil, nil, err
	}
	defer srv.Close()
	epp := 6.0 // events per UDP packet, measured by the trace condition's udp64 run
	conds := conditions(opts.Hoptrace, opts.Latency)
	for _, n := range opts.Only {
		if !slices.ContainsFunc(conds, func(c Condition) bool { return c.Name == n }) {
			return nil, nil, nil, fmt.Errorf("unknown condition %q", n)
		}
	}
	if len(opts.Only) > 0 {
		conds = slices.DeleteFunc(conds, func(c Condition) bool { return c.Name != "baseline" && !slices.Contains(opts.Only, c.Name) })
	}
	works := workloads(func() float64 { return epp })
	pass := func(name string, rounds int, keep func(Condition) bool) ([]Sample, error) {
		var out []Sample
		for round := 1; round <= rounds; round++ {
			for _, c := range roundOrder(conds, round) {
				if !keep(c) {
					continue
				}
				for _, w := range works {
					if len(w.Only) > 0 && !contains(w.Only, c.Name) {
						continue
					}
					if ctx.Err() != nil {
						return out, ctx.Err()
					}
					s := runOne(ctx, nt, c, w, opts.Duration)
					s.Round = round
					if s.Error != "" {
						fmt.Fprintf(opts.Log, "%s %d %-8s %-12s ERROR %s\n", name, round, c.Name, w.Name, s.Error)
					} else {
						fmt.Fprintf(opts.Log, "%s %d %-8s %-12s %s\n", name, round, c.Name, w.Name, fmtMetrics(s.Metrics))
					}
					if name == "round" && c.Name == "trace" && w.Name == "udp64" && s.Metrics["tx_packets"] > 0 && s.Metrics["events_produced"] > 0 {
						epp = s.Metrics["events_produced"] / s.Metrics["tx_packets"]
					}
					out = append(out, s)
				}
			}
		}
		return out, nil
	}
	samples, err = pass("round", opts.Rounds, func(Condition) bool { return true })
	if err != nil {
		return samples, nil, nil, err
	}
	if opts.BPFStats > 0 {
		// Statistics stay on while this descriptor is open, and only then.
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			fmt.Fprintf(opts.Log, "BPF run time statistics unavailable: %v\n", err)
		} else {
			stats, err = pass("stats", opts.BPFStats, func(c Condition) bool { return c.Argv != nil || c.InProc != nil })
			st.Close()
			if err != nil {
				return samples, stats, nil, err
			}
		}
	}
	if opts.PerfDir != "" {
		for _, c := range conds {
			if c.Argv == nil && c.InProc == nil || c.Name == "tcpdump" {
				continue
			}
			for _, w := range works {
				if w.Name != "udp64" || ctx.Err() != nil {
					continue
				}
				pr := ProfileRun(ctx, nt, c, w, opts.Duration+time.Second, opts.PerfDir)
				fmt.Fprintf(opts.Log, "profile %-8s %-8s %d samples %v %s\n", c.Name, w.Name, pr.Samples, pr.Symbols, pr.Error)
				profiles = append(profiles, pr)
			}
		}
	}
	return samples, stats, profiles, nil
}

func runOne(ctx context.Context, nt *Net, c Condition, w Workload, dur time.Duration) Sample {
	s := Sample{Condition: c.Name, Workload: w.Name, Metrics: map[string]float64{}}
	// BPF programs on the same tracepoints, loaded by other processes, slow
	// every condition: count them so that the report can say so.
	s.Metrics["foreign_progs"] = float64(countHoptracePrograms())
	s.Metrics["loadavg1"] = loadAvg1()
	var p *Proc
	if c.Argv != nil {
		var err error
		p, err = StartProc(c.Name, c.Argv(nt), nil, c.ReadyRe, c.MinLinks)
		if err != nil {
			s.Error = err.Error()
			return s
		}
		defer p.Kill()
		ready, _, err := p.WaitReady(ctx, 20*time.Second, time.Second)
		if err != nil {
			s.Error = err.Error()
			return s
		}
		s.Metrics["tool_start_s"] = ready.Seconds()
		time.Sleep(200 * time.Millisecond)
	}
	var self *Proc // BPF statistics of in-process programs
	if c.InProc != nil {
		cl, err := c.InProc(nt)
		if err != nil {
			s.Error = err.Error()
			return s
		}
		defer cl.Close()
		self = &Proc{Cmd: &exec.Cmd{Process: &os.Process{Pid: os.Getpid()}}}
	}
	var b0s BPFStats
	if self != nil {
		b0s = self.BPFSample()
	}
	var u0 Usage
	var b0 BPFStats
	if p != nil {
		u0, _ = p.Sample()
		b0 = p.BPFSample()
	}
	t0 := time.Now()
	m, err := w.Run(ctx, nt, dur)
	elapsed := time.Since(t0)
	for k, v := range m {
		s.Metrics[k] = v
	}
	if err != nil {
		s.Error = err.Error()
	}
	if self != nil {
		recordBPF(s.Metrics, b0s, self.BPFSample(), elapsed)
	}
	if p != nil {
		u1, _ := p.Sample()
		recordBPF(s.Metrics, b0, p.BPFSample(), elapsed)
		s.Metrics["tool_cpu_pct"] = 100 * (u1.CPU - u0.CPU).Seconds() / elapsed.Seconds()
		s.Metrics["tool_hwm_mb"] = float64(u1.HWMKB) / 1024
		exit, err := p.Stop(10 * time.Second)
		s.Metrics["tool_exit_s"] = exit.Seconds()
		if err != nil && s.Error == "" {
			s.Error = err.Error()
		}
		s.Metrics["tool_cpu_s"] = (u1.CPU - u0.CPU).Seconds()
		sum := ParseSummary(p.Stderr())
		s.Summary = sum.Line
		if strings.HasPrefix(sum.Line, "hoptrace:") {
			s.Metrics["events_received"] = float64(sum.Events)
			s.Metrics["events_lost"] = float64(sum.Lost)
			s.Metrics["events_produced"] = float64(sum.Produced)
			s.Metrics["events_per_s"] = float64(sum.Produced) / elapsed.Seconds()
		} else if sum.Found {
			s.Metrics["captured"] = float64(sum.Packets)
			s.Metrics["kernel_dropped"] = float64(sum.Dropped)
		}
	}
	return s
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func fmtMetrics(m map[string]float64) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(&b, "%s=%.4g ", k, m[k])
	}
	return b.String()
}

// hasSubcommand reports whether the hoptrace binary knows a subcommand.
func hasSubcommand(bin, name string) bool {
	out, err := exec.Command(bin, name, "--help").CombinedOutput()
	return err == nil && !bytes.Contains(out, []byte("No help topic"))
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// countHoptracePrograms counts loaded BPF programs named like hoptrace's
// (on_*), whoever loaded them.
func countHoptracePrograms() int {
	// Attached programs only: a program of a process that just exited keeps
	// its id until the kernel frees it, detached, costing nothing.
	n := 0
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			continue
		}
		pi, err := p.Info()
		p.Close()
		if err == nil && strings.HasPrefix(pi.Name, "on_") {
			n++
		}
	}
	return n
}

// recordBPF stores the difference of two BPF statistics samples.
func recordBPF(m map[string]float64, b0, b1 BPFStats, elapsed time.Duration) {
	if b1.RunCount <= b0.RunCount {
		return
	}
	runs := float64(b1.RunCount - b0.RunCount)
	rt := (b1.Runtime - b0.Runtime).Seconds()
	m["bpf_runs_per_s"] = runs / elapsed.Seconds()
	m["bpf_ns_per_run"] = rt * 1e9 / runs
	m["bpf_cpu_pct"] = 100 * rt / elapsed.Seconds()
	m["bpf_runs"] = runs
	m["bpf_s"] = rt
	for name, ps := range b1.ByName {
		if d := ps.RunCount - b0.ByName[name].RunCount; d > 0 {
			m["bpf_ns_"+name] = float64(ps.Runtime-b0.ByName[name].Runtime) / float64(d)
			m["bpf_rate_"+name] = float64(d) / elapsed.Seconds()
		}
	}
}

// loadAvg1 is the 1-minute load average: other work on the machine.
func loadAvg1() float64 {
	f := strings.Fields(loadAvg())
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// roundOrder is the order of the conditions in a round (from 1): each round
// starts one condition later than the one before, so a drift within a
// round (a VM's neighbours, state the host builds up) weighs on every
// condition alike over the rounds, not always on the last ones.
func roundOrder[T any](conds []T, round int) []T {
	if len(conds) == 0 {
		return nil
	}
	k := (round - 1) % len(conds)
	return append(slices.Clone(conds[k:]), conds[:k]...)
}
