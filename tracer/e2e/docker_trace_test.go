package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// dockerBox is a test container with what its path should show.
type dockerBox struct {
	name, ip, gateway, hostVeth string
}

func box(t *testing.T, c testdocker.Container, network string) dockerBox {
	t.Helper()
	m := testdocker.Inspect(t, c.ID)
	b := dockerBox{name: c.Name}
	if network == "" {
		b.ip = testdocker.String(m, "NetworkSettings", "IPAddress")
		b.gateway = testdocker.String(m, "NetworkSettings", "Gateway")
	} else {
		b.ip = testdocker.String(m, "NetworkSettings", "Networks", network, "IPAddress")
		b.gateway = testdocker.String(m, "NetworkSettings", "Networks", network, "Gateway")
	}
	// eth0's iflink is its peer's ifindex in the host namespace.
	iflink, err := strconv.Atoi(testdocker.Exec(t, c.Name, "cat", "/sys/class/net/eth0/iflink"))
	if err != nil {
		t.Fatalf("iflink of %s: %v", c.Name, err)
	}
	l, err := netlink.LinkByIndex(iflink)
	if err != nil {
		t.Fatalf("host veth of %s (ifindex %d): %v", c.Name, iflink, err)
	}
	b.hostVeth = l.Attrs().Name
	if b.ip == "" || b.gateway == "" {
		t.Fatalf("container %s has no address/gateway: %+v", c.Name, b)
	}
	return b
}

// stopJSON interrupts a JSON trace and returns its paths.
func stopJSON(t *testing.T, r *running) []path.Path {
	t.Helper()
	stopCLI(t, r)
	var paths []path.Path
	for _, l := range r.lines {
		var p path.Path
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("not a JSON path: %q", l)
		}
		paths = append(paths, p)
	}
	return paths
}

// hopNames renders hops as "owner/ifname/kind/direction" with the container
// name where the hop is in a container, "host" otherwise.
func hopNames(p path.Path) string {
	var parts []string
	for _, h := range p.Hops {
		owner := h.Container
		if owner == "" {
			owner = h.Netns
		}
		parts = append(parts, fmt.Sprintf("%s/%s/%s/%s", owner, h.Ifname, h.Kind, h.Direction))
	}
	return strings.Join(parts, " ")
}

func findPath(paths []path.Path, match func(path.Path) bool) (path.Path, bool) {
	for _, p := range paths {
		if match(p) {
			return p, true
		}
	}
	return path.Path{}, false
}

func toGateway(a dockerBox, bridge string) string {
	return fmt.Sprintf("%s/eth0/veth/egress host/%s/veth/ingress host/%s/bridge/local", a.name, a.hostVeth, bridge)
}

func bridged(a, b dockerBox, bridge string) string {
	return fmt.Sprintf("%s/eth0/veth/egress host/%s/veth/ingress host/%s/bridge/forward host/%s/veth/egress %s/eth0/veth/ingress",
		a.name, a.hostVeth, bridge, b.hostVeth, b.name)
}

// checkContainerPaths runs the shared scenario: a pings its gateway and
// opens a TCP connection to b; both paths carry the containers' names.
func checkContainerPaths(t *testing.T, a, b dockerBox, bridge string) {
	t.Helper()
	r := startCLI(t, "trace", "--container", a.name, "--output", "json")
	waitAttached(t, r)

	testdocker.Exec(t, b.name, "sh", "-c", "nc -l -p 8080 </dev/null >/dev/null 2>&1 & sleep 0.3")
	testdocker.Exec(t, a.name, "ping", "-c", "1", "-W", "2", a.gateway)
	testdocker.Exec(t, a.name, "sh", "-c", fmt.Sprintf("echo hop | nc -w 1 %s 8080 || true", b.ip))
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)

	req, ok := findPath(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Src == a.ip && p.Dst == a.gateway && strings.Contains(p.Summary, "request")
	})
	if !ok {
		t.Fatalf("no echo request %s -> %s among %d paths", a.ip, a.gateway, len(paths))
	}
	if got, want := hopNames(req), toGateway(a, bridge); got != want {
		t.Errorf("to gateway:\n got %s\nwant %s", got, want)
	}
	if req.Verdict != path.Delivered {
		t.Errorf("echo request to gateway: %s (%s)", req.Verdict, req.End)
	}
	syn, ok := findPath(paths, func(p path.Path) bool {
		return p.Proto == "TCP" && p.Src == a.ip && p.Dst == b.ip && p.Dport == 8080 && strings.Contains(p.Summary, "[S]")
	})
	if !ok {
		t.Fatalf("no TCP SYN %s -> %s:8080 among %d paths", a.ip, b.ip, len(paths))
	}
	if got, want := hopNames(syn), bridged(a, b, bridge); got != want {
		t.Errorf("container to container:\n got %s\nwant %s", got, want)
	}
	synAck, ok := findPath(paths, func(p path.Path) bool {
		return p.Proto == "TCP" && p.Src == b.ip && p.Dst == a.ip && p.Sport == 8080 && strings.Contains(p.Summary, "[S.]")
	})
	if !ok {
		t.Fatalf("no SYN-ACK back to %s (traffic to the selected container is traced too)", a.name)
	}
	if got, want := hopNames(synAck), bridged(b, a, bridge); got != want {
		t.Errorf("reply:\n got %s\nwant %s", got, want)
	}
}

