package topology_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/runtime/docker"
	"github.com/hoptrace/hoptrace/tracer/topology"
)

func render(t *testing.T, topo *topology.Topology, format string) string {
	t.Helper()
	var b bytes.Buffer
	if err := topo.Write(&b, format); err != nil {
		t.Fatalf("Write(%s): %v", format, err)
	}
	return b.String()
}

func findBridge(t *testing.T, topo *topology.Topology, name string) topology.Bridge {
	t.Helper()
	for _, b := range topo.Bridges {
		if b.Name == name {
			return b
		}
	}
	t.Fatalf("bridge %s not in topology (%d bridges)", name, len(topo.Bridges))
	return topology.Bridge{}
}

// renderDOT checks that Graphviz accepts the DOT output.
func renderDOT(t *testing.T, dot string, mustContain ...string) {
	t.Helper()
	cmd := exec.Command(privtest.Tool(t, "dot", "graphviz"), "-Tsvg")
	cmd.Stdin = strings.NewReader(dot)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("dot -Tsvg rejected the output: %v: %s\n%s", err, errb.String(), dot)
	}
	svg := strings.ReplaceAll(out.String(), "&#45;", "-")
	if !strings.Contains(svg, "<svg") {
		t.Fatalf("dot produced no SVG: %.200s", svg)
	}
	for _, s := range mustContain {
		if !strings.Contains(svg, s) {
			t.Errorf("SVG lacks %q", s)
		}
	}
}

