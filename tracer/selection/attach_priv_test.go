package selection_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// With more devices waiting than Follow attaches before it returns, the
// selected namespace's devices, its host veth and the bridge carry the tcx
// programs when Follow returns, the other namespaces' devices follow while
// the session runs, and closing the Follower and the tracer leaves no link.
func TestFollowAttachesTheRestWhileTracing(t *testing.T) {
	privtest.RequireTCX(t, "the tracepoint engine attaches nothing per device")
	const n = 6
	topo := testnet.New(t, testnet.Options{Hosts: n})
	sel, far := topo.Hosts[0], topo.Hosts[n-1]
	tr, err := loader.Load(loader.Options{Engine: loader.EngineTCX, FilterKinds: selection.Selection{Netns: []uint32{sel.Inode}}.FilterKinds()})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	names, err := resolve.New(ctx, resolve.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer names.Close()
	var mu sync.Mutex
	var warnings []string
	opts := selection.TracerOptions(tr, func(s string) { mu.Lock(); warnings = append(warnings, s); mu.Unlock() })
	opts.ForegroundDevices = 1
	fl, err := selection.Follow(ctx, tr, names, selection.Selection{Netns: []uint32{sel.Inode}}, opts)
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	defer fl.Close()
	// right away: tcx commits take milliseconds each, the rest cannot be done yet
	if left := fl.Unattached(); left < 2*(n-1) {
		t.Errorf("%d devices unattached when Follow returned, want the other %d namespaces' at least", left, n-1)
	}
	progs := privtest.ProgramsOf(t, os.Getpid())
	carries := func(nsPath, ifname string) bool {
		in, eg := privtest.TCXPrograms(t, nsPath, ifname)
		return slices.ContainsFunc(in, func(id ebpf.ProgramID) bool { return slices.Contains(progs, id) }) &&
			slices.ContainsFunc(eg, func(id ebpf.ProgramID) bool { return slices.Contains(progs, id) })
	}
	for _, d := range []struct{ ns, name string }{{sel.Path, sel.IfName}, {"", sel.HostVeth}, {"", topo.Bridge}} {
		if !carries(d.ns, d.name) {
			t.Errorf("%s: no tcx programs of ours when Follow returned", d.name)
		}
	}
	for deadline := time.Now().Add(60 * time.Second); fl.Unattached() != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d devices still unattached after 60s", fl.Unattached())
		}
	}
	for _, d := range []struct{ ns, name string }{{far.Path, far.IfName}, {"", far.HostVeth}} {
		if !carries(d.ns, d.name) {
			t.Errorf("%s: no tcx programs of ours once all devices were attached", d.name)
		}
	}
	mu.Lock()
	if len(warnings) != 2 || !strings.Contains(warnings[0], "get the tcx programs from now on") || !strings.Contains(warnings[1], "carry the tcx programs now") {
		t.Errorf("warnings %q: want the start and the end of the attach that went on while tracing", warnings)
	}
	mu.Unlock()
	links := privtest.TCXLinksOf(t, progs)
	fl.Close()
	if err := tr.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if left := privtest.WaitLinksGone(links, 30*time.Second); len(left) != 0 {
		t.Fatalf("tcx links %v left after Close", left)
	}
}
