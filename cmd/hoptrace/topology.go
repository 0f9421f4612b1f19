package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

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
--format dot renders with Graphviz: hoptrace topology --format dot | dot -Tsvg > net.svg`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "tree", Usage: strings.Join(topology.Formats, ", ")},
		},
		Action: runTopology,
	}
}

func runTopology(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("topology takes no arguments (got %q)", c.Args().First())
	}
	format := c.String("format")
	if !slices.Contains(topology.Formats, format) {
		return usagef("--format must be one of %s, not %q", strings.Join(topology.Formats, ", "), format)
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
