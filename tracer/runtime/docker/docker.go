// Package docker implements runtime.Runtime for the Docker Engine, through
// its API (github.com/docker/docker/client). The daemon is found the way the
// docker CLI finds it: DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH and
// DOCKER_TLS_VERIFY are honoured, and the API version is negotiated.
//
// Besides the Runtime it offers an Annotator, which names network
// namespaces after the containers that own them, and a Selector, which
// follows the namespaces of containers picked by name or ID as they start
// and stop.
package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// BridgeNameOption is the network option that names a bridge network's
// Linux bridge device.
const BridgeNameOption = "com.docker.network.bridge.name"

// Runtime is the Docker runtime. It is safe for concurrent use.
type Runtime struct {
	cli *client.Client

	mu   sync.Mutex
	nets map[string]netInfo // network ID -> facts that never change
}

type netInfo struct {
	name, driver, bridge string
}

var _ runtime.Runtime = (*Runtime)(nil)

// New connects to the Docker daemon named by the environment and checks
// that it answers. When it does not, the error wraps runtime.ErrUnavailable
// and says how to reach it.
func New(ctx context.Context) (*Runtime, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("%w: docker client: %v (check DOCKER_HOST=%q)", runtime.ErrUnavailable, err, os.Getenv("DOCKER_HOST"))
	}
	r := &Runtime{cli: cli, nets: map[string]netInfo{}}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(pctx); err != nil {
		cli.Close()
		return nil, r.unavailable(err)
	}
	cli.NegotiateAPIVersion(ctx)
	return r, nil
}

// Client returns the underlying Docker API client.
func (r *Runtime) Client() *client.Client { return r.cli }

// Name implements runtime.Runtime.
func (r *Runtime) Name() string { return "docker" }

// Close implements runtime.Runtime.
func (r *Runtime) Close() error { return r.cli.Close() }

// unavailable explains how to reach the daemon.
func (r *Runtime) unavailable(err error) error {
	host := r.cli.DaemonHost()
	how := "is dockerd running? Start it (systemctl start docker, or scripts/start-dockerd.sh) or set DOCKER_HOST to the daemon's address"
	detail := ""
	if errors.Is(err, syscall.EACCES) || strings.Contains(err.Error(), "permission denied") {
		how = "permission denied: run as root or as a member of the docker group"
	} else if p, ok := strings.CutPrefix(host, "unix://"); ok {
		if _, serr := os.Stat(p); serr != nil {
			how = fmt.Sprintf("the socket %s does not exist; is dockerd running? Start it, or set DOCKER_HOST to the daemon's address (default unix:///var/run/docker.sock)", p)
		}
	}
	if !client.IsErrConnectionFailed(err) {
		detail = " (" + firstLine(err) + ")"
	}
	src := "the default"
	if os.Getenv("DOCKER_HOST") != "" {
		src = "from DOCKER_HOST"
	}
	return &unavailableError{msg: fmt.Sprintf("cannot reach the Docker daemon at %s (%s): %s%s", host, src, how, detail), err: err}
}

type unavailableError struct {
	msg string
	err error
}

func (e *unavailableError) Error() string   { return e.msg }
func (e *unavailableError) Unwrap() []error { return []error{runtime.ErrUnavailable, e.err} }

func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// wrap turns connection failures into ErrUnavailable errors.
func (r *Runtime) wrap(err error) error {
	if err == nil {
		return nil
	}
	if client.IsErrConnectionFailed(err) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EACCES) {
		return r.unavailable(err)
	}
	return err
}

