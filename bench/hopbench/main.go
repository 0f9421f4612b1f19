// Command hopbench measures what hoptrace costs the traffic it traces, next
// to a baseline and tcpdump, and how it scales with the number of veth pairs.
// It builds its own network namespaces, veth pairs and bridge, sends traffic
// only between them, and removes them afterwards. It must run as root.
//
//	hopbench [-rounds 5] [-duration 2s] [-scale 50,200,500] [-out BENCHMARKS.md]
//	hopbench -only scale      # the scale benchmark alone
//	hopbench -only compare    # the overhead comparison alone
//	hopbench -only go         # the go test benchmarks alone
//
// rr-server and rr-client are the request/response workload's two ends,
// started inside the namespaces by hopbench itself.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "rr-server":
			err = rrServer(os.Args[2:])
		case "rr-client":
			err = rrClient(os.Args[2:])
		default:
			err = bench(os.Args[1:])
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "hopbench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := bench(nil); err != nil {
		fmt.Fprintf(os.Stderr, "hopbench: %v\n", err)
		os.Exit(1)
	}
}

func bench(args []string) error {
	fs := flag.NewFlagSet("hopbench", flag.ExitOnError)
	rounds := fs.Int("rounds", 5, "rounds of the comparison (each runs every condition)")
	dur := fs.Duration("duration", 2*time.Second, "length of each workload")
	scaleList := fs.String("scale", "50,200,500", "veth pair counts for the scale benchmark")
	hoptrace := fs.String("hoptrace", "bin/hoptrace", "hoptrace binary")
	only := fs.String("only", "", "run one part: compare, scale or go (default: all)")
	out := fs.String("out", "", "write the Markdown report here (default: stdout)")
	jsonOut := fs.String("json", "", "write raw results as JSON here")
	goCmd := fs.String("go", "go", "go command for the go test benchmarks")
	benchtime := fs.String("benchtime", "1s", "go test -benchtime")
	from := fs.String("from", "", "only render the report from a -json file of an earlier run")
	noIdle := fs.Bool("no-idle", true, "hold /dev/cpu_dma_latency at 0 while measuring, so idle CPUs poll instead of halting (a halted vCPU takes tens of µs to wake, which would swamp request/response latency)")
	perf := fs.Bool("perf", true, "after the rounds, profile UDP 64 B under each BPF condition with perf record -a -g (skipped without perf)")
	bpfStats := fs.Int("bpf-stats", 2, "rounds of a pass after the comparison that measures the run time of the tools' BPF programs (kernel BPF statistics, on only during that pass; the ratios come from rounds without them); 0: none")
	condList := fs.String("conditions", "", "comma-separated conditions to compare against the baseline (default: all); for development, a full report needs all")
	fs.Parse(args)
	if *from != "" {
		b, err := os.ReadFile(*from)
		if err != nil {
			return err
		}
		var res Results
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("%s: %w", *from, err)
		}
		if *out == "" {
			fmt.Print(res.Markdown())
			return nil
		}
		return os.WriteFile(*out, []byte(res.Markdown()), 0o644)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it creates network namespaces and runs hoptrace")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := os.Stderr

	res := &Results{
		Date: time.Now(), Kernel: kernelRelease(), CPU: cpuModel(), Cores: runtime.NumCPU(), Commit: gitCommit(),
		Command: "hopbench " + strings.Join(args, " "), Rounds: *rounds, Duration: dur.String(), LoadStart: loadAvg(),
	}
	if *noIdle {
		if f, err := holdNoIdle(); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("idle CPUs could not be kept polling (%v): request/response latency includes vCPU wake-ups.", err))
		} else {
			defer f.Close()
			res.NoIdle = true
		}
	}
	// Measure one binary throughout: bin/hoptrace may be rebuilt meanwhile.
	if snap, err := snapshotBinary(*hoptrace); err != nil {
		return fmt.Errorf("copy %s: %w", *hoptrace, err)
	} else {
		defer os.RemoveAll(filepath.Dir(snap))
		*hoptrace = snap
	}
	part := func(name string) bool { return *only == "" || *only == name }

	if part("go") {
		gb, cmd, err := RunGoBench(ctx, *goCmd, *benchtime, log)
		res.GoBench, res.GoCommand = gb, cmd
		if err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("go test -bench failed: %v", err))
			fmt.Fprintf(log, "go benchmarks: %v\n", err)
		}
	}
	if part("compare") && ctx.Err() == nil {
		withLatency := hasSubcommand(*hoptrace, "latency")
		if !withLatency {
			res.NoLatency = true
			res.Notes = append(res.Notes, "`hoptrace latency` is not in this build: its column is missing.")
		}
		nt, err := NewNet(3) // the measured pair and an idle third
		if err != nil {
			return fmt.Errorf("benchmark network: %w", err)
		}
		disableIPv6(nt)
		fmt.Fprintf(log, "network: bridge %s, %s %s, %s %s\n", nt.Bridge, nt.Hosts[0].Name, nt.Hosts[0].Addr, nt.Hosts[1].Name, nt.Hosts[1].Addr)
		copts := CompareOptions{Rounds: *rounds, Duration: *dur, Hoptrace: *hoptrace, Latency: withLatency, BPFStats: *bpfStats, Log: log}
		if *condList != "" {
			copts.Only = strings.Split(*condList, ",")
		}
		if *perf {
			if _, err := exec.LookPath("perf"); err == nil {
				dir, err := os.MkdirTemp("", "hopbench-perf")
				if err == nil {
					defer os.RemoveAll(dir)
					copts.PerfDir = dir
				}
			}
		}
		samples, stats, profiles, err := Compare(ctx, nt, copts)
		res.Samples, res.StatsSamples, res.Profiles = samples, stats, profiles
		if cerr := nt.Close(); cerr != nil {
			fmt.Fprintf(log, "cleanup: %v\n", cerr)
		}
		if err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("comparison stopped early: %v", err))
		}
		foreign := 0
		for _, s := range samples {
			if s.Metrics["foreign_progs"] > 0 {
				foreign++
			}
		}
		busy := 0
		for _, s := range samples {
			if s.Metrics["loadavg1"] > float64(2*runtime.NumCPU()) {
				busy++
			}
		}
		if busy > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%d of %d measurements started with a 1-minute load average above %d (other work on the machine, beyond the benchmark's own): their values are suspect.", busy, len(samples), 2*runtime.NumCPU()))
		}
		if foreign > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%d of %d measurements started while BPF programs of another hoptrace process (tests running on the same machine) were attached: they slow every condition, the baseline too.", foreign, len(samples)))
		}
		for _, s := range samples {
			if s.Error != "" {
				res.Notes = append(res.Notes, fmt.Sprintf("round %d %s %s failed: %s", s.Round, s.Condition, s.Workload, oneLineErr(s.Error)))
			}
		}
	}
	if part("scale") && ctx.Err() == nil {
		for _, f := range strings.Split(*scaleList, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 60000 {
				return fmt.Errorf("-scale: bad count %q", f)
			}
			if ctx.Err() != nil {
				break
			}
			res.Scale = append(res.Scale, Scale(ctx, *hoptrace, n, log))
		}
	}
	res.LoadEnd = loadAvg()
	md := res.Markdown()
	if *out == "" {
		fmt.Print(md)
	} else if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		return err
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// holdNoIdle asks for zero wake-up latency (PM QoS) until the file is closed.
func holdNoIdle() (*os.File, error) {
	f, err := os.OpenFile("/dev/cpu_dma_latency", os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	var zero [4]byte // an s32 of 0 µs
	if _, err := f.Write(zero[:]); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// snapshotBinary copies the binary to a private directory.
func snapshotBinary(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "hopbench-bin")
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "hoptrace")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dst, nil
}
