package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
)

// The shell asks hoptrace itself what may come next: the words typed so far
// followed by --generate-bash-completion print one candidate a line
// (commands, flags, or container names where a container is expected).
const bashCompletion = `# bash completion for hoptrace: source <(hoptrace completion bash)
_hoptrace_complete() {
	local cur words
	COMPREPLY=()
	cur="${COMP_WORDS[COMP_CWORD]}"
	words=("${COMP_WORDS[@]:0:$COMP_CWORD}")
	if [[ "$cur" == -* ]]; then
		words+=("$cur")
	fi
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$("${words[0]}" "${words[@]:1}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _hoptrace_complete hoptrace
`

const zshCompletion = `#compdef hoptrace
# zsh completion for hoptrace: source <(hoptrace completion zsh)
_hoptrace() {
	local -a opts
	local cur=${words[CURRENT]}
	local -a typed=(${words[2,CURRENT-1]})
	if [[ "$cur" == -* ]]; then
		typed+=("$cur")
	fi
	opts=("${(@f)$(${words[1]} ${typed[@]} --generate-bash-completion 2>/dev/null)}")
	if [[ -n "${opts[1]}" ]]; then
		compadd -a opts
	else
		_files
	fi
}
if [[ "$funcstack[1]" == "_hoptrace" ]]; then
	_hoptrace "$@"
else
	compdef _hoptrace hoptrace
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash or zsh)",
		ArgsUsage: "bash|zsh",
		Description: `Container names are completed from Docker.
bash: source <(hoptrace completion bash)   (or save it in /etc/bash_completion.d/hoptrace)
zsh:  source <(hoptrace completion zsh)    (or save it as _hoptrace in a directory of $fpath)`,
		BashComplete: func(c *cli.Context) {
			if c.NArg() == 0 {
				fmt.Fprintln(c.App.Writer, "bash")
				fmt.Fprintln(c.App.Writer, "zsh")
			}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("completion takes one shell: bash or zsh")
			}
			switch c.Args().First() {
			case "bash":
				_, err := io.WriteString(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := io.WriteString(c.App.Writer, zshCompletion)
				return err
			}
			return usagef("completion: unknown shell %q (bash or zsh)", c.Args().First())
		},
	}
}

// completeContainers is a command's BashComplete where its argument is a
// container: flags after a "-", else the container names Docker knows.
func completeContainers(c *cli.Context) {
	if n := len(os.Args); n > 2 && strings.HasPrefix(os.Args[n-2], "-") {
		cli.DefaultCompleteWithFlags(c.Command)(c)
		return
	}
	if c.NArg() > 0 {
		return // one CONTAINER already given
	}
	printContainerNames(c.Context, c.App.Writer)
}

// completeFlagValue answers a completion request whose last word is a flag
// that names a container (--container web<TAB>); false otherwise.
func completeFlagValue(ctx context.Context, w io.Writer, args []string) bool {
	n := len(args)
	if n < 2 || args[n-1] != completionFlag {
		return false
	}
	switch args[n-2] {
	case "--container", "-C", "--to":
		printContainerNames(ctx, w)
		return true
	}
	return false
}

func printContainerNames(ctx context.Context, w io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rt, err := docker.New(ctx)
	if err != nil {
		return
	}
	defer rt.Close()
	names, err := rt.Names(ctx)
	if err != nil {
		return
	}
	for _, n := range names {
		fmt.Fprintln(w, n)
	}
}