// List implements runtime.Runtime: the running containers, sorted by name.
func (r *Runtime) List(ctx context.Context) ([]runtime.Container, error) {
	sums, err := r.cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return nil, r.wrap(err)
	}
	out := make([]runtime.Container, 0, len(sums))
	for _, s := range sums {
		c, err := r.inspect(ctx, s.ID)
		if err != nil {
			if client.IsErrNotFound(err) { // gone meanwhile
				continue
			}
			return nil, err
		}
		if c.Running {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Names lists every container's name, running or not, sorted (shell
// completion: a container may be named before it starts).
func (r *Runtime) Names(ctx context.Context) ([]string, error) {
	sums, err := r.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, r.wrap(err)
	}
	names := make([]string, 0, len(sums))
	for _, s := range sums {
		names = append(names, summaryName(s))
	}
	sort.Strings(names)
	return names, nil
}

// Lookup implements runtime.Runtime. The reference is matched like the
// docker CLI does: full ID first, then exact name (with or without the
// leading "/"), then unique ID prefix. A stopped container is returned with
// Running false.
func (r *Runtime) Lookup(ctx context.Context, ref string) (runtime.Container, error) {
	id, err := r.resolveRef(ctx, ref)
	if err != nil {
		return runtime.Container{}, err
	}
	c, err := r.inspect(ctx, id)
	if client.IsErrNotFound(err) {
		return runtime.Container{}, fmt.Errorf("%w: %s", runtime.ErrNotFound, ref)
	}
	return c, err
}

func (r *Runtime) resolveRef(ctx context.Context, ref string) (string, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return "", fmt.Errorf("%w: empty container name", runtime.ErrNotFound)
	}
	sums, err := r.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return "", r.wrap(err)
	}
	name := strings.TrimPrefix(ref, "/")
	for _, s := range sums {
		if s.ID == ref {
			return s.ID, nil
		}
	}
	for _, s := range sums {
		for _, n := range s.Names {
			if strings.TrimPrefix(n, "/") == name {
				return s.ID, nil
			}
		}
	}
	var matches []container.Summary
	if isHex(ref) {
		for _, s := range sums {
			if strings.HasPrefix(s.ID, ref) {
				matches = append(matches, s)
			}
		}
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("%w %q (not a container name, ID or ID prefix; see docker ps -a)", runtime.ErrNotFound, ref)
	case 1:
		return matches[0].ID, nil
	}
	var names []string
	for _, m := range matches {
		names = append(names, summaryName(m)+" ("+m.ID[:12]+")")
	}
	sort.Strings(names)
	return "", fmt.Errorf("%w: ID prefix %q matches %d containers: %s; give more of the ID or the name",
		runtime.ErrAmbiguous, ref, len(matches), strings.Join(names, ", "))
}

func summaryName(s container.Summary) string {
	if len(s.Names) > 0 {
		return strings.TrimPrefix(s.Names[0], "/")
	}
	return s.ID[:12]
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != ""
}

// inspect builds a runtime.Container from the daemon's view of one container.
func (r *Runtime) inspect(ctx context.Context, id string) (runtime.Container, error) {
	ci, err := r.cli.ContainerInspect(ctx, id)
	if err != nil {
		return runtime.Container{}, r.wrap(err)
	}
	c := runtime.Container{
		ID:   ci.ID,
		Name: strings.TrimPrefix(ci.Name, "/"),
	}
	if ci.Config != nil {
		c.Image = ci.Config.Image
	}
	if ci.State != nil {
		c.Running = ci.State.Running
		c.State = ci.State.Status
		if c.Running {
			c.PID = ci.State.Pid
		}
	}
	mode := ""
	if ci.HostConfig != nil {
		mode = string(ci.HostConfig.NetworkMode)
	}
	if mode == "" || mode == "default" {
		mode = "bridge"
	}
	c.NetworkMode = mode
	var sandboxKey string
	var nets map[string]*network.EndpointSettings
	if ci.NetworkSettings != nil {
		sandboxKey = ci.NetworkSettings.SandboxKey
		nets = ci.NetworkSettings.Networks
	}
	if c.Running && mode != "host" {
		c.NetnsPath, c.NetnsInode = netnsOf(sandboxKey, c.PID)
	}
	if ci.NetworkSettings != nil {
		c.Published = publishedPorts(ci.NetworkSettings.Ports)
	}
	names := make([]string, 0, len(nets))
	for n := range nets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		es := nets[n]
		if es == nil {
			continue
		}
		ep := runtime.Endpoint{
			Network:    n,
			NetworkID:  es.NetworkID,
			EndpointID: es.EndpointID,
			Gateway:    es.Gateway,
			MAC:        es.MacAddress,
		}
		if es.IPAddress != "" {
			ep.IPv4 = es.IPAddress + "/" + strconv.Itoa(es.IPPrefixLen)
		}
		if es.GlobalIPv6Address != "" {
			ep.IPv6 = es.GlobalIPv6Address + "/" + strconv.Itoa(es.GlobalIPv6PrefixLen)
		}
		if ni, err := r.network(ctx, es.NetworkID, n); err == nil {
			ep.Driver, ep.Bridge = ni.driver, ni.bridge
		} else if errors.Is(err, runtime.ErrUnavailable) {
			return runtime.Container{}, err
		}
		c.Endpoints = append(c.Endpoints, ep)
	}
	return c, nil
}

