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
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/pktfilter"
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
	app := &cli.App{
		Name:                 "hoptrace",
		Usage:                "trace packets from containers across veth pairs and bridges, hop by hop",
		Version:              version(),
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			traceCommand(),
			latencyCommand(),
			doctorCommand(),
			inspectCommand(),
			topologyCommand(),
			verifyCommand(),
			completionCommand(),
		},
		OnUsageError: onUsageError,
		Writer:       os.Stdout,
	}
	for _, c := range app.Commands {
		if c.OnUsageError == nil {
			c.OnUsageError = onUsageError
		}
	}
	return app
}

// onUsageError marks flag parsing errors as usage errors (exit 2).
func onUsageError(_ *cli.Context, err error, _ bool) error {
	return usageError{err}
}

// filterFlags are shorthands for parts of a filter expression.
func filterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "proto", Usage: "only packets of this protocol (" + pktfilter.Protocols + "); short for the expression word"},
		&cli.StringFlag{Name: "host", Usage: "only packets from or to this address or CIDR prefix; short for 'host ADDR' or 'net CIDR'"},
		&cli.IntFlag{Name: "port", Usage: "only TCP/UDP packets from or to this port; short for 'port N'"},
	}
}

// packetFilter compiles the filter expression: the words after the flags
// (joined by spaces, as tcpdump does) and the --proto, --host and --port
// shorthands, all of which must match. No expression: nil, no filter.
// A bad expression is a usage error with libpcap's message.
func packetFilter(c *cli.Context) (*pktfilter.Program, error) {
	short, err := pktfilter.Shorthand(c.String("proto"), c.String("host"), c.Int("port"))
	if err != nil {
		return nil, usageError{err}
	}
	expr := pktfilter.Join(strings.Join(c.Args().Slice(), " "), short)
	prog, err := pktfilter.Compile(c.Context, expr)
	var bad *pktfilter.BadExpressionError
	if errors.As(err, &bad) {
		for _, w := range c.Args().Slice() {
			if strings.HasPrefix(w, "-") {
				return nil, usagef("%w (flags go before the expression)", err)
			}
		}
		return nil, usageError{err}
	}
	return prog, err
}

// describeFilter says which packets an expression keeps, for the ready line.
func describeFilter(p *pktfilter.Program) string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf(", packets matching '%s'", p.Expr)
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	app.ExitErrHandler = func(*cli.Context, error) {} // exit codes are decided below
	if completeFlagValue(ctx, app.Writer, args) {
		return exitOK
	}
	err := app.RunContext(ctx, flagsFirst(app, args))
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

// outputFlag is --output/-o, the one spelling of every command's output
// format; formats[0] is the default.
func outputFlag(formats ...string) *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: formats[0], Usage: strings.Join(formats, ", ")}
}

// outputFormat reads --output and checks it is one of formats.
func outputFormat(c *cli.Context, formats ...string) (string, error) {
	f := c.String("output")
	if !slices.Contains(formats, f) {
		return "", usagef("--output must be one of %s, not %q", strings.Join(formats, ", "), f)
	}
	return f, nil
}

// requireRoot fails early, in one sentence, where BPF or namespaces are
// needed: the rule doctor and the loader apply too.
func requireRoot(command string) error {
	return kernel.RequirePrivileges(command)
}

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
