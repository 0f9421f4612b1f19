package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// exprCommands take the words after their flags as an expression (a
// tcpdump-style filter), not as names: their arguments are left in order,
// so flags go first and "--" ends them.
var exprCommands = map[string]bool{"trace": true}

const completionFlag = "--generate-bash-completion"

// flagsFirst lets every command take its flags before or after its
// arguments ("inspect web -o json" as "inspect -o json web"): the argument
// parser stops at the first positional argument, so the subcommand's flags
// are moved ahead of its positional arguments, each with its value. A "--"
// ends the flags; what follows it stays positional.
func flagsFirst(app *cli.App, args []string) []string {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		if args[i] == "--" || args[i] == completionFlag {
			return args
		}
		i++
	}
	if i >= len(args) {
		return args
	}
	cmd := app.Command(args[i])
	if cmd == nil || exprCommands[cmd.Name] || len(cmd.Subcommands) > 0 {
		return args
	}
	rest := args[i+1:]
	complete := len(rest) > 0 && rest[len(rest)-1] == completionFlag
	if complete {
		rest = rest[:len(rest)-1]
	}
	flags, pos := splitFlags(cmd.Flags, rest)
	out := append(append([]string{}, args[:i+1]...), flags...)
	for _, p := range pos {
		if strings.HasPrefix(p, "-") {
			out = append(out, "--")
			break
		}
	}
	out = append(out, pos...)
	if complete {
		out = append(out, completionFlag)
	}
	return out
}

// splitFlags separates flags (with their values) from positional arguments.
func splitFlags(defined []cli.Flag, args []string) (flags, pos []string) {
	takesValue := map[string]bool{}
	for _, f := range defined {
		tv, ok := f.(interface{ TakesValue() bool })
		for _, n := range f.Names() {
			takesValue[n] = ok && tv.TakesValue()
		}
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return flags, append(pos, args[i+1:]...)
		case len(a) < 2 || a[0] != '-':
			pos = append(pos, a)
		default:
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			if takesValue[name] && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	return flags, pos
}
