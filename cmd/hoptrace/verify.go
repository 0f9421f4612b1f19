package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
	"github.com/hoptrace/hoptrace/tracer/verify"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "prove a container's path to its gateway or to a container on the same bridge, with probe packets",
		ArgsUsage: "CONTAINER",
		Description: `Checks the path the configuration promises (container interface, veth
peer, bridge port, bridge, gateway or target container), then sends probe
packets from inside the container's network namespace, traces them and
compares the hops seen with the hops expected.

The verdict is PASS, or FAIL at <hop>: <reason> (a failed check, the
kernel's drop reason, or a packet that vanished). What the target did with
the probes (answered, NO_SOCKET, refused) is reported separately and does
not fail the path. Exit status: 0 PASS, 1 FAIL or error, 2 usage error.

A netfilter drop names its rule (family, table, chain, handle, nft and
iptables text): while verify runs, a temporary nftables table owned by
hoptrace marks the probe packets for nf_tables tracing. --no-rules turns
that off and leaves the ruleset untouched.

--all verifies every running container against its gateway, one line each.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Value: "gateway", Usage: "`gateway`, an IPv4 address, or a container on the same bridge"},
			&cli.StringFlag{Name: "proto", Aliases: []string{"p"}, Value: "icmp", Usage: "probe protocol: icmp, udp or tcp"},
			&cli.IntFlag{Name: "port", Usage: "destination `port` of udp/tcp probes (default 33434 udp, 80 tcp)"},
			&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Value: 3, Usage: "number of probes"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "how long to wait for probes and their paths"},
			&cli.BoolFlag{Name: "all", Usage: "verify every running container against its gateway"},
			&cli.BoolFlag{Name: "no-rules", Usage: "do not name the netfilter rule that drops a probe (no temporary nftables table)"},
			outputFlag("text", "json"),
		},
		BashComplete: completeContainers,
		Action:       runVerify,
	}
}

func runVerify(c *cli.Context) error {
	nargs := c.NArg()
	format, err := outputFormat(c, "text", "json")
	if err != nil {
		return err
	}
	all := c.Bool("all")
	switch {
	case all && nargs > 0:
		return usagef("--all takes no CONTAINER")
	case all && c.IsSet("to"):
		return usagef("--all verifies every container against its gateway; --to cannot be combined with it")
	case !all && nargs != 1:
		return usagef("verify takes one CONTAINER (name, ID or ID prefix), or --all")
	}
	if c.Int("count") < 1 {
		return usagef("--count must be at least 1")
	}
	if c.Duration("timeout") <= 0 {
		return usagef("--timeout must be positive")
	}
	opts := verify.Options{
		To:      c.String("to"),
		Proto:   c.String("proto"),
		Port:    c.Int("port"),
		Count:   c.Int("count"),
		Timeout: c.Duration("timeout"),
		NoRules: c.Bool("no-rules"),
	}
	if err := opts.Validate(); err != nil {
		return usageError{err}
	}
	if err := requireRoot("verify"); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	rt, err := docker.New(ctx)
	if err != nil {
		return err
	}
	defer rt.Close()
	ann, err := docker.NewAnnotator(ctx, rt)
	if err != nil {
		return err
	}
	defer ann.Close()
	select {
	case <-ann.Synced():
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	names, err := resolve.New(ctx, resolve.Options{Annotator: ann})
	if err != nil {
		return fmt.Errorf("resolve names: %w", err)
	}
	defer names.Close()
	v := &verify.Verifier{Runtime: rt, Names: names, Warn: warn}

	if all {
		reports, err := v.All(ctx, opts)
		if err != nil {
			return err
		}
		if format == "json" {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(reports); err != nil {
				return err
			}
		} else {
			for _, r := range reports {
				fmt.Println(r.Line())
			}
		}
		if n := countFailed(reports); n > 0 {
			return cli.Exit(fmt.Sprintf("verify --all: %d of %d containers FAIL", n, len(reports)), exitFail)
		}
		return nil
	}

	r, err := v.Verify(ctx, c.Args().First(), opts)
	if err != nil {
		return err
	}
	if format == "json" {
		err = r.WriteJSON(os.Stdout)
	} else {
		err = r.WriteText(os.Stdout)
	}
	if err != nil {
		return err
	}
	if r.Verdict == verify.Fail {
		return cli.Exit("verify: "+r.Summary, exitFail)
	}
	return nil
}

func countFailed(rs []*verify.Report) int {
	n := 0
	for _, r := range rs {
		if verify.Failed(r) {
			n++
		}
	}
	return n
}
