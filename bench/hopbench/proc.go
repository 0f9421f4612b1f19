package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
)

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat.
const clkTck = 100

// Proc is a monitored process (tcpdump, hoptrace) running beside the workload.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	Started time.Time

	readyRe  *regexp.Regexp
	minLinks int

	mu       sync.Mutex
	stderr   []string
	ready    chan struct{}
	readyAt  time.Time
	readyOne sync.Once
	exited   chan struct{}
	waitErr  error
}

// StartProc starts argv with stdout going to out (nil: /dev/null). Ready is
// a stderr line matching readyRe or, for BPF tools, minLinks bpf_link file
// descriptors held by the process (see WaitReady).
func StartProc(name string, argv []string, out io.Writer, readyRe *regexp.Regexp, minLinks int) (*Proc, error) {
	p := &Proc{Name: name, readyRe: readyRe, minLinks: minLinks, ready: make(chan struct{}), exited: make(chan struct{})}
	p.Cmd = exec.Command(argv[0], argv[1:]...)
	p.Cmd.Stdout = out
	errPipe, err := p.Cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.Started = time.Now()
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr = append(p.stderr, line)
			p.mu.Unlock()
			if p.readyRe != nil && p.readyRe.MatchString(line) {
				p.markReady()
			}
		}
		close(done)
	}()
	go func() {
		<-done // all stderr read before Wait closes the pipe
		p.waitErr = p.Cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *Proc) markReady() {
	p.readyOne.Do(func() {
		p.readyAt = time.Now()
		close(p.ready)
	})
}

// WaitReady waits until the process says it is ready (a stderr line), or
// holds minLinks BPF links and has held them for settle, and returns the time
// from start to ready.
func (p *Proc) WaitReady(ctx context.Context, timeout, settle time.Duration) (time.Duration, bool, error) {
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var linksSince time.Time
	for {
		select {
		case <-p.ready:
			return p.readyAt.Sub(p.Started), true, nil
		case <-p.exited:
			return 0, false, fmt.Errorf("%s exited before it was ready: %v: %s", p.Name, p.waitErr, p.Stderr())
		case <-deadline:
			return 0, false, fmt.Errorf("%s not ready after %s: %s", p.Name, timeout, p.Stderr())
		case <-ctx.Done():
			return 0, false, ctx.Err()
		case <-tick.C:
			if p.minLinks > 0 && countBPFLinks(p.Cmd.Process.Pid) >= p.minLinks {
				if linksSince.IsZero() {
					linksSince = time.Now()
				} else if time.Since(linksSince) >= settle {
					return linksSince.Sub(p.Started), false, nil
				}
			}
		}
	}
}

func countBPFLinks(pid int) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if t, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && t == "anon_inode:bpf_link" {
			n++
		}
	}
	return n
}

// Usage is a process's CPU time and peak RSS.
type Usage struct {
	CPU   time.Duration // utime+stime
	HWMKB uint64        // VmHWM
	RSSKB uint64        // VmRSS
}

// Sample reads /proc/PID/stat and /proc/PID/status.
func (p *Proc) Sample() (Usage, error) { return sampleUsage(p.Cmd.Process.Pid) }

func sampleUsage(pid int) (Usage, error) {
	var u Usage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return u, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return u, errors.New("short stat")
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	u.CPU = time.Duration(ut+st) * time.Second / clkTck
	st2, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(st2), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			u.HWMKB = n
		case "VmRSS":
			u.RSSKB = n
		}
	}
	return u, nil
}

// Stop sends SIGINT and waits for the exit; it returns the time the exit
// took. After timeout the process is killed.
func (p *Proc) Stop(timeout time.Duration) (time.Duration, error) {
	t0 := time.Now()
	select {
	case <-p.exited:
		return 0, fmt.Errorf("%s had already exited: %v: %s", p.Name, p.waitErr, p.Stderr())
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
		return time.Since(t0), nil
	case <-time.After(timeout):
		_ = p.Cmd.Process.Kill()
		<-p.exited
		return time.Since(t0), fmt.Errorf("%s did not exit within %s of SIGINT; killed", p.Name, timeout)
	}
}

