package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/inspect"
	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show a container's network path (namespace, veth pair, bridge, addresses) checked against the kernel",
		ArgsUsage: "CONTAINER",
		Description: `CONTAINER is a name, an ID or a unique ID prefix. Every fact Docker reports
that the kernel can confirm is marked ✓; a mismatch (veth down, not on the
bridge, wrong bridge, missing peer, address not configured) is marked ✗ and
listed as a warning. Warnings do not change the exit status.`,
		Flags: []cli.Flag{
			outputFlag("text", "json"),
		},
		BashComplete: completeContainers,
		Action:       runInspect,
	}
}

func runInspect(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("inspect takes one CONTAINER (name, ID or ID prefix)")
	}
	format, err := outputFormat(c, "text", "json")
	if err != nil {
		return err
	}
	rt, err := docker.New(c.Context)
	if err != nil {
		return err
	}
	defer rt.Close()
	r, err := inspect.Inspect(c.Context, rt, c.Args().First())
	if err != nil {
		return err
	}
	if format == "json" {
		return r.WriteJSON(os.Stdout)
	}
	return r.WriteText(os.Stdout)
}
