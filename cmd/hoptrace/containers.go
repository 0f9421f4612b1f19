package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

func containerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "container", Aliases: []string{"C"}, Usage: "trace traffic from and to this container: name, ID or ID prefix; it may start later (repeatable)"},
	}
}

// containerSupport connects a command to Docker: names for namespaces, and
// the --container selection kept current as containers start and stop.
type containerSupport struct {
	refs []string
	rt   *docker.Runtime
	ann  *docker.Annotator
	sel  *docker.Selector

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// openContainers connects to Docker. When the daemon cannot be reached,
// tracing namespaces still works: a warning says names are unavailable;
// --container then is an error.
func openContainers(ctx context.Context, c *cli.Context) (*containerSupport, error) {
	cs := &containerSupport{refs: c.StringSlice("container"), cancel: func() {}}
	rt, err := docker.New(ctx)
	if err != nil {
		if len(cs.refs) > 0 {
			return nil, fmt.Errorf("--container needs Docker: %w", err)
		}
		fmt.Fprintf(os.Stderr, "hoptrace: warning: container names unavailable: %s\n", oneLine(err))
		return cs, nil
	}
	cs.rt = rt
	ann, err := docker.NewAnnotator(ctx, rt)
	if err != nil {
		rt.Close()
		if len(cs.refs) > 0 {
			return nil, fmt.Errorf("--container needs Docker: %w", err)
		}
		fmt.Fprintf(os.Stderr, "hoptrace: warning: container names unavailable: %s\n", oneLine(err))
		cs.rt = nil
		return cs, nil
	}
	cs.ann = ann
	select { // names of running containers before the first packet, if quick
	case <-ann.Synced():
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	return cs, nil
}

// Annotator names namespaces after containers; nil without Docker.
func (cs *containerSupport) Annotator() resolve.Annotator {
	if cs.ann == nil {
		return nil
	}
	return cs.ann
}

// Select adds the --container selection to a trace: the namespaces of the
// selected containers now, and as they start and stop.
func (cs *containerSupport) Select(ctx context.Context, cfg *selection.Selection) error {
	if len(cs.refs) == 0 {
		return nil
	}
	if len(cfg.Devices) > 0 {
		return usagef("--container and --interface cannot be combined; use --netns with --interface")
	}
	sel, err := docker.NewSelector(ctx, cs.rt, cs.refs...)
	if err != nil {
		return err
	}
	cs.sel = sel
	changes := make(chan selection.NetnsChange, 64)
	cfg.Dynamic = changes
	fctx, cancel := context.WithCancel(ctx)
	cs.cancel = cancel
	hostNetns := func(ch docker.Change) {
		if ch.Added {
			fmt.Fprintf(os.Stderr, "hoptrace: container %s uses the host network namespace: tracing the host's traffic\n", ch.Container.Name)
		}
	}
	cs.wg.Add(1)
	go func() {
		defer cs.wg.Done()
		defer close(changes)
		for {
			select {
			case <-fctx.Done():
				return
			case ch, ok := <-sel.Changes():
				if !ok {
					return
				}
				inode := ch.Inode
				switch {
				case ch.Container.NetworkMode == "host":
					hostNetns(ch)
					inode = hostInode()
				case ch.Container.NetworkMode == "none" && ch.Added:
					fmt.Fprintf(os.Stderr, "hoptrace: container %s has --network none: it has no network path to trace\n", ch.Container.Name)
				}
				if inode == 0 {
					continue
				}
				select {
				case changes <- selection.NetnsChange{Inode: inode, Selected: ch.Added, Ports: publishedPorts(ch.Container)}:
				case <-fctx.Done():
					return
				}
			}
		}
	}()
	select {
	case <-sel.Synced():
	case <-ctx.Done():
	}
	if pending := sel.Pending(); len(pending) > 0 {
		fmt.Fprintln(os.Stderr, waitingNote(ctx, cs.rt, pending))
	}
	return nil
}

// waitingNote says, on one line, why each selected container is not traced
// yet: it does not exist (a typo, or one to be created), or it exists and
// is not running.
func waitingNote(ctx context.Context, rt runtime.Runtime, pending []string) string {
	parts := make([]string, 0, len(pending))
	for _, ref := range pending {
		c, err := rt.Lookup(ctx, ref)
		switch {
		case errors.Is(err, runtime.ErrNotFound):
			parts = append(parts, ref+" (no such container yet; see docker ps -a)")
		case err != nil || c.Running:
			parts = append(parts, ref) // starting, or the engine did not say
		default:
			state := c.State
			if state == "" {
				state = "not running"
			}
			parts = append(parts, fmt.Sprintf("%s (%s: docker start %s)", ref, state, ref))
		}
	}
	return "hoptrace: waiting for container(s) to start: " + strings.Join(parts, ", ")
}

// Close stops following Docker and waits for the goroutines it started.
func (cs *containerSupport) Close() error {
	cs.cancel()
	if cs.sel != nil {
		cs.sel.Close()
	}
	cs.wg.Wait()
	if cs.ann != nil {
		cs.ann.Close()
	}
	if cs.rt != nil {
		return cs.rt.Close()
	}
	return nil
}

// hostInode is the initial network namespace's inode.
func hostInode() uint32 {
	ino, _ := resolve.NetnsInode("/proc/1/ns/net")
	return ino
}

// publishedPorts are the container's host ports, as the trace selects them.
func publishedPorts(c runtime.Container) []selection.Port {
	var out []selection.Port
	for _, p := range c.Published {
		switch p.Proto {
		case "tcp":
			out = append(out, selection.Port{Proto: 6, Port: p.HostPort})
		case "udp":
			out = append(out, selection.Port{Proto: 17, Port: p.HostPort})
		}
	}
	return out
}
