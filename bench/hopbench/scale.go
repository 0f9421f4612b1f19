package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// ScaleResult is one scale measurement: hoptrace trace selecting N
// namespaces, each with a veth pair on one bridge.
type ScaleResult struct {
	Pairs     int       `json:"pairs"`
	CreateS   float64   `json:"create_s"`
	TeardownS float64   `json:"teardown_s"`
	scaleRun            // every namespace selected
	One       *scaleRun `json:"one,omitempty"` // only the last pair's namespace selected
}

// scaleRun is one trace over a scale topology.
type scaleRun struct {
	ReadyS     float64 `json:"ready_s"`      // start -> ready line
	FirstPathS float64 `json:"first_path_s"` // start -> first path of a packet from the last pair written out
	LastTraced bool    `json:"last_traced"`  // a later packet on the last pair was traced too
	DetachS    float64 `json:"detach_s"`     // SIGINT -> exit
	HWMMB      float64 `json:"hwm_mb"`
	CPUS       float64 `json:"cpu_s"` // CPU time until SIGINT
	Summary    string  `json:"summary"`
	Error      string  `json:"error,omitempty"`
}

// Scale measures attach and detach with n pairs.
func Scale(ctx context.Context, hoptrace string, n int, log io.Writer) (r ScaleResult) {
	r.Pairs = n
	t0 := time.Now()
	nt, err := NewNet(n)
	r.CreateS = time.Since(t0).Seconds()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer func() {
		t := time.Now()
		if err := nt.Close(); err != nil {
			fmt.Fprintf(log, "scale %d: cleanup: %v\n", n, err)
		}
		r.TeardownS = time.Since(t).Seconds()
	}()
	last := nt.Hosts[n-1]
	gw := nt.Gateway.Addr()
	firstPort, laterPort := uint16(9), uint16(10)
	probe1, err := udpSender(last, netip.AddrPortFrom(gw, firstPort))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer probe1.Close()
	probe2, err := udpSender(last, netip.AddrPortFrom(gw, laterPort))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer probe2.Close()

	all := []string{hoptrace, "trace", "--output", "json"}
	for _, h := range nt.Hosts {
		all = append(all, "--netns", h.Name)
	}
	r.scaleRun = traceScale(ctx, all, last.Addr.Addr(), probe1, probe2, firstPort, laterPort)
	fmt.Fprintf(log, "scale %d: create %.2fs ready %.3fs first path %.3fs later traced %v detach %.3fs HWM %.1f MB %s\n",
		n, r.CreateS, r.ReadyS, r.FirstPathS, r.LastTraced, r.DetachS, r.HWMMB, r.Error)
	if r.Error != "" {
		return r
	}
	one := traceScale(ctx, []string{hoptrace, "trace", "--output", "json", "--netns", last.Name}, last.Addr.Addr(), probe1, probe2, firstPort, laterPort)
	r.One = &one
	fmt.Fprintf(log, "scale %d, the last selected: ready %.3fs first path %.3fs later traced %v detach %.3fs HWM %.1f MB %s\n",
		n, one.ReadyS, one.FirstPathS, one.LastTraced, one.DetachS, one.HWMMB, one.Error)
	return r
}

// traceScale runs one trace (argv) over a scale topology: start to ready
// line, to the first path of a probe from the last pair, whether a later
// probe is traced too, and SIGINT to exit.
func traceScale(ctx context.Context, argv []string, lastAddr netip.Addr, probe1, probe2 io.Writer, firstPort, laterPort uint16) (r scaleRun) {
	pr, pw := io.Pipe()
	p, err := StartProc("hoptrace trace", argv, pw, hoptraceReady, 0)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer p.Kill()
	// Read paths; note when one from the last pair (to each probe port) appears.
	src := `"src":"` + lastAddr.String() + `"`
	var mu sync.Mutex
	seen := map[uint16]time.Time{}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			line := sc.Text()
			if !strings.Contains(line, src) {
				continue
			}
			for _, port := range []uint16{firstPort, laterPort} {
				if strings.Contains(line, fmt.Sprintf(`"dport":%d,`, port)) {
					mu.Lock()
					if _, ok := seen[port]; !ok {
						seen[port] = time.Now()
					}
					mu.Unlock()
				}
			}
		}
	}()
	defer pw.Close()
	seenAt := func(port uint16) (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		t, ok := seen[port]
		return t, ok
	}

	readyc := make(chan struct{})
	go func() {
		if d, _, err := p.WaitReady(ctx, 180*time.Second, 0); err == nil { // the ready line only
			r.ReadyS = d.Seconds()
		} else {
			r.Error = err.Error()
		}
		close(readyc)
	}()
	// Probe every 10ms until the first path from the last pair is out.
	deadline := time.Now().Add(120 * time.Second)
	for {
		if t, ok := seenAt(firstPort); ok {
			r.FirstPathS = t.Sub(p.Started).Seconds()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.Error = "no packet from the last pair traced within 120s: " + p.Stderr()
			return r
		}
		select {
		case <-p.exited:
			r.Error = "hoptrace exited: " + p.Stderr()
			return r
		default:
		}
		probe1.Write([]byte("hoptrace-bench probe"))
		time.Sleep(10 * time.Millisecond)
	}
	<-readyc
	if r.Error != "" {
		return r
	}
	// Later, the last pair is still traced.
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < 100; i++ {
		if _, ok := seenAt(laterPort); ok {
			r.LastTraced = true
			break
		}
		probe2.Write([]byte("hoptrace-bench probe"))
		time.Sleep(20 * time.Millisecond)
	}
	u, _ := p.Sample()
	r.HWMMB = float64(u.HWMKB) / 1024
	r.CPUS = u.CPU.Seconds()
	// Detaching takes long with many devices (one tcx link per device and
	// direction): wait long enough to measure it rather than hide the rest
	// of the row behind a kill.
	exit, err := p.Stop(180 * time.Second)
	r.DetachS = exit.Seconds()
	if err != nil {
		r.Error = err.Error()
	}
	r.Summary = ParseSummary(p.Stderr()).Line
	return r
}
