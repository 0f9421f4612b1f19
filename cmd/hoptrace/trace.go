package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/nftrace"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/trace"
)

func traceCommand() *cli.Command {
	return &cli.Command{
		Name:      "trace",
		Usage:     "show each packet's path hop by hop, live",
		ArgsUsage: " ",
		Description: `Traces packets across veth pairs and bridges. Without a selection every
packet in every network namespace is traced. --netns and --container select
packets seen in those namespaces or sent to or from their addresses, from
their first hop on. --interface selects packets crossing those interfaces.
--rules names the netfilter rule that dropped a packet: while tracing, a
temporary nftables table owned by hoptrace marks the selected packets for
nf_tables tracing (every packet without a namespace selection).`,
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Usage: "stop after `N` packets (events with --events)"},
			&cli.DurationFlag{Name: "duration", Aliases: []string{"d"}, Usage: "stop after this long (e.g. 10s)"},
			&cli.BoolFlag{Name: "events", Usage: "stream every hop event as it happens instead of whole paths"},
			&cli.BoolFlag{Name: "detail", Usage: "also show driver transmit and backlog steps (more events per packet)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text or json (one object per line)"},
			&cli.BoolFlag{Name: "rules", Usage: "name the netfilter rule that dropped a packet (adds a temporary nftables table marking the selection's packets for nf_tables tracing)"},
			&cli.IntFlag{Name: "ring-size", Value: 8, Usage: "ring buffer size in `MiB` (a power of two); raise it if events are lost"},
		}, append(selectionFlags("trace"), filterFlags()...)...),
		Action: runTrace,
	}
}

// warn prints a warning line on standard error.
func warn(msg string) { fmt.Fprintf(os.Stderr, "hoptrace: warning: %s\n", msg) }

// openRules creates the nftables trace table for trace --rules: it marks
// packets from or to the selected namespaces' addresses, or every packet
// when the selection is not by namespace. Where it cannot work it says so
// once and the trace goes on without it.
func openRules(cfg trace.Config) *nftrace.Tracer {
	mode := nftrace.ModeAll
	if len(cfg.Devices) == 0 && (len(cfg.Netns) > 0 || cfg.Dynamic != nil) {
		mode = nftrace.ModeAddrs
	}
	rules, err := nftrace.Open(nftrace.Options{Mode: mode})
	if err != nil {
		warn(err.Error() + "; drops keep their kernel reason")
		return nil
	}
	if w := nftrace.LegacyWarning(); w != "" {
		warn(w)
	}
	what := "every packet"
	if mode == nftrace.ModeAddrs {
		what = "packets from or to the selection's addresses"
	}
	fmt.Fprintf(os.Stderr, "hoptrace: naming netfilter rules: table %s marks %s for nf_tables tracing (removed on exit)\n", strings.Join(rules.TableNames(), ", "), what)
	return rules
}

func runTrace(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("trace takes no arguments (got %q); use --netns, --container or --interface", c.Args().First())
	}
	format, err := output.ParseFormat(c.String("output"))
	if err != nil {
		return usageError{err}
	}
	if c.Int("count") < 0 {
		return usagef("--count must not be negative")
	}
	if c.Duration("duration") < 0 {
		return usagef("--duration must not be negative")
	}
	if c.Bool("rules") && c.Bool("events") {
		return usagef("--rules names the rule at the end of each path; it cannot be combined with --events")
	}
	if rs := c.Int("ring-size"); rs < 1 || rs > 1024 || rs&(rs-1) != 0 {
		return usagef("--ring-size must be a power of two from 1 to 1024 (MiB), not %d", rs)
	}
	filter, err := packetFilter(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	sc, err := openScope(ctx, c, "trace")
	if err != nil {
		return err
	}
	defer sc.Close()
	names := sc.names

	cfg := trace.Config{
		Filter:    filter,
		Count:     c.Int("count"),
		Duration:  c.Duration("duration"),
		Events:    c.Bool("events"),
		Detail:    c.Bool("detail"),
		Format:    format,
		Out:       os.Stdout,
		RingBytes: c.Int("ring-size") << 20,
		Warn:      warn,
	}
	cfg.Netns, cfg.Devices, cfg.Dynamic = sc.sel.Netns, sc.sel.Devices, sc.sel.Dynamic
	if c.Bool("rules") {
		if rules := openRules(cfg); rules != nil {
			defer rules.Close()
			cfg.Rules = rules
		}
	}

	cfg.Ready = func() {
		fmt.Fprintf(os.Stderr, "hoptrace: tracing %s; Ctrl-C to stop\n", describeSelection(names, cfg))
	}
	res, err := trace.Run(ctx, cfg, names)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "hoptrace: %s\n", res.Summary)
	return nil
}
