package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/doctor"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check that this kernel and this user can run hoptrace, and say what it will use",
		Description: "Probes the kernel (BTF, ring buffer, each tracepoint hoptrace attaches to, kprobes,\n" +
			"fentry, tcx, legacy tc), bpffs, tracefs, privileges and the Docker socket, then loads,\n" +
			"attaches and unloads the very programs trace and latency use on this kernel.\n" +
			"Exits 0 when hoptrace can run, 1 when something it needs is missing.",
		Flags: []cli.Flag{
			outputFlag("text", "json"),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("doctor takes no arguments (got %q)", c.Args().First())
			}
			format, err := outputFormat(c, "text", "json")
			if err != nil {
				return err
			}
			r := doctor.Run()
			if format == "json" {
				err = r.WriteJSON(os.Stdout)
			} else {
				err = r.WriteText(os.Stdout)
			}
			if err != nil {
				return err
			}
			if !r.CanRun {
				return cli.Exit(r.Problem(), exitFail)
			}
			return nil
		},
	}
}