// netnsOf returns a path that opens the container's network namespace and
// its inode: the SandboxKey when it is a namespace file, else
// /proc/PID/ns/net. A daemon in a mount namespace of its own (a second
// dockerd, a unit with private mounts) bind-mounts its sandboxes there:
// outside it the SandboxKey is an empty plain file whose inode names nothing.
func netnsOf(sandboxKey string, pid int) (string, uint32) {
	if sandboxKey != "" && isNsfs(sandboxKey) {
		if ino, err := resolve.NetnsInode(sandboxKey); err == nil {
			return sandboxKey, ino
		}
	}
	if pid > 0 {
		p := fmt.Sprintf("/proc/%d/ns/net", pid)
		if ino, err := resolve.NetnsInode(p); err == nil {
			return p, ino
		}
	}
	return sandboxKey, 0
}

func isNsfs(path string) bool {
	var sfs unix.Statfs_t
	return unix.Statfs(path, &sfs) == nil && sfs.Type == unix.NSFS_MAGIC
}

// network returns (and caches) a network's driver and bridge device name.
func (r *Runtime) network(ctx context.Context, id, name string) (netInfo, error) {
	key := id
	if key == "" {
		key = name
	}
	if key == "" {
		return netInfo{}, errors.New("endpoint without network")
	}
	r.mu.Lock()
	ni, ok := r.nets[key]
	r.mu.Unlock()
	if ok {
		return ni, nil
	}
	n, err := r.cli.NetworkInspect(ctx, key, network.InspectOptions{})
	if err != nil {
		return netInfo{}, r.wrap(err)
	}
	ni = netInfo{name: n.Name, driver: n.Driver, bridge: BridgeDevice(n.Name, n.ID, n.Driver, n.Options)}
	r.mu.Lock()
	r.nets[key] = ni
	r.mu.Unlock()
	return ni, nil
}

// BridgeDevice names the Linux bridge of a Docker network: the
// com.docker.network.bridge.name option when set, "docker0" for the
// default "bridge" network, "br-<first 12 of the ID>" for other bridge
// networks, and "" for other drivers.
func BridgeDevice(name, id, driver string, options map[string]string) string {
	if driver != "bridge" {
		return ""
	}
	if b := options[BridgeNameOption]; b != "" {
		return b
	}
	if name == "bridge" {
		return "docker0"
	}
	if len(id) > 12 {
		id = id[:12]
	}
	return "br-" + id
}

// publishedPorts lists the host ports published for a container, ordered.
func publishedPorts(pm nat.PortMap) []runtime.PublishedPort {
	var out []runtime.PublishedPort
	for p, binds := range pm {
		cport, err := strconv.ParseUint(p.Port(), 10, 16)
		if err != nil {
			continue
		}
		for _, b := range binds {
			hport, err := strconv.ParseUint(b.HostPort, 10, 16)
			if err != nil || hport == 0 {
				continue
			}
			out = append(out, runtime.PublishedPort{Proto: p.Proto(), HostIP: b.HostIP, HostPort: uint16(hport), ContainerPort: uint16(cport)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].HostPort != out[j].HostPort {
			return out[i].HostPort < out[j].HostPort
		}
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		return out[i].HostIP < out[j].HostIP
	})
	return out
}
