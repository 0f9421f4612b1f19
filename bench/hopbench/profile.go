package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Profile is where the CPU went, machine-wide, while a workload ran under a
// condition: perf's inclusive ("children") share of all samples for the
// kernel symbols that tell what the BPF programs spend their time on.
type Profile struct {
	Condition string             `json:"condition"`
	Workload  string             `json:"workload"`
	Samples   int                `json:"samples"`
	Symbols   map[string]float64 `json:"symbols"` // symbol -> % of all samples, children included
	Error     string             `json:"error,omitempty"`
}

// profileSymbols are reported when present; bpf_prog_* are added as found.
var profileSymbols = []string{
	"bpf_trace_run1", "bpf_trace_run2", "bpf_trace_run3",
	"bpf_ringbuf_submit", "bpf_ringbuf_reserve", "irq_work_queue", "native_write_msr",
	"bpf_probe_read_kernel", "bpf_probe_read_kernel_str", "copy_from_kernel_nofault",
	"htab_lru_map_update_elem", "htab_lru_map_delete_elem", "htab_map_update_elem", "__htab_map_lookup_elem", "bpf_lru_pop_free",
	"bpf_ktime_get_ns",
}

// ProfileRun runs one workload under one condition with `perf record -a -g`
// over it.
func ProfileRun(ctx context.Context, nt *Net, c Condition, w Workload, dur time.Duration, dir string) Profile {
	pr := Profile{Condition: c.Name, Workload: w.Name, Symbols: map[string]float64{}}
	data := filepath.Join(dir, fmt.Sprintf("perf-%s-%s.data", c.Name, w.Name))
	var p *Proc
	if c.Argv != nil {
		var err error
		if p, err = StartProc(c.Name, c.Argv(nt), nil, c.ReadyRe, c.MinLinks); err != nil {
			pr.Error = err.Error()
			return pr
		}
		defer p.Kill()
		if _, _, err := p.WaitReady(ctx, 20*time.Second, 300*time.Millisecond); err != nil {
			pr.Error = err.Error()
			return pr
		}
	}
	if c.InProc != nil {
		cl, err := c.InProc(nt)
		if err != nil {
			pr.Error = err.Error()
			return pr
		}
		defer cl.Close()
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Run(ctx, nt, dur)
		done <- err
	}()
	time.Sleep(500 * time.Millisecond) // past iperf3's start
	rec := dur - 800*time.Millisecond
	if rec < 500*time.Millisecond {
		rec = 500 * time.Millisecond
	}
	out, err := exec.CommandContext(ctx, "perf", "record", "-a", "-g", "-q", "-o", data, "--", "sleep", secs(rec)).CombinedOutput()
	werr := <-done
	if p != nil {
		p.Stop(10 * time.Second)
	}
	if err != nil {
		pr.Error = fmt.Sprintf("perf record: %v: %s", err, bytes.TrimSpace(out))
		return pr
	}
	if werr != nil {
		pr.Error = werr.Error()
	}
	defer os.Remove(data)
	rep, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--children", "--sort", "sym", "--stdio", "-g", "none").Output()
	if err != nil {
		pr.Error = fmt.Sprintf("perf report: %v", err)
		return pr
	}
	want := map[string]bool{}
	for _, s := range profileSymbols {
		want[s] = true
	}
	sc := bufio.NewScanner(bytes.NewReader(rep))
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "# Samples: "); ok {
			f := strings.Fields(n)
			if len(f) > 0 {
				v := strings.TrimRight(f[0], "KM")
				x, _ := strconv.ParseFloat(v, 64)
				if strings.HasSuffix(f[0], "K") {
					x *= 1e3
				}
				pr.Samples = int(x)
			}
			continue
		}
		f := strings.Fields(line)
		// "  19.94%     0.23%  [k] bpf_trace_run1"
		if len(f) < 4 || !strings.HasSuffix(f[0], "%") || f[2] != "[k]" {
			continue
		}
		sym := f[3]
		if !want[sym] && !strings.HasPrefix(sym, "bpf_prog_") {
			continue
		}
		if strings.HasPrefix(sym, "bpf_prog_") {
			// bpf_prog_<tag>_<name>: keep the name
			if parts := strings.SplitN(sym, "_", 4); len(parts) == 4 {
				sym = "prog:" + parts[3]
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err == nil {
			pr.Symbols[sym] += v
		}
	}
	return pr
}
