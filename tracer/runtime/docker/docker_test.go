package docker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
)

func inodeOf(t *testing.T, path string) uint32 {
	t.Helper()
	ino, err := resolve.NetnsInode(path)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func TestBridgeDevice(t *testing.T) {
	id := "0123456789abcdef0123"
	for _, tc := range []struct {
		name, driver string
		opts         map[string]string
		want         string
	}{
		{"bridge", "bridge", nil, "docker0"},
		{"bridge", "bridge", map[string]string{docker.BridgeNameOption: "docker0"}, "docker0"},
		{"mynet", "bridge", nil, "br-0123456789ab"},
		{"mynet", "bridge", map[string]string{docker.BridgeNameOption: "htbr0"}, "htbr0"},
		{"host", "host", nil, ""},
		{"none", "null", nil, ""},
		{"mv", "macvlan", nil, ""},
	} {
		if got := docker.BridgeDevice(tc.name, id, tc.driver, tc.opts); got != tc.want {
			t.Errorf("BridgeDevice(%q, %q, %v) = %q, want %q", tc.name, tc.driver, tc.opts, got, tc.want)
		}
	}
}

func TestLookup(t *testing.T) {
	rt := testdocker.Runtime(t)
	ctx := context.Background()
	c := testdocker.Run(t, "ht-lookup")
	d := testdocker.Inspect(t, c.ID)
	wantPID := testdocker.String(d, "State", "Pid")
	sandbox := testdocker.String(d, "NetworkSettings", "SandboxKey")

	for _, ref := range []string{c.Name, "/" + c.Name, c.ID, c.ID[:12], c.ID[:20]} {
		got, err := rt.Lookup(ctx, ref)
		if err != nil {
			t.Fatalf("Lookup(%q): %v", ref, err)
		}
		if got.ID != c.ID || got.Name != c.Name {
			t.Errorf("Lookup(%q) = %s/%s, want %s/%s", ref, got.Name, got.ID, c.Name, c.ID)
		}
		if !got.Running || fmt.Sprint(got.PID) != wantPID || got.State != "running" {
			t.Errorf("Lookup(%q): running=%v pid=%d state=%q, want running pid %s", ref, got.Running, got.PID, got.State, wantPID)
		}
		if got.NetnsPath != sandbox {
			t.Errorf("NetnsPath = %q, docker says SandboxKey %q", got.NetnsPath, sandbox)
		}
		if want := inodeOf(t, fmt.Sprintf("/proc/%s/ns/net", wantPID)); got.NetnsInode != want {
			t.Errorf("NetnsInode = %d, /proc/%s/ns/net has %d", got.NetnsInode, wantPID, want)
		}
		if got.NetworkMode != "bridge" {
			t.Errorf("NetworkMode = %q, want bridge", got.NetworkMode)
		}
		if len(got.Endpoints) != 1 {
			t.Fatalf("endpoints = %+v, want one", got.Endpoints)
		}
		ep := got.Endpoints[0]
		nw := testdocker.Field(d, "NetworkSettings", "Networks", "bridge").(map[string]any)
		wantIP := testdocker.String(nw, "IPAddress") + "/" + testdocker.String(nw, "IPPrefixLen")
		if ep.Network != "bridge" || ep.Bridge != "docker0" || ep.Driver != "bridge" ||
			ep.IPv4 != wantIP || ep.MAC != testdocker.String(nw, "MacAddress") ||
			ep.Gateway != testdocker.String(nw, "Gateway") || ep.EndpointID != testdocker.String(nw, "EndpointID") ||
			ep.NetworkID != testdocker.String(nw, "NetworkID") {
			t.Errorf("endpoint %+v does not match docker inspect %v", ep, nw)
		}
	}

	// Unknown names give ErrNotFound, on one line.
	_, err := rt.Lookup(ctx, "ht-no-such-container-xyz")
	if !errors.Is(err, runtime.ErrNotFound) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "ht-no-such-container-xyz") {
		t.Errorf("Lookup(unknown) = %v, want one-line ErrNotFound naming it", err)
	}
}

