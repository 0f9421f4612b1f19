package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/latency"
)

func latencyCommand() *cli.Command {
	return &cli.Command{
		Name:      "latency",
		Usage:     "show hop-to-hop latency percentiles per hop pair, live, from in-kernel histograms",
		ArgsUsage: "[EXPRESSION...]",
		Description: `Measures, in the kernel, the time each packet spends between consecutive
hops (a device's egress, the stack receive on the next device, the end: a
socket read, a consume or a drop) and prints every interval a table of hop pairs with
count, p50, p90, p99, max and the pair's share of its path's total. Pairs are
grouped into paths (first hop to last). Percentiles are exact to within 3.2%.
Selection works as for trace: --netns, --container, --interface; none traces
every namespace; a tcpdump filter EXPRESSION (and --proto, --host, --port)
measures only the packets it matches. --metrics-addr serves Prometheus metrics (loopback unless
another host is named). --detail also measures the driver transmit, backlog
and GRO steps in between (as trace --detail), with tracepoints that run for
every packet of the host.`,
		Flags: append([]cli.Flag{
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "report every `D`"},
			&cli.DurationFlag{Name: "duration", Aliases: []string{"d"}, Usage: "stop after this long and print the summary (default: until Ctrl-C)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text or json (one object per interval, the last one with \"final\": true)"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics at `HOST:PORT` (/metrics); an empty host means 127.0.0.1"},
			&cli.UintFlag{Name: "sample", Value: 1, Usage: "measure one packet in `N`, chosen at its first hop (the same packets at every hop); counts are scaled by N and every output says so"},
			&cli.BoolFlag{Name: "detail", Usage: "also measure the driver transmit, backlog and GRO steps (tracepoints on every packet of the host); text output: add the mean, the tracepoints of each pair and every pair on no path"},
			engineFlag(),
		}, append(selectionFlags("measure"), filterFlags()...)...),
		Action: runLatency,
	}
}

func runLatency(c *cli.Context) error {
	w, err := latency.NewWriter(os.Stdout, c.String("output"))
	if err != nil {
		return usageError{err}
	}
	w.Detail = c.Bool("detail")
	interval := c.Duration("interval")
	if interval < 10*time.Millisecond {
		return usagef("--interval must be at least 10ms (got %s)", interval)
	}
	if c.Duration("duration") < 0 {
		return usagef("--duration must not be negative")
	}
	eng, err := engine(c)
	if err != nil {
		return err
	}
	sample := c.Uint("sample")
	if sample < 1 || sample > 1<<16 {
		return usagef("--sample must be 1 (every packet) to 65536 (got %d)", sample)
	}
	metricsAddr := c.String("metrics-addr")
	if metricsAddr != "" {
		if _, port, err := net.SplitHostPort(metricsAddr); err != nil || port == "" {
			return usagef("--metrics-addr %q: want HOST:PORT, e.g. 127.0.0.1:9464", metricsAddr)
		}
	}
	filter, err := packetFilter(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()

	sc, err := openScope(ctx, c, "latency")
	if err != nil {
		return err
	}
	defer sc.Close()
	names, sel := sc.names, sc.sel

	cfg := latency.Config{
		Selection: sel,
		Filter:    filter,
		Interval:  interval,
		Duration:  c.Duration("duration"),
		Report:    w.Write,
		Engine:    eng,
		Detail:    c.Bool("detail"),
		Sample:    uint32(sample),
		Warn:      func(msg string) { fmt.Fprintf(os.Stderr, "hoptrace: warning: %s\n", msg) },
	}
	if d := kernel.KernelDropReasons(); d != nil {
		cfg.Drops = d
	}
	cfg.Ready = func() {
		fmt.Fprintf(os.Stderr, "hoptrace: measuring %s%s%s; Ctrl-C to stop\n", describeSelection(names, sel), describeFilter(filter), describeSample(sample))
	}
	var serveErr <-chan error
	if metricsAddr != "" {
		cfg.Metrics = latency.NewMetrics()
		addr, errc, err := cfg.Metrics.Serve(ctx, metricsAddr)
		if err != nil {
			return err
		}
		serveErr = errc
		fmt.Fprintf(os.Stderr, "hoptrace: metrics at http://%s/metrics\n", addr)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- latency.Run(ctx, cfg, names) }()
	select {
	case err := <-runErr:
		return err
	case err := <-serveErr:
		if err == nil {
			// shut down because the session is ending (Ctrl-C, --duration)
			return <-runErr
		}
		cancel()
		<-runErr
		return fmt.Errorf("metrics endpoint: %w", err)
	}
}

// describeSample is the ready line's note of sampling ("" for every packet).
func describeSample(n uint) string {
	if n <= 1 {
		return ""
	}
	return fmt.Sprintf(", one packet in %d (counts scaled)", n)
}
