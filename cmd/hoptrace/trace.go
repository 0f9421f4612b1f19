package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/nftrace"
	"github.com/hoptrace/hoptrace/tracer/output"
	"github.com/hoptrace/hoptrace/tracer/pcapng"
	"github.com/hoptrace/hoptrace/tracer/selection"
	"github.com/hoptrace/hoptrace/tracer/trace"
)

func traceCommand() *cli.Command {
	return &cli.Command{
		Name:      "trace",
		Usage:     "show each packet's path hop by hop, live",
		ArgsUsage: "[EXPRESSION...]",
		Description: `Traces packets across veth pairs and bridges. Without a selection every
packet in every network namespace is traced. --netns and --container select
packets seen in those namespaces or sent to or from their addresses, from
their first hop on. --interface selects packets crossing those interfaces.

EXPRESSION is a tcpdump filter expression (pcap-filter(7)), compiled by
libpcap (through tcpdump, which must be installed to use one) and run in the
kernel on the frame where a packet would start being traced:
  hoptrace trace -C web 'tcp port 80 and tcp[tcpflags] & tcp-syn != 0'
-w FILE writes every hop of every traced packet to a pcapng file for
Wireshark (-w - writes it to standard output instead of the paths).
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
			&cli.StringFlag{Name: "write", Aliases: []string{"w"}, Usage: "write every hop of every traced packet to a pcapng `FILE` (- for standard output)"},
			&cli.IntFlag{Name: "snaplen", Aliases: []string{"s"}, Value: pcapng.DefaultSnapLen, Usage: "with -w, keep this many `BYTES` of each frame (its headers)"},
			engineFlag(),
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
	if len(cfg.Selection.Devices) == 0 && (len(cfg.Selection.Netns) > 0 || cfg.Selection.Dynamic != nil) {
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

// traceMemoryLimit is the Go runtime's soft memory limit while tracing.
//
// A busy trace holds tens of MB live (packets waiting for their end, the
// ids finished in the last seconds, the kernel's symbols), and with the
// default GOGC the heap grows to twice its live size between collections:
// that, not the live data, took the process past 100 MB of RSS. Little is
// allocated per path, so collecting more often once the heap nears the
// limit costs little CPU; below it GOGC decides as usual. The limit is
// soft: a live heap above it is not an error, the collector then runs as
// often as the runtime lets it (at most about half the CPU). The ring
// buffer's mapping and the binary come on top (about 35 MB with the
// default --ring-size), hence 60 MiB for an RSS under 100 MB. GOMEMLIMIT,
// when set, takes precedence.
const traceMemoryLimit = 60 << 20

func limitTraceMemory() {
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(traceMemoryLimit)
	}
}

func runTrace(c *cli.Context) error {
	limitTraceMemory()
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
	if sl := c.Int("snaplen"); sl < 16 || sl > loader.MaxSnapLen {
		return usagef("--snaplen must be from 16 to %d bytes, not %d", loader.MaxSnapLen, sl)
	}
	capturePath := c.String("write")
	if capturePath == "" && c.IsSet("snaplen") {
		return usagef("--snaplen sets how much of each frame -w writes: give -w FILE too")
	}
	if capturePath != "" && c.Bool("events") {
		return usagef("-w writes whole paths: it cannot be combined with --events")
	}
	filter, err := packetFilter(c)
	if err != nil {
		return err
	}
	eng, err := engine(c)
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

	out := io.Writer(os.Stdout)
	var capture *pcapng.Writer
	if capturePath != "" {
		var f io.Writer = os.Stdout
		if capturePath == "-" {
			out = io.Discard // standard output carries the capture
		} else {
			file, err := os.Create(capturePath)
			if err != nil {
				return fmt.Errorf("-w: %w", err)
			}
			defer file.Close()
			f = file
		}
		if capture, err = pcapng.New(f, c.Int("snaplen")); err != nil {
			return err
		}
	}

	cfg := trace.Config{
		Capture:   capture,
		Filter:    filter,
		Count:     c.Int("count"),
		Duration:  c.Duration("duration"),
		Events:    c.Bool("events"),
		Detail:    c.Bool("detail"),
		Format:    format,
		Out:       out,
		RingBytes: c.Int("ring-size") << 20,
		Warn:      warn,
		Engine:    eng,
	}
	cfg.Selection = sc.sel
	if c.Bool("rules") {
		if rules := openRules(cfg); rules != nil {
			defer rules.Close()
			cfg.Rules = rules
		}
	}

	cfg.Ready = func() {
		fmt.Fprintf(os.Stderr, "hoptrace: tracing %s%s; Ctrl-C to stop\n", describeSelection(names, cfg.Selection), describeFilter(filter))
	}
	res, err := trace.Run(ctx, cfg, names)
	if err != nil && !errors.Is(err, selection.ErrNothingLeft) {
		return err
	}
	fmt.Fprintf(os.Stderr, "hoptrace: %s\n", res.Summary)
	return err // the selection went away: the summary, then why it ended
}