func TestLookupAmbiguousPrefix(t *testing.T) {
	rt := testdocker.Runtime(t)
	ctx := context.Background()
	// Create containers until two share a first hex digit (at most 17).
	seen := map[byte]testdocker.Container{}
	var a, b testdocker.Container
	for i := 0; i < 17; i++ {
		c := testdocker.Create(t, "ht-amb")
		if prev, ok := seen[c.ID[0]]; ok {
			a, b = prev, c
			break
		}
		seen[c.ID[0]] = c
	}
	if a.ID == "" {
		t.Fatal("17 containers without a shared first ID digit")
	}
	// The longest common prefix is still ambiguous.
	n := 0
	for n < len(a.ID) && a.ID[n] == b.ID[n] {
		n++
	}
	prefix := a.ID[:n]
	_, err := rt.Lookup(ctx, prefix)
	if !errors.Is(err, runtime.ErrAmbiguous) {
		t.Fatalf("Lookup(%q) = %v, want ErrAmbiguous", prefix, err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, a.Name) || !strings.Contains(msg, b.Name) {
		t.Errorf("ambiguous error %q should be one line naming %s and %s", msg, a.Name, b.Name)
	}
	// One more digit disambiguates.
	got, err := rt.Lookup(ctx, a.ID[:n+1])
	if err != nil || got.ID != a.ID {
		t.Errorf("Lookup(%q) = %v, %v; want %s", a.ID[:n+1], got.ID, err, a.ID)
	}
}

func TestLookupStopped(t *testing.T) {
	rt := testdocker.Runtime(t)
	c := testdocker.Run(t, "ht-stopped")
	testdocker.Docker(t, "kill", c.Name)
	testdocker.Docker(t, "wait", c.Name)
	got, err := rt.Lookup(context.Background(), c.Name)
	if err != nil {
		t.Fatalf("Lookup(stopped): %v", err)
	}
	if got.Running || got.PID != 0 || got.NetnsInode != 0 || got.State != "exited" {
		t.Errorf("stopped container: running=%v pid=%d inode=%d state=%q", got.Running, got.PID, got.NetnsInode, got.State)
	}
	err = runtime.NotRunning(got)
	if !errors.Is(err, runtime.ErrNotRunning) || err.Error() != fmt.Sprintf("container %s is not running (state: exited)", c.Name) {
		t.Errorf("NotRunning = %q", err)
	}
	list, err := rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list {
		if l.ID == c.ID {
			t.Errorf("List includes the stopped container %s", c.Name)
		}
	}
}

func TestUserDefinedNetworkAndModes(t *testing.T) {
	rt := testdocker.Runtime(t)
	ctx := context.Background()
	netName, netID := testdocker.Network(t, "ht-net")
	named, _ := testdocker.Network(t, "ht-named", "-o", docker.BridgeNameOption+"=htbr"+netID[:6])
	c := testdocker.Run(t, "ht-udn", "--network", netName)
	testdocker.Docker(t, "network", "connect", named, c.Name)
	host := testdocker.Run(t, "ht-host", "--network", "host")
	none := testdocker.Run(t, "ht-none", "--network", "none")

	got, err := rt.Lookup(ctx, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	bridges := map[string]string{}
	for _, ep := range got.Endpoints {
		bridges[ep.Network] = ep.Bridge
	}
	if bridges[netName] != "br-"+netID[:12] || bridges[named] != "htbr"+netID[:6] || len(bridges) != 2 {
		t.Errorf("bridges = %v, want %s→br-%s and %s→htbr%s", bridges, netName, netID[:12], named, netID[:6])
	}
	if got.NetworkMode != netName {
		t.Errorf("NetworkMode = %q, want %q", got.NetworkMode, netName)
	}

	h, err := rt.Lookup(ctx, host.Name)
	if err != nil {
		t.Fatal(err)
	}
	if h.NetworkMode != "host" || h.NetnsPath != "" || h.NetnsInode != 0 || !h.Running {
		t.Errorf("host container: mode=%q path=%q inode=%d", h.NetworkMode, h.NetnsPath, h.NetnsInode)
	}
	n, err := rt.Lookup(ctx, none.Name)
	if err != nil {
		t.Fatal(err)
	}
	if n.NetworkMode != "none" || n.NetnsInode == 0 || n.NetnsInode == inodeOf(t, "/proc/self/ns/net") {
		t.Errorf("none container: mode=%q inode=%d", n.NetworkMode, n.NetnsInode)
	}
	for _, ep := range n.Endpoints {
		if ep.Bridge != "" || ep.IPv4 != "" {
			t.Errorf("none container endpoint %+v", ep)
		}
	}
}

func TestUnavailable(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix:///nonexistent.sock")
	_, err := docker.New(context.Background())
	if err == nil {
		t.Fatal("New succeeded against a missing socket")
	}
	msg := err.Error()
	if !errors.Is(err, runtime.ErrUnavailable) {
		t.Errorf("error %q does not wrap ErrUnavailable", msg)
	}
	for _, want := range []string{"/nonexistent.sock", "DOCKER_HOST", "dockerd"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error %q has several lines", msg)
	}
}

// waitOwner polls the annotator (which itself is driven by events).
func waitOwner(a *docker.Annotator, inode uint32, want string, present bool) (string, bool) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		name, ok := a.NetnsOwner(inode)
		if ok == present && (!present || name == want) || time.Now().After(deadline) {
			return name, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAnnotator(t *testing.T) {
	rt := testdocker.Runtime(t)
	ctx := context.Background()
	before := testdocker.Run(t, "ht-ann-before")
	a, err := docker.NewAnnotator(ctx, rt)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	select {
	case <-a.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("annotator never synced")
	}
	// A container running before the annotator began is known at once.
	bc, err := rt.Lookup(ctx, before.Name)
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := a.NetnsOwner(bc.NetnsInode); !ok || name != before.Name {
		t.Errorf("after Synced, NetnsOwner(%d) = %q, %v; want %s", bc.NetnsInode, name, ok, before.Name)
	}
	sub := a.Subscribe()

	c := testdocker.Run(t, "ht-ann")
	pid := testdocker.String(testdocker.Inspect(t, c.ID), "State", "Pid")
	inode := inodeOf(t, "/proc/"+pid+"/ns/net")
	if name, ok := waitOwner(a, inode, c.Name, true); !ok || name != c.Name {
		t.Fatalf("NetnsOwner(%d) = %q, %v after start; want %s", inode, name, ok, c.Name)
	}
	// The subscriber saw the start.
	sawStart := false
	timeout := time.After(10 * time.Second)
	for !sawStart {
		select {
		case ev := <-sub:
			sawStart = ev.Kind == runtime.ContainerStarted && ev.Container.ID == c.ID
		case <-timeout:
			t.Fatal("subscriber saw no start event")
		}
	}
	testdocker.Docker(t, "stop", "-t", "0", c.Name)
	if name, ok := waitOwner(a, inode, "", false); ok {
		t.Fatalf("NetnsOwner(%d) = %q after stop; want forgotten", inode, name)
	}
	// The other container is still named.
	if _, ok := a.NetnsOwner(bc.NetnsInode); !ok {
		t.Error("stopping one container made the annotator forget another")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, open := <-sub; open {
		// drain: the channel must be closed after Close
		for range sub {
		}
	}
}

func TestSelectorFollowsNotYetStarted(t *testing.T) {
	rt := testdocker.Runtime(t)
	ctx := context.Background()
	name := testdocker.UniqueName("ht-sel")
	s, err := docker.NewSelector(ctx, rt, name)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.Synced()
	if p := s.Pending(); len(p) != 1 || p[0] != name {
		t.Errorf("Pending = %v, want [%s]", p, name)
	}
	testdocker.Run(t, "ht-sel-other") // must not be selected
	t.Cleanup(func() { testdocker.DockerErr("rm", "-f", name) })
	id := testdocker.Docker(t, "run", "-d", "--name", name, testdocker.Image, "sleep", "3600")
	pid := testdocker.String(testdocker.Inspect(t, id), "State", "Pid")
	inode := inodeOf(t, "/proc/"+pid+"/ns/net")
	next := func() docker.Change {
		select {
		case ch := <-s.Changes():
			return ch
		case <-time.After(10 * time.Second):
			t.Fatal("no selector change within 10 s")
		}
		return docker.Change{}
	}
	ch := next()
	if !ch.Added || ch.Inode != inode || ch.Container.Name != name {
		t.Fatalf("change = %+v, want added %s inode %d", ch, name, inode)
	}
	testdocker.Docker(t, "stop", "-t", "0", name)
	ch = next()
	if ch.Added || ch.Inode != inode || ch.Container.ID != id {
		t.Fatalf("change = %+v, want removed inode %d", ch, inode)
	}
}
