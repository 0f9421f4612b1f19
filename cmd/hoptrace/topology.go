package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
	"github.com/hoptrace/hoptrace/tracer/topology"
)

func topologyCommand() *cli.Command {
	return &cli.Command{
		Name:    "topology",
		Aliases: []string{"ls"},
		Usage:   "show every bridge, its ports, and the container or namespace behind each veth",
		Description: `Reads the host namespace's bridges with netlink and follows each veth to its
peer namespace. With Docker reachable, namespaces are named after their
containers and bridges after their networks; without it, after their
ip netns name, Docker sandbox id, or inode.
-o dot renders with Graphviz: hoptrace topology -o dot | dot -Tsvg > net.svg`,
		Flags: []cli.Flag{
			outputFlag(topology.Formats...),
			// --format/-f: the option's name before --output; kept for one release.
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Hidden: true},
		},
		Action: runTopology,
	}
}

func runTopology(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("topology takes no arguments (got %q)", c.Args().First())
	}
	if c.IsSet("format") {
		if c.IsSet("output") {
			return usagef("--format is the old name of --output; give one of them")
		}
		fmt.Fprintln(os.Stderr, "hoptrace: note: --format is now --output (-o); --format will be removed")
		if err := c.Set("output", c.String("format")); err != nil {
			return usageError{err}
		}
	}
	format, err := outputFormat(c, topology.Formats...)
	if err != nil {
		return err
	}
	var opts topology.Options
	rt, err := docker.New(c.Context)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hoptrace: note: no container names: %s\n", oneLine(err))
	} else {
		defer rt.Close()
		opts.Runtime = rt
	}
	t, warnings, err := topology.Build(c.Context, opts)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "hoptrace: warning: %s\n", w)
	}
	return t.Write(os.Stdout, format)
}
