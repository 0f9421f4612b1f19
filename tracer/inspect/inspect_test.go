package inspect_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/inspect"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
)

// kernelView is what the kernel says, read without the code under test:
// sysfs inside the container (docker exec) and on the host.
type kernelView struct {
	ifindex, iflink int
	mac             string
	hostVeth        string
	master          string
}

func readKernel(t *testing.T, container, ifname string) kernelView {
	t.Helper()
	var k kernelView
	var err error
	k.ifindex, err = strconv.Atoi(testdocker.Exec(t, container, "cat", "/sys/class/net/"+ifname+"/ifindex"))
	if err != nil {
		t.Fatal(err)
	}
	k.iflink, err = strconv.Atoi(testdocker.Exec(t, container, "cat", "/sys/class/net/"+ifname+"/iflink"))
	if err != nil {
		t.Fatal(err)
	}
	k.mac = testdocker.Exec(t, container, "cat", "/sys/class/net/"+ifname+"/address")
	l, err := netlink.LinkByIndex(k.iflink)
	if err != nil {
		t.Fatalf("host ifindex %d (iflink of %s in %s): %v", k.iflink, ifname, container, err)
	}
	k.hostVeth = l.Attrs().Name
	if dst, err := os.Readlink("/sys/class/net/" + k.hostVeth + "/master"); err == nil {
		k.master = filepath.Base(dst)
	}
	return k
}

func checkAgainstDocker(t *testing.T, r *inspect.Report, c testdocker.Container, netName, wantBridge string) inspect.Endpoint {
	t.Helper()
	d := testdocker.Inspect(t, c.ID)
	if r.Name != c.Name || r.ID != c.ID {
		t.Errorf("name/id = %s/%s, want %s/%s", r.Name, r.ID, c.Name, c.ID)
	}
	if got, want := strconv.Itoa(r.PID), testdocker.String(d, "State", "Pid"); got != want {
		t.Errorf("pid = %s, docker says %s", got, want)
	}
	if got, want := r.SandboxKey, testdocker.String(d, "NetworkSettings", "SandboxKey"); got != want {
		t.Errorf("sandbox key = %q, docker says %q", got, want)
	}
	var st = mustInode(t, "/proc/"+strconv.Itoa(r.PID)+"/ns/net")
	if r.NetnsInode != st {
		t.Errorf("netns inode = %d, /proc says %d", r.NetnsInode, st)
	}
	var ep *inspect.Endpoint
	for i := range r.Endpoints {
		if r.Endpoints[i].Network == netName {
			ep = &r.Endpoints[i]
		}
	}
	if ep == nil {
		t.Fatalf("no endpoint for network %s in %+v", netName, r.Endpoints)
	}
	nw, _ := testdocker.Field(d, "NetworkSettings", "Networks", netName).(map[string]any)
	for _, f := range []struct{ name, got, want string }{
		{"network id", ep.NetworkID, testdocker.String(nw, "NetworkID")},
		{"endpoint id", ep.EndpointID, testdocker.String(nw, "EndpointID")},
		{"ipv4", ep.IPv4, testdocker.String(nw, "IPAddress") + "/" + testdocker.String(nw, "IPPrefixLen")},
		{"gateway", ep.Gateway, testdocker.String(nw, "Gateway")},
		{"mac", ep.MAC, testdocker.String(nw, "MacAddress")},
		{"bridge", ep.Bridge, wantBridge},
		{"driver", ep.Driver, "bridge"},
	} {
		if f.got != f.want {
			t.Errorf("%s: %s = %q, docker says %q", netName, f.name, f.got, f.want)
		}
	}
	if ep.Container == nil || ep.HostVeth == nil || ep.BridgeDev == nil {
		t.Fatalf("%s: missing interfaces: container=%v host=%v bridge=%v (checks %+v)", netName, ep.Container, ep.HostVeth, ep.BridgeDev, ep.Checks)
	}
	k := readKernel(t, c.Name, ep.Container.Name)
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"container ifindex", ep.Container.Index, k.ifindex},
		{"container peer ifindex", ep.Container.PeerIndex, k.iflink},
		{"container mac", ep.Container.MAC, k.mac},
		{"host veth", ep.HostVeth.Name, k.hostVeth},
		{"host veth ifindex", ep.HostVeth.Index, k.iflink},
		{"host veth peer", ep.HostVeth.PeerIndex, k.ifindex},
		{"master", ep.HostVeth.Master, k.master},
		{"master is the bridge", ep.HostVeth.Master, wantBridge},
		{"bridge device", ep.BridgeDev.Name, wantBridge},
	} {
		if f.got != f.want {
			t.Errorf("%s: %s = %v, kernel says %v", netName, f.name, f.got, f.want)
		}
	}
	return *ep
}