func TestTraceContainersOnDefaultBridge(t *testing.T) {
	testdocker.RequireDocker(t)
	a := box(t, testdocker.Run(t, "ht-a"), "")
	b := box(t, testdocker.Run(t, "ht-b"), "")
	checkContainerPaths(t, a, b, "docker0")
}

func TestTraceContainersOnUserBridge(t *testing.T) {
	testdocker.RequireDocker(t)
	network, id := testdocker.Network(t, "ht-net")
	a := box(t, testdocker.Run(t, "ht-a", "--network", network), network)
	b := box(t, testdocker.Run(t, "ht-b", "--network", network), network)
	checkContainerPaths(t, a, b, "br-"+id[:12])
}

// A container named on the command line before it exists is traced as soon
// as it starts, and its first packet's hops carry its name.
func TestTraceContainerStartedDuringTrace(t *testing.T) {
	testdocker.RequireDocker(t)
	name := testdocker.UniqueName("ht-late")
	r := startCLI(t, "trace", "--container", name, "--output", "json", "--proto", "icmp")
	waitAttached(t, r)
	waitStderr(t, r, "waiting for container(s) to start: "+name+" (no such container yet")
	t.Cleanup(func() { testdocker.DockerErr("rm", "-f", name) })
	id := testdocker.Docker(t, "run", "-d", "--name", name, "--label", "hoptrace-test=1", testdocker.Image, "sleep", "3600")
	c := box(t, testdocker.Container{Name: name, ID: id}, "")
	time.Sleep(500 * time.Millisecond) // the start event reaches the tracer
	testdocker.Exec(t, name, "ping", "-c", "1", "-W", "2", c.gateway)
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	if len(paths) == 0 {
		t.Fatal("nothing traced from the container started during the trace")
	}
	first := paths[0]
	if first.Src != c.ip || first.Dst != c.gateway {
		t.Fatalf("first traced packet %s, want the ping %s -> %s", first.Summary, c.ip, c.gateway)
	}
	if got, want := hopNames(first), toGateway(c, "docker0"); got != want {
		t.Errorf("first packet:\n got %s\nwant %s", got, want)
	}
}

// A container that exists but is not running is named as such while the
// trace waits for it.
func TestTraceWaitsForStoppedContainer(t *testing.T) {
	testdocker.RequireDocker(t)
	name := testdocker.UniqueName("ht-created")
	t.Cleanup(func() { testdocker.DockerErr("rm", "-f", name) })
	testdocker.Docker(t, "create", "--name", name, "--label", "hoptrace-test=1", testdocker.Image, "sleep", "3600")
	r := startCLI(t, "trace", "--container", name)
	waitAttached(t, r)
	waitStderr(t, r, "waiting for container(s) to start: "+name+" (created: docker start "+name+")")
}

// Without --container every container's hops are named all the same.
func TestTraceNamesContainersWithoutSelection(t *testing.T) {
	testdocker.RequireDocker(t)
	a := box(t, testdocker.Run(t, "ht-a"), "")
	r := startCLI(t, "trace", "--output", "json", "--proto", "icmp", "--host", a.ip)
	waitAttached(t, r)
	testdocker.Exec(t, a.name, "ping", "-c", "1", "-W", "2", a.gateway)
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	req, ok := findPath(paths, func(p path.Path) bool { return p.Src == a.ip && strings.Contains(p.Summary, "request") })
	if !ok {
		t.Fatalf("echo request from %s not traced (%d paths)", a.ip, len(paths))
	}
	if got, want := hopNames(req), toGateway(a, "docker0"); got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

// --container with a name no daemon can resolve, while Docker is down, is a
// one-line error; plain tracing still works with a warning.
func TestTraceDockerUnreachable(t *testing.T) {
	privtest.SameOnEveryKernel(t, "an unreachable Docker daemon is a client error, the same on every kernel")
	privtest.RequireRoot(t)
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/hoptrace.sock")
	res := runCLI(t, "trace", "--container", "web")
	if res.code != exitFail || !strings.Contains(res.stderr, "--container needs Docker") || strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
		t.Errorf("exit %d stderr %q, want one line saying --container needs Docker", res.code, res.stderr)
	}
	res = runCLI(t, "trace", "--duration", "300ms")
	if res.code != 0 || !strings.Contains(res.stderr, "container names unavailable") {
		t.Errorf("exit %d stderr %q, want a warning and a working trace", res.code, res.stderr)
	}
}
