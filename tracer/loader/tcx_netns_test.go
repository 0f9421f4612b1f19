package loader_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

// One AttachNetns call over many namespaces, the host's holding most of the
// devices, attaches each device once (a device listed twice included), in
// its own namespace, skips a missing device and a namespace that is gone,
// reports each namespace's devices against its own request, and Close
// leaves no tcx link, having said that closing so many takes a while.
func TestTCXAttachNetnsMany(t *testing.T) {
	privtest.RequireTCX(t, "")
	const n = 64 // 129 devices, 258 links: enough for CloseNoting's note
	topo := testnet.New(t, testnet.Options{Hosts: n})
	tr, err := loader.Load(loader.Options{Engine: loader.EngineTCX})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close() // a second Close, after the one checked below, is a no-op
	host := loader.NetnsRef{Inode: topo.HostInode(), Path: "/proc/self/ns/net"}
	hostIdx := []int{topo.BridgeIndex}
	var sets []loader.NetnsDevices
	for _, h := range topo.Hosts {
		sets = append(sets, loader.NetnsDevices{Netns: loader.NetnsRef{Inode: h.Inode, Path: h.Path}, Ifindexes: []int{h.Ifindex}})
		hostIdx = append(hostIdx, h.HostVethIndex)
	}
	want := slices.Clone(hostIdx)
	hostIdx = append(hostIdx, 1<<30, topo.Hosts[0].HostVethIndex) // missing, and listed twice
	sets = append(sets,
		loader.NetnsDevices{Netns: host, Ifindexes: hostIdx},
		loader.NetnsDevices{Netns: loader.NetnsRef{Inode: 1, Path: "/var/run/netns/hoptrace-gone-" + topo.Bridge}, Ifindexes: []int{1}})
	res := tr.AttachNetns(context.Background(), sets)
	if len(res) != len(sets) {
		t.Fatalf("%d results for %d namespaces", len(res), len(sets))
	}
	for i, h := range topo.Hosts {
		if res[i].Err != nil || !slices.Equal(res[i].Ifindexes, []int{h.Ifindex}) {
			t.Errorf("%s: attached %v, %v; want [%d]", h.Name, res[i].Ifindexes, res[i].Err, h.Ifindex)
		}
	}
	if r := res[n]; r.Err != nil || !slices.Equal(r.Ifindexes, want) {
		t.Errorf("host: attached %v, %v; want %v", r.Ifindexes, r.Err, want)
	}
	if r := res[n+1]; r.Err != nil || len(r.Ifindexes) != 0 {
		t.Errorf("gone namespace: attached %v, %v; want nothing, no error", r.Ifindexes, r.Err)
	}
	if again := tr.AttachNetns(context.Background(), sets); slices.ContainsFunc(again, func(r loader.NetnsAttached) bool { return r.Err != nil || len(r.Ifindexes) != 0 }) {
		t.Errorf("second attach: %v", again)
	}
	if got := len(tr.AttachedDevices()); got != 2*n+1 {
		t.Errorf("%d devices attached, want %d", got, 2*n+1)
	}
	progs := privtest.ProgramsOf(t, os.Getpid())
	for _, dev := range []struct{ ns, name string }{{"", topo.Bridge}, {"", topo.Hosts[0].HostVeth}, {topo.Hosts[n-1].Path, topo.Hosts[n-1].IfName}} {
		// other hoptrace processes may carry their programs here too
		in, eg := privtest.TCXPrograms(t, dev.ns, dev.name)
		if countIn(in, progs) != 1 || countIn(eg, progs) != 1 {
			t.Errorf("%s: tcx programs ingress %v egress %v, want one of ours on each (ours %v)", dev.name, in, eg, progs)
		}
	}
	links := privtest.TCXLinksOf(t, progs)
	if len(links) != 2*(2*n+1) {
		t.Fatalf("%d tcx links, want %d", len(links), 2*(2*n+1))
	}
	var notes []string
	if err := tr.CloseNoting(func(s string) { notes = append(notes, s) }); err != nil {
		t.Fatalf("close: %v", err)
	}
	if want := fmt.Sprintf("detaching %d tcx links", 2*(2*n+1)); len(notes) != 1 || !strings.Contains(notes[0], want) {
		t.Errorf("notes at close %q, want one saying %q", notes, want)
	}
	if left := privtest.WaitLinksGone(links, 5*time.Second); len(left) != 0 {
		t.Fatalf("tcx links %v left after Close", left)
	}
}

// countIn counts the elements of s that are in set.
func countIn[T comparable](s, set []T) int {
	n := 0
	for _, v := range s {
		if slices.Contains(set, v) {
			n++
		}
	}
	return n
}