func mustInode(t *testing.T, p string) uint32 {
	t.Helper()
	ino, err := resolve.NetnsInode(p)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func allOK(t *testing.T, r *inspect.Report) {
	t.Helper()
	if len(r.Warnings) != 0 {
		t.Errorf("warnings on a healthy container: %q", r.Warnings)
	}
	for _, e := range r.Endpoints {
		if len(e.Checks) < 8 {
			t.Errorf("%s: only %d checks: %+v", e.Network, len(e.Checks), e.Checks)
		}
		for _, c := range e.Checks {
			if !c.OK {
				t.Errorf("%s: check %q failed: %s", e.Network, c.Fact, c.Detail)
			}
		}
	}
}

func text(t *testing.T, r *inspect.Report) string {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestInspectDefaultBridge(t *testing.T) {
	rt := testdocker.Runtime(t)
	c := testdocker.Run(t, "ht-insp")
	r, err := inspect.Inspect(context.Background(), rt, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	ep := checkAgainstDocker(t, r, c, "bridge", "docker0")
	allOK(t, r)
	out := text(t, r)
	for _, want := range []string{
		c.Name, c.ID, r.SandboxKey, fmt.Sprint(r.NetnsInode),
		fmt.Sprintf("%s@if%d", ep.Container.Name, ep.Container.PeerIndex),
		ep.HostVeth.Name, "docker0", ep.IPv4, ep.MAC, ep.Gateway, ep.EndpointID, inspect.MarkOK,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, inspect.MarkBad) {
		t.Errorf("text output has a ✗ for a healthy container:\n%s", out)
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back inspect.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON output does not decode: %v", err)
	}
	if back.ID != c.ID || len(back.Endpoints) != 1 || back.Endpoints[0].HostVeth.Name != ep.HostVeth.Name || back.Endpoints[0].IPv4 != ep.IPv4 {
		t.Errorf("JSON round trip lost facts: %s", js.String())
	}

	// Prefix lookups work the same.
	r2, err := inspect.Inspect(context.Background(), rt, c.ID[:12])
	if err != nil || r2.ID != c.ID {
		t.Errorf("Inspect(id prefix) = %v, %v", r2, err)
	}
}

func TestInspectUserDefinedBridgeAndVethDown(t *testing.T) {
	rt := testdocker.Runtime(t)
	netName, netID := testdocker.Network(t, "ht-insp-net")
	c := testdocker.Run(t, "ht-insp-udn", "--network", netName)
	ctx := context.Background()
	r, err := inspect.Inspect(ctx, rt, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	bridge := "br-" + netID[:12]
	ep := checkAgainstDocker(t, r, c, netName, bridge)
	allOK(t, r)
	if out := text(t, r); !strings.Contains(out, bridge) || !strings.Contains(out, netName) {
		t.Errorf("text output lacks %s / %s:\n%s", bridge, netName, out)
	}

	// Take the host veth down: inspect still succeeds and warns.
	l, err := netlink.LinkByName(ep.HostVeth.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	r, err = inspect.Inspect(ctx, rt, c.Name)
	if err != nil {
		t.Fatalf("Inspect with the veth down: %v (want a report with warnings)", err)
	}
	found := false
	for _, w := range r.Warnings {
		if strings.Contains(w, ep.HostVeth.Name) && strings.Contains(w, "down") {
			found = true
		}
	}
	if !found {
		t.Errorf("no warning about %s being down: %q", ep.HostVeth.Name, r.Warnings)
	}
	out := text(t, r)
	if !strings.Contains(out, inspect.MarkBad+" host veth "+ep.HostVeth.Name+" is down") {
		t.Errorf("text output lacks the ✗ for the down veth:\n%s", out)
	}

	// Move it to another bridge: "wrong bridge".
	other := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "htb" + netID[:8]}}
	if err := netlink.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(other)
	if err := netlink.LinkSetMaster(l, other); err != nil {
		t.Fatal(err)
	}
	r, err = inspect.Inspect(ctx, rt, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(r.Warnings, "\n"), "enslaved to "+other.Name+", expected "+bridge) {
		t.Errorf("no wrong-bridge warning: %q", r.Warnings)
	}
	// And off any bridge.
	if err := netlink.LinkSetNoMaster(l); err != nil {
		t.Fatal(err)
	}
	r, _ = inspect.Inspect(ctx, rt, c.Name)
	if !strings.Contains(strings.Join(r.Warnings, "\n"), "not enslaved to any bridge") {
		t.Errorf("no not-enslaved warning: %q", r.Warnings)
	}
	// Remove the container's address: mismatch.
	nsh, err := netns.GetFromPath(r.SandboxKey)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	ch, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr(ep.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.AddrDel(eth0, addr); err != nil {
		t.Fatalf("remove %s from the container's eth0: %v", ep.IPv4, err)
	}
	r, _ = inspect.Inspect(ctx, rt, c.Name)
	if !strings.Contains(strings.Join(r.Warnings, "\n"), "not on eth0") {
		t.Errorf("no address warning: %q", r.Warnings)
	}
}

func TestInspectModesAndErrors(t *testing.T) {
	rt := testdocker.Runtime(t)
	ctx := context.Background()
	host := testdocker.Run(t, "ht-insp-host", "--network", "host")
	none := testdocker.Run(t, "ht-insp-none", "--network", "none")

	r, err := inspect.Inspect(ctx, rt, host.Name)
	if err != nil {
		t.Fatal(err)
	}
	if out := text(t, r); !strings.Contains(out, "shares the host network namespace") {
		t.Errorf("host mode text:\n%s", out)
	}
	r, err = inspect.Inspect(ctx, rt, none.Name)
	if err != nil {
		t.Fatal(err)
	}
	if out := text(t, r); !strings.Contains(out, "has no network path") || len(r.Endpoints) != 0 {
		t.Errorf("none mode text:\n%s", out)
	}

	_, err = inspect.Inspect(ctx, rt, "ht-insp-no-such-container")
	if !errors.Is(err, runtime.ErrNotFound) || strings.Contains(err.Error(), "\n") {
		t.Errorf("unknown container: %v", err)
	}
	stopped := testdocker.Run(t, "ht-insp-stopped")
	testdocker.Docker(t, "stop", "-t", "0", stopped.Name)
	_, err = inspect.Inspect(ctx, rt, stopped.Name)
	if !errors.Is(err, runtime.ErrNotRunning) || !strings.Contains(err.Error(), "container "+stopped.Name+" is not running") {
		t.Errorf("stopped container: %v", err)
	}
}
