// Command hoptrace traces packets from containers across veth pairs and
// Linux bridges, hop by hop. This file wires the subcommands; each lives in
// its own file and delegates to packages under tracer/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// Exit codes shared by every subcommand.
const (
	exitOK    = 0
	exitFail  = 1 // the command ran and found a failure (or an error occurred)
	exitUsage = 2 // bad flags or arguments
)

func main() {
	os.Exit(run(os.Args))
}

func newApp() *cli.App {
	return &cli.App{
		Name:                 "hoptrace",
		Usage:                "trace packets from containers across veth pairs and bridges, hop by hop",
		HideHelpCommand:      true,
		EnableBashCompletion: false,
		Commands: []*cli.Command{
			traceCommand(),
			doctorCommand(),
			inspectCommand(),
			topologyCommand(),
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	app.ExitErrHandler = func(*cli.Context, error) {} // exit codes are decided below
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "hoptrace: %s\n", oneLine(err))
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() != 0 {
		return ec.ExitCode()
	}
	return exitFail
}

// usageError marks errors in flags or arguments (exit status 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// oneLine keeps the first line of an error; multi-line details (verifier
// logs) are printed by the code that has them, before returning.
func oneLine(err error) string {
	s := err.Error()
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}
