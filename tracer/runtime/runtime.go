// Package runtime describes containers for hoptrace independently of the
// container engine that runs them. The Docker implementation lives in
// runtime/docker; another engine (containerd, Podman) can be added beside it.
package runtime

import (
	"context"
	"errors"
)

// ErrUnavailable means the engine could not be reached (daemon down, no socket).
var ErrUnavailable = errors.New("container runtime unavailable")

// Container is what hoptrace needs to know about one container.
type Container struct {
	ID      string
	Name    string // without the leading "/"
	PID     int    // 0 when not running
	Running bool
	// NetnsPath opens the container's network namespace (Docker: the
	// SandboxKey); empty for --network host / none.
	NetnsPath string
	// NetnsInode identifies the namespace; 0 when unknown.
	NetnsInode uint32
	// NetworkMode is "bridge", "host", "none", "container:<id>" or a
	// user-defined network name.
	NetworkMode string
	Endpoints   []Endpoint
}

// Endpoint is one attachment of a container to a network.
type Endpoint struct {
	Network    string
	NetworkID  string
	Driver     string
	Bridge     string // bridge device name in the host namespace ("docker0", "br-<id12>")
	EndpointID string
	IPv4       string // CIDR, e.g. "172.17.0.2/16"
	IPv6       string
	Gateway    string
	MAC        string
}

// EventKind says what happened to a container.
type EventKind int

const (
	ContainerStarted EventKind = iota + 1
	ContainerStopped
)

// Event is a change in the set of running containers.
type Event struct {
	Kind      EventKind
	Container Container
}

// Runtime lists containers and reports when they start and stop.
type Runtime interface {
	// Name of the engine, e.g. "docker".
	Name() string
	// List returns the running containers.
	List(ctx context.Context) ([]Container, error)
	// Lookup finds one container by name, ID or unique ID prefix, running or not.
	Lookup(ctx context.Context, ref string) (Container, error)
	// Watch sends container start/stop events until ctx ends; the channel
	// is closed when it returns.
	Watch(ctx context.Context) (<-chan Event, error)
	Close() error
}
