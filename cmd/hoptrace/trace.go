package main

import (
	"context"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

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
their first hop on. --interface selects packets crossing those interfaces.`,
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Usage: "stop after `N` packets (events with --events)"},
			&cli.DurationFlag{Name: "duration", Aliases: []string{"d"}, Usage: "stop after this long (e.g. 10s)"},
			&cli.BoolFlag{Name: "events", Usage: "stream every hop event as it happens instead of whole paths"},
			&cli.BoolFlag{Name: "detail", Usage: "also show driver transmit and backlog steps (more events per packet)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text or json (one object per line)"},
			&cli.IntFlag{Name: "ring-size", Value: 8, Usage: "ring buffer size in `MiB` (a power of two); raise it if events are lost"},
			engineFlag(),
		}, append(selectionFlags("trace"), filterFlags()...)...),
		Action: runTrace,
	}
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
	if rs := c.Int("ring-size"); rs < 1 || rs > 1024 || rs&(rs-1) != 0 {
		return usagef("--ring-size must be a power of two from 1 to 1024 (MiB), not %d", rs)
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

	cfg := trace.Config{
		Filter:    filter,
		Count:     c.Int("count"),
		Duration:  c.Duration("duration"),
		Events:    c.Bool("events"),
		Detail:    c.Bool("detail"),
		Format:    format,
		Out:       os.Stdout,
		RingBytes: c.Int("ring-size") << 20,
		Engine:    eng,
		Warn:      func(msg string) { fmt.Fprintf(os.Stderr, "hoptrace: warning: %s\n", msg) },
	}
	cfg.Netns, cfg.Devices, cfg.Dynamic = sc.sel.Netns, sc.sel.Devices, sc.sel.Dynamic

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
