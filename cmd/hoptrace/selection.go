package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// selectionFlags choose what trace and latency look at; verb says what
// they do with it ("trace", "measure").
func selectionFlags(verb string) []cli.Flag {
	return append([]cli.Flag{
		&cli.StringSliceFlag{Name: "netns", Aliases: []string{"n"}, Usage: verb + " packets of this network namespace: a name in /var/run/netns, a Docker sandbox id, or a path such as /proc/PID/ns/net (repeatable)"},
		&cli.StringSliceFlag{Name: "interface", Aliases: []string{"i"}, Usage: verb + " packets crossing this interface, in the --netns namespaces or the host (repeatable)"},
	}, containerFlags()...)
}

// scope is what trace and latency look at: Docker for names and
// --container, the name resolver, and the selection from the flags.
type scope struct {
	containers *containerSupport
	names      *resolve.Resolver
	sel        selection.Selection
}

// openScope checks privileges, connects to Docker (optional), starts the
// resolver and resolves the selection flags. Close releases all of it.
func openScope(ctx context.Context, c *cli.Context, command string) (*scope, error) {
	if err := requireRoot(command); err != nil {
		return nil, err
	}
	containers, err := openContainers(ctx, c)
	if err != nil {
		return nil, err
	}
	s := &scope{containers: containers}
	s.names, err = resolve.New(ctx, resolve.Options{Annotator: containers.Annotator()})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("resolve names: %w", err)
	}
	if s.sel, err = selectionFlagsOf(ctx, c, s.names, containers); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close stops the resolver and Docker following.
func (s *scope) Close() {
	if s.names != nil {
		s.names.Close()
	}
	s.containers.Close()
}

// selectionFlagsOf resolves --netns, --interface and --container into the
// namespaces, devices and live container feed of a selection.
func selectionFlagsOf(ctx context.Context, c *cli.Context, names *resolve.Resolver, containers *containerSupport) (selection.Selection, error) {
	var sel selection.Selection
	var scopes []resolve.Namespace
	for _, spec := range c.StringSlice("netns") {
		ns, err := names.OpenNetns(spec)
		if err != nil {
			return sel, err
		}
		scopes = append(scopes, ns)
		sel.Netns = append(sel.Netns, ns.Inode)
	}
	if ifnames := c.StringSlice("interface"); len(ifnames) > 0 {
		if len(scopes) == 0 {
			host, _ := names.Namespace(names.HostInode())
			host.Inode = names.HostInode()
			scopes = []resolve.Namespace{host}
		}
		for _, ifname := range ifnames {
			found := false
			for _, ns := range scopes {
				if l, ok := names.LinkByName(ns.Inode, ifname); ok {
					sel.Devices = append(sel.Devices, selection.Device{Netns: ns.Inode, Ifindex: l.Index})
					found = true
				}
			}
			if !found {
				return sel, fmt.Errorf("interface %q: no such interface in %s", ifname, scopeNames(names, scopes))
			}
		}
		sel.Netns = nil
	}
	if err := containers.Select(ctx, &sel); err != nil {
		return sel, err
	}
	return sel, nil
}

func scopeNames(names *resolve.Resolver, scopes []resolve.Namespace) string {
	s := ""
	for i, ns := range scopes {
		if i > 0 {
			s += ", "
		}
		s += "netns " + names.Label(ns.Inode)
	}
	return s
}

// describeSelection says in words what a trace looks at.
func describeSelection(names *resolve.Resolver, cfg selection.Selection) string {
	var parts []string
	for _, ns := range cfg.Netns {
		parts = append(parts, "netns "+names.Label(ns))
	}
	for _, d := range cfg.Devices {
		ifname := fmt.Sprintf("ifindex %d", d.Ifindex)
		if l, ok := names.Link(d.Netns, d.Ifindex); ok {
			ifname = l.Name
		}
		parts = append(parts, ifname+" in "+names.Label(d.Netns))
	}
	if cfg.Dynamic != nil {
		parts = append(parts, "the selected containers")
	}
	if len(parts) == 0 {
		return "every namespace"
	}
	return strings.Join(parts, ", ")
}