// Kill ends the process if it still runs (cleanup on errors).
func (p *Proc) Kill() {
	select {
	case <-p.exited:
	default:
		_ = p.Cmd.Process.Kill()
		<-p.exited
	}
}

// Stderr returns what the process wrote to stderr so far.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.stderr, "\n")
}

// Summary is what a tool's closing lines say about events.
type Summary struct {
	Found    bool
	Packets  uint64
	Events   uint64 // received by userspace
	Lost     uint64 // not written: ring buffer full
	Produced uint64 // written by the kernel side, when reported; else Events+Lost
	Dropped  uint64 // tcpdump: dropped by kernel
	Line     string
}

var (
	reEvents   = regexp.MustCompile(`(\d+) events`)
	reLost     = regexp.MustCompile(`(\d+) lost`)
	rePackets  = regexp.MustCompile(`(\d+) packets`)
	reProduced = regexp.MustCompile(`(\d+) (?:produced|written)`)
	reCaptured = regexp.MustCompile(`^(\d+) packets captured`)
	reKDropped = regexp.MustCompile(`^(\d+) packets dropped by kernel`)
)

// ParseSummary reads hoptrace's summary line ("N packets, N hops, N events,
// N lost events ...") or tcpdump's closing statistics.
func ParseSummary(stderr string) Summary {
	var s Summary
	num := func(re *regexp.Regexp, line string) (uint64, bool) {
		m := re.FindStringSubmatch(line)
		if m == nil {
			return 0, false
		}
		n, _ := strconv.ParseUint(m[1], 10, 64)
		return n, true
	}
	for _, line := range strings.Split(stderr, "\n") {
		if n, ok := num(reCaptured, line); ok {
			s.Found, s.Packets, s.Line = true, n, line
			continue
		}
		if n, ok := num(reKDropped, line); ok {
			s.Dropped = n
			continue
		}
		if !strings.HasPrefix(line, "hoptrace:") {
			continue
		}
		ev, ok := num(reEvents, line)
		if !ok {
			continue
		}
		s.Found, s.Line, s.Events = true, line, ev
		s.Lost, _ = num(reLost, line)
		s.Packets, _ = num(rePackets, line)
		if n, ok := num(reProduced, line); ok {
			s.Produced = n
		} else {
			s.Produced = s.Events + s.Lost
		}
	}
	return s
}

// BPFStats is the run time and run count of a process's BPF programs.
type BPFStats struct {
	Runtime  time.Duration
	RunCount uint64
	ByName   map[string]BPFProgStats
}

// BPFProgStats is one program's counters.
type BPFProgStats struct {
	Runtime  time.Duration
	RunCount uint64
}

// programIDs returns the ids of the BPF programs a process holds, as
// program or link file descriptors (fdinfo's prog_id).
func programIDs(pid int) []ebpf.ProgramID {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	seen := map[ebpf.ProgramID]bool{}
	var ids []ebpf.ProgramID
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || k != "prog_id" {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err == nil && !seen[ebpf.ProgramID(n)] {
				seen[ebpf.ProgramID(n)] = true
				ids = append(ids, ebpf.ProgramID(n))
			}
		}
	}
	return ids
}

// BPFSample sums the run statistics of the process's programs (collected
// only while statistics are enabled).
func (p *Proc) BPFSample() BPFStats {
	st := BPFStats{ByName: map[string]BPFProgStats{}}
	for _, id := range programIDs(p.Cmd.Process.Pid) {
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		s, err := prog.Stats()
		info, ierr := prog.Info()
		prog.Close()
		if err != nil {
			continue
		}
		st.Runtime += s.Runtime
		st.RunCount += s.RunCount
		name := fmt.Sprintf("prog%d", id)
		if ierr == nil {
			name = info.Name
		}
		ps := st.ByName[name]
		ps.Runtime += s.Runtime
		ps.RunCount += s.RunCount
		st.ByName[name] = ps
	}
	return st
}
