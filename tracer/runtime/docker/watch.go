package docker

import (
	"context"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// Watch implements runtime.Runtime with the Docker events API (no
// polling): container start, die, stop and destroy, and network connect
// and disconnect. It first sends ContainerStarted for every running
// container, then Synced. When the event stream breaks (daemon restart) it reconnects
// with a back-off and reconciles, so a listener sees a stop for every
// container that went away meanwhile. The channel is closed when ctx ends.
func (r *Runtime) Watch(ctx context.Context) (<-chan runtime.Event, error) {
	// Subscribe before listing so that nothing falls between the two.
	msgs, errs, cancel := r.subscribe(ctx)
	initial, err := r.List(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan runtime.Event, 64)
	go func() {
		defer close(out)
		w := &watcher{r: r, out: out, known: map[string]runtime.Container{}}
		for _, c := range initial {
			if !w.started(ctx, c) {
				cancel()
				return
			}
		}
		if !w.send(ctx, runtime.Event{Kind: runtime.Synced}) {
			cancel()
			return
		}
		backoff := 250 * time.Millisecond
		for {
			ok := w.pump(ctx, msgs, errs)
			cancel()
			if !ok || ctx.Err() != nil {
				return
			}
			// The stream broke: reconnect and reconcile.
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				if backoff < 5*time.Second {
					backoff *= 2
				}
				msgs, errs, cancel = r.subscribe(ctx)
				if w.resync(ctx) {
					backoff = 250 * time.Millisecond
					break
				}
				cancel()
				if ctx.Err() != nil {
					return
				}
			}
		}
	}()
	return out, nil
}

func (r *Runtime) subscribe(ctx context.Context) (<-chan events.Message, <-chan error, context.CancelFunc) {
	sctx, cancel := context.WithCancel(ctx)
	f := filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("type", string(events.NetworkEventType)),
		filters.Arg("event", string(events.ActionStart)),
		filters.Arg("event", string(events.ActionDie)),
		filters.Arg("event", string(events.ActionStop)),
		filters.Arg("event", string(events.ActionDestroy)),
		filters.Arg("event", string(events.ActionConnect)),
		filters.Arg("event", string(events.ActionDisconnect)),
	)
	msgs, errs := r.cli.Events(sctx, events.ListOptions{Filters: f})
	return msgs, errs, cancel
}

type watcher struct {
	r     *Runtime
	out   chan<- runtime.Event
	known map[string]runtime.Container // running containers by ID
}

func (w *watcher) send(ctx context.Context, ev runtime.Event) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *watcher) started(ctx context.Context, c runtime.Container) bool {
	_, was := w.known[c.ID]
	w.known[c.ID] = c
	kind := runtime.ContainerStarted
	if was {
		kind = runtime.ContainerUpdated
	}
	return w.send(ctx, runtime.Event{Kind: kind, Container: c})
}

func (w *watcher) stopped(ctx context.Context, id, name string) bool {
	c, was := w.known[id]
	if !was {
		return true // die, stop and destroy all arrive; report once
	}
	delete(w.known, id)
	if c.Name == "" {
		c.Name = name
	}
	c.Running = false
	c.PID = 0
	c.State = "exited"
	return w.send(ctx, runtime.Event{Kind: runtime.ContainerStopped, Container: c})
}

// pump forwards events until the stream ends. It returns false when ctx
// ended or the receiver is gone, true when the stream broke.
func (w *watcher) pump(ctx context.Context, msgs <-chan events.Message, errs <-chan error) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-errs:
			return ctx.Err() == nil
		case m := <-msgs:
			if !w.handle(ctx, m) {
				return false
			}
		}
	}
}

func (w *watcher) handle(ctx context.Context, m events.Message) bool {
	switch m.Type {
	case events.ContainerEventType:
		id := m.Actor.ID
		switch m.Action {
		case events.ActionStart:
			c, err := w.r.inspect(ctx, id)
			if err != nil || !c.Running {
				return ctx.Err() == nil // gone already; its die event follows
			}
			return w.started(ctx, c)
		case events.ActionDie, events.ActionStop, events.ActionDestroy:
			return w.stopped(ctx, id, m.Actor.Attributes["name"])
		}
	case events.NetworkEventType:
		id := m.Actor.Attributes["container"]
		if _, ok := w.known[id]; !ok || id == "" {
			return true
		}
		c, err := w.r.inspect(ctx, id)
		if err != nil || !c.Running {
			return ctx.Err() == nil
		}
		return w.started(ctx, c)
	}
	return true
}

// resync reconciles the known set with the daemon after a reconnect.
func (w *watcher) resync(ctx context.Context) bool {
	list, err := w.r.List(ctx)
	if err != nil {
		return false
	}
	now := map[string]bool{}
	for _, c := range list {
		now[c.ID] = true
	}
	for id, c := range w.known {
		if !now[id] && !w.stopped(ctx, id, c.Name) {
			return false
		}
	}
	for _, c := range list {
		if _, ok := w.known[c.ID]; !ok && !w.started(ctx, c) {
			return false
		}
	}
	return true
}
