// Package runtime describes containers for hoptrace independently of the
// container engine that runs them. The Docker implementation lives in
// runtime/docker; another engine (containerd, Podman) can be added beside it.
package runtime

import (
	"context"
	"errors"
	"fmt"
)

// ErrUnavailable means the engine could not be reached (daemon down, no socket).
var ErrUnavailable = errors.New("container runtime unavailable")

// ErrNotFound means no container matches the reference given to Lookup.
var ErrNotFound = errors.New("no such container")

// ErrAmbiguous means an ID prefix given to Lookup matches several containers.
var ErrAmbiguous = errors.New("ambiguous container reference")

// ErrNotRunning is for callers that need a running container and were
// given a stopped one (Lookup itself returns stopped containers).
var ErrNotRunning = errors.New("container is not running")

// NotRunning returns an error wrapping ErrNotRunning that names c.
func NotRunning(c Container) error {
	state := c.State
	if state == "" {
		state = "not running"
	}
	return notRunningError{name: c.Name, state: state}
}

type notRunningError struct{ name, state string }

func (e notRunningError) Error() string {
	return fmt.Sprintf("container %s is not running (state: %s)", e.name, e.state)
}
func (e notRunningError) Is(target error) bool { return target == ErrNotRunning }

// Container is what hoptrace needs to know about one container.
type Container struct {
	ID      string
	Name    string // without the leading "/"
	Image   string
	PID     int // 0 when not running
	Running bool
	State   string // engine's word: "running", "exited", "created", "paused", ...
	// NetnsPath opens the container's network namespace (Docker: the
	// SandboxKey, or /proc/PID/ns/net when the container joined another
	// container's namespace); empty for --network host (the container
	// shares the host namespace) and when the container is not running.
	// A --network none container has a namespace of its own (only "lo").
	NetnsPath string
	// NetnsInode identifies the namespace; 0 when unknown or for --network host.
	NetnsInode uint32
	// NetworkMode is "bridge", "host", "none", "container:<id>" or a
	// user-defined network name.
	NetworkMode string
	Endpoints   []Endpoint
	// Published are the ports published on the host (docker run -p).
	Published []PublishedPort
}

// PublishedPort is one host port forwarded (DNAT) to a container's port.
type PublishedPort struct {
	Proto         string `json:"proto"`   // "tcp" or "udp"
	HostIP        string `json:"host_ip"` // "" or "0.0.0.0": every host address
	HostPort      uint16 `json:"host_port"`
	ContainerPort uint16 `json:"container_port"`
}

// Endpoint is one attachment of a container to a network.
type Endpoint struct {
	Network    string `json:"network"`
	NetworkID  string `json:"network_id"`
	Driver     string `json:"driver"`
	Bridge     string `json:"bridge"` // bridge device name in the host namespace ("docker0", "br-<id12>")
	EndpointID string `json:"endpoint_id"`
	IPv4       string `json:"ipv4,omitempty"` // CIDR, e.g. "172.17.0.2/16"
	IPv6       string `json:"ipv6,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	MAC        string `json:"mac,omitempty"`
}

// EventKind says what happened to a container.
type EventKind int

const (
	ContainerStarted EventKind = iota + 1
	ContainerStopped
	// ContainerUpdated: a running container was connected to or
	// disconnected from a network; Container carries the new endpoints.
	ContainerUpdated
	// Synced carries no container: every container running when Watch
	// began has been sent. Sent once per Watch.
	Synced
)

func (k EventKind) String() string {
	switch k {
	case ContainerStarted:
		return "started"
	case ContainerStopped:
		return "stopped"
	case ContainerUpdated:
		return "updated"
	case Synced:
		return "synced"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is a change in the set of running containers. For ContainerStopped,
// Container holds what was known while it ran (ID, Name, NetnsInode), so a
// listener can forget the namespace it had recorded.
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
	// Lookup finds one container by name, ID or unique ID prefix, running or
	// not. Errors wrap ErrNotFound, ErrAmbiguous or ErrUnavailable.
	Lookup(ctx context.Context, ref string) (Container, error)
	// Watch sends container start/stop events until ctx ends; the channel
	// is closed when it returns. It first sends ContainerStarted for every
	// container already running, then one Synced event, so a listener
	// needs no separate List.
	Watch(ctx context.Context) (<-chan Event, error)
	Close() error
}
