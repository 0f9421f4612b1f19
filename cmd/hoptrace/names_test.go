package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/inspect"
	"github.com/hoptrace/hoptrace/tracer/latency"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/topology"
)

// One place names namespaces and links: trace, latency, topology, inspect
// and the Prometheus labels call a container's namespace and its
// interfaces the same.
func TestCommandsNameAlike(t *testing.T) {
	testdocker.RequireDocker(t)
	netName, netID := testdocker.Network(t, "ht-names")
	a := testdocker.Run(t, "ht-names-a", "--network", netName)
	b := testdocker.Run(t, "ht-names-b", "--network", netName)
	bIP := testdocker.String(testdocker.Inspect(t, b.Name), "NetworkSettings", "Networks", netName, "IPAddress")
	bridge := "br-" + netID[:12]
	bin := testBinary(t)

	// a pings b (both the test's) while the commands look.
	ctx, stop := context.WithCancel(context.Background())
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		for ctx.Err() == nil {
			exec.CommandContext(ctx, "docker", "exec", a.Name, "ping", "-c", "1", "-W", "1", bIP).Run()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	defer func() { stop(); <-pinged }()

	// trace: the first ICMP path from a.
	tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
	defer tcancel()
	out, err := exec.CommandContext(tctx, bin, "trace", "--container", a.Name, "--proto", "icmp", "-c", "1", "-o", "json").Output()
	if err != nil {
		t.Fatalf("trace: %v", err)
	}
	var p path.Path
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatalf("trace output: %v: %s", err, out)
	}
	var label, veth string
	for _, h := range p.Hops {
		switch {
		case h.Container == a.Name && h.Ifname == "eth0":
			label = h.Netns
		case h.Netns == "host" && h.Kind == "veth" && h.Bridge == bridge && veth == "":
			veth = h.Ifname
		}
	}
	if !strings.HasPrefix(label, "docker:") || veth == "" {
		t.Fatalf("trace: no hop on %s eth0 labelled docker:<sandbox> (%q), or no host veth on %s (%q):\n%s", a.Name, label, bridge, veth, out)
	}
	t.Logf("%s: netns %s, host veth %s on %s", a.Name, label, veth, bridge)

	// inspect
	code, out2, errOut := runInProcess(t, "inspect", a.Name, "-o", "json")
	var ir inspect.Report
	if code != 0 || json.Unmarshal([]byte(out2), &ir) != nil || len(ir.Endpoints) != 1 {
		t.Fatalf("inspect: exit %d: %s%s", code, out2, errOut)
	}
	ep := ir.Endpoints[0]
	if ir.Netns != label || ep.HostVeth == nil || ep.HostVeth.Name != veth || ep.Container == nil || ep.Container.Name != "eth0" || ep.BridgeDev == nil || ep.BridgeDev.Name != bridge {
		t.Errorf("inspect names netns %q, host veth %+v, container if %+v, bridge %+v; trace: %s, %s, eth0, %s", ir.Netns, ep.HostVeth, ep.Container, ep.BridgeDev, label, veth, bridge)
	}

	// topology
	code, out2, errOut = runInProcess(t, "topology", "-o", "json")
	var topo topology.Topology
	if code != 0 || json.Unmarshal([]byte(out2), &topo) != nil {
		t.Fatalf("topology: exit %d: %s%s", code, out2, errOut)
	}
	found := false
	for _, br := range topo.Bridges {
		for _, port := range br.Ports {
			if br.Name == bridge && port.Name == veth && port.Peer != nil {
				found = true
				if pn := port.Peer.Netns; pn.NetnsLabel != label || pn.Container != a.Name || pn.Label() != a.Name || port.Peer.Name != "eth0" {
					t.Errorf("topology names %s's peer %s in %+v; trace: eth0 in %s (%s)", veth, port.Peer.Name, pn, label, a.Name)
				}
			}
		}
	}
	if !found {
		t.Errorf("topology has no port %s on %s:\n%s", veth, bridge, out2)
	}

	// latency, with its metrics scraped while it runs.
	lat := exec.CommandContext(ctx, bin, "latency", "--container", a.Name, "--duration", "4s", "--interval", "1s", "-o", "json", "--metrics-addr", "127.0.0.1:0")
	stdout, err := lat.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := lat.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := lat.Start(); err != nil {
		t.Fatal(err)
	}
	var reports []byte
	readOut := make(chan struct{})
	go func() { reports, _ = io.ReadAll(stdout); close(readOut) }()
	url := ""
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "hoptrace: metrics at "); ok {
			url = u
			break
		}
	}
	go io.Copy(io.Discard, stderr)
	if url == "" {
		lat.Wait()
		t.Fatal("latency printed no metrics address")
	}
	// Scrape until both of a's hops are in the metrics (the first pings
	// after the programs attach) or latency ends: a fixed wait is too short
	// on a loaded machine.
	wantEth0 := `from_container="` + a.Name + `",from_direction="egress",from_interface="eth0",from_netns="` + label + `"`
	wantVeth := `from_interface="` + veth + `",from_netns="host"`
	var metrics []byte
	for done := false; !done; {
		select {
		case <-readOut:
			done = true // last chance: the final scrape below fails if the server is gone
		case <-time.After(250 * time.Millisecond):
		}
		resp, err := http.Get(url)
		if err != nil {
			if done {
				break
			}
			t.Fatalf("scrape %s: %v", url, err)
		}
		metrics, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(metrics), wantEth0) && strings.Contains(string(metrics), wantVeth) {
			break
		}
	}
	<-readOut
	if err := lat.Wait(); err != nil {
		t.Fatalf("latency: %v", err)
	}
	if !strings.Contains(string(metrics), wantEth0) {
		t.Errorf("metrics lack %s:\n%.2000s", wantEth0, metrics)
	}
	if !strings.Contains(string(metrics), wantVeth) {
		t.Errorf("metrics lack %s", wantVeth)
	}
	lines := strings.Split(strings.TrimSpace(string(reports)), "\n")
	var final latency.Report
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &final); err != nil || !final.Final {
		t.Fatalf("latency summary: %v: %s", err, lines[len(lines)-1])
	}
	sawEth0, sawVeth := false, false
	for _, pr := range final.Pairs {
		for _, h := range []latency.Hop{pr.From, pr.To} {
			switch {
			case h.Interface == "eth0" && h.Container == a.Name:
				sawEth0 = true
				if h.Netns != label || h.Bridge != "" {
					t.Errorf("latency names %s eth0's namespace %q (bridge %q), trace %q", a.Name, h.Netns, h.Bridge, label)
				}
			case h.Interface == veth:
				sawVeth = true
				if h.Netns != "host" || h.Bridge != bridge {
					t.Errorf("latency names %s in %q on bridge %q, want host on %s", veth, h.Netns, h.Bridge, bridge)
				}
			}
		}
	}
	if !sawEth0 || !sawVeth {
		t.Errorf("latency summary lacks %s eth0 (%v) or %s (%v):\n%s", a.Name, sawEth0, veth, sawVeth, lines[len(lines)-1])
	}
}