func TestTopologyNamedNamespaces(t *testing.T) {
	tn := testnet.New(t, testnet.Options{Hosts: 2})
	topo, warnings, err := topology.Build(context.Background(), topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = warnings // other namespaces on the machine may come and go
	if topo.HostInode != tn.HostInode() {
		t.Errorf("host inode %d, testnet says %d", topo.HostInode, tn.HostInode())
	}
	br := findBridge(t, topo, tn.Bridge)
	if br.Index != tn.BridgeIndex || !br.Up || !slices.Contains(br.Addrs, tn.Gateway.String()) {
		t.Errorf("bridge %+v, want ifindex %d, up, address %s", br, tn.BridgeIndex, tn.Gateway)
	}
	if len(br.Ports) != len(tn.Hosts) {
		t.Fatalf("%s has %d ports, want %d", tn.Bridge, len(br.Ports), len(tn.Hosts))
	}
	tree := render(t, topo, "tree")
	for _, h := range tn.Hosts {
		var port *topology.Port
		for i := range br.Ports {
			if br.Ports[i].Name == h.HostVeth {
				port = &br.Ports[i]
			}
		}
		if port == nil {
			t.Fatalf("port %s missing from %+v", h.HostVeth, br.Ports)
		}
		if port.Index != h.HostVethIndex || port.Kind != "veth" || port.Peer == nil {
			t.Fatalf("port %+v, want veth ifindex %d with a peer", port, h.HostVethIndex)
		}
		p := port.Peer
		if p.Name != h.IfName || p.Index != h.Ifindex || p.Netns.Inode != h.Inode ||
			!slices.Contains(p.Netns.Names, h.Name) || !slices.Contains(p.Addrs, h.Addr.String()) ||
			p.MAC != h.MAC.String() || p.Netns.Kind() != "netns" || p.Netns.Label() != h.Name {
			t.Errorf("peer of %s = %+v, want %s ifindex %d in netns %s (%d) with %s, %s",
				h.HostVeth, p, h.IfName, h.Ifindex, h.Name, h.Inode, h.Addr, h.MAC)
		}
		for _, want := range []string{h.HostVeth, "netns " + h.Name, h.Addr.String()} {
			if !strings.Contains(tree, want) {
				t.Errorf("tree lacks %q:\n%s", want, tree)
			}
		}
	}
	if !strings.Contains(tree, tn.Bridge+"  bridge, up") {
		t.Errorf("tree lacks the bridge line:\n%s", tree)
	}

	dot := render(t, topo, "dot")
	renderDOT(t, dot, tn.Bridge, tn.Hosts[0].Name, tn.Hosts[1].HostVeth)
	mm := render(t, topo, "mermaid")
	if !strings.HasPrefix(mm, "flowchart LR\n") || !strings.Contains(mm, tn.Hosts[0].HostVeth) || !strings.Contains(mm, "netns "+tn.Hosts[1].Name) {
		t.Errorf("mermaid output:\n%s", mm)
	}
	var back topology.Topology
	if err := json.Unmarshal([]byte(render(t, topo, "json")), &back); err != nil || len(back.Bridges) != len(topo.Bridges) {
		t.Errorf("JSON output does not round-trip: %v", err)
	}
	if err := topo.Write(&bytes.Buffer{}, "svg"); err == nil {
		t.Error("unknown format accepted")
	}

	// A host veth taken off the bridge shows up as loose, and DOWN ports say so.
	tn2 := testnet.New(t, testnet.Options{Hosts: 1})
	h := tn2.Hosts[0]
	if out, err := exec.Command("ip", "link", "set", h.HostVeth, "nomaster", "down").CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s nomaster: %v: %s", h.HostVeth, err, out)
	}
	topo, _, err = topology.Build(context.Background(), topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if br := findBridge(t, topo, tn2.Bridge); len(br.Ports) != 0 {
		t.Errorf("%s still has ports %+v", tn2.Bridge, br.Ports)
	}
	loose := false
	for _, p := range topo.Loose {
		if p.Name == h.HostVeth && p.Peer != nil && p.Peer.Netns.Inode == h.Inode && !p.Up {
			loose = true
		}
	}
	if !loose {
		t.Errorf("%s not listed as a loose, down veth: %+v", h.HostVeth, topo.Loose)
	}
	if tree := render(t, topo, "tree"); !strings.Contains(tree, "veths on no bridge") || !strings.Contains(tree, h.HostVeth+" (ifindex") {
		t.Errorf("tree lacks the loose veth:\n%s", tree)
	}
}

func TestTopologyDocker(t *testing.T) {
	testdocker.RequireDocker(t)
	ctx := context.Background()
	rt, err := docker.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	netName, netID := testdocker.Network(t, "ht-topo-net")
	c1 := testdocker.Run(t, "ht-topo-a")
	c2 := testdocker.Run(t, "ht-topo-b", "--network", netName)
	topo, warnings, err := topology.Build(ctx, topology.Options{Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		if strings.Contains(w, "container names") {
			t.Errorf("runtime warning: %s", w)
		}
	}
	if topo.Runtime != "docker" {
		t.Errorf("Runtime = %q", topo.Runtime)
	}
	userBridge := "br-" + netID[:12]
	for _, tc := range []struct {
		c       testdocker.Container
		bridge  string
		network string
	}{{c1, "docker0", "bridge"}, {c2, userBridge, netName}} {
		br := findBridge(t, topo, tc.bridge)
		if br.Network != tc.network {
			t.Errorf("%s: network %q, want %q", tc.bridge, br.Network, tc.network)
		}
		d := testdocker.Inspect(t, tc.c.ID)
		ip := testdocker.String(d, "NetworkSettings", "Networks", tc.network, "IPAddress") + "/" +
			testdocker.String(d, "NetworkSettings", "Networks", tc.network, "IPPrefixLen")
		mac := testdocker.String(d, "NetworkSettings", "Networks", tc.network, "MacAddress")
		found := 0
		for _, p := range br.Ports {
			if p.Peer != nil && p.Peer.Netns.Container == tc.c.Name {
				found++
				if p.Peer.Name != "eth0" || !slices.Contains(p.Peer.Addrs, ip) || p.Peer.MAC != mac || p.Peer.Netns.Kind() != "container" {
					t.Errorf("%s: peer %+v, want eth0 with %s, %s", tc.c.Name, p.Peer, ip, mac)
				}
				if p.Peer.Netns.Sandbox == "" || !strings.HasSuffix(testdocker.String(d, "NetworkSettings", "SandboxKey"), p.Peer.Netns.Sandbox) {
					t.Errorf("%s: sandbox %q, docker says %s", tc.c.Name, p.Peer.Netns.Sandbox, testdocker.String(d, "NetworkSettings", "SandboxKey"))
				}
			}
		}
		if found != 1 {
			t.Errorf("container %s appears %d times under %s", tc.c.Name, found, tc.bridge)
		}
	}
	tree := render(t, topo, "tree")
	// Each container is listed under its bridge, before the next bridge.
	for _, tc := range []struct{ bridge, name string }{{"docker0", c1.Name}, {userBridge, c2.Name}} {
		i := strings.Index(tree, tc.bridge+"  bridge")
		if i < 0 {
			t.Fatalf("tree lacks %s:\n%s", tc.bridge, tree)
		}
		rest := tree[i+1:]
		if j := strings.Index(rest, "\n├── "); j >= 0 {
			rest = rest[:j]
		}
		if j := strings.Index(rest, "\n└── "); j >= 0 {
			rest = rest[:j]
		}
		if !strings.Contains(rest, "container "+tc.name) {
			t.Errorf("container %s not under %s:\n%s", tc.name, tc.bridge, tree)
		}
	}
	renderDOT(t, render(t, topo, "dot"), c1.Name, c2.Name, "docker0", userBridge)
	if mm := render(t, topo, "mermaid"); !strings.Contains(mm, "container "+c1.Name) || !strings.Contains(mm, "container "+c2.Name) {
		t.Errorf("mermaid lacks the containers:\n%s", mm)
	}
}
