package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

// A trace of named namespaces follows them out. One deleted mid-trace is
// unselected with a warning while the other is still traced; when the last
// one goes, the trace ends as a stopped one does (the paths so far, the
// summary), says why, exits 1 and leaves nothing attached.
func TestTraceOfNamespacesThatGoAway(t *testing.T) { traceOfNamespacesThatGoAway(t, false) }

// And a new namespace that the kernel gives a deleted one's inode is not
// traced in its place.
func TestTraceDoesNotFollowARecycledInode(t *testing.T) {
	privtest.SameOnEveryKernel(t, "which namespace takes a freed inode is the kernel's allocation order, "+
		"which the namespaces earlier tests left make unpredictable in the VMs; the unselecting (userspace, "+
		"and a filter map delete) runs on every kernel in TestTraceOfNamespacesThatGoAway")
	traceOfNamespacesThatGoAway(t, true)
}

func traceOfNamespacesThatGoAway(t *testing.T, recycle bool) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 3})
	a, b, c := topo.Hosts[0], topo.Hosts[1], topo.Hosts[2]
	r := startCLI(t, "trace", "--netns", a.Name, "--netns", b.Name, "--output", "json")
	waitAttached(t, r)
	gone := a.Inode
	if err := topo.RemoveHost(a); err != nil {
		t.Fatal(err)
	}
	waitStderr(t, r, "netns "+a.Name+" went away: no longer selected")

	// The kernel gives a new namespace the lowest free inode: once a's is
	// free (its teardown, deferred to a workqueue, done), a namespace made
	// then takes it.
	var reborn *testnet.Host
	bornAfter := time.Now()
	for i := 0; recycle && i < 30 && reborn == nil; i++ {
		if h := topo.AddHost(t); h.Inode == gone {
			reborn = h
			t.Logf("namespace %d made after the deletion took its inode", i+1)
		} else {
			time.Sleep(300 * time.Millisecond)
		}
	}
	senders := []*testnet.Host{b}
	if recycle {
		if reborn == nil {
			t.Fatalf("no new namespace got inode %d of the deleted %s", gone, a.Name)
		}
		senders = append(senders, reborn)
	}
	for _, h := range senders {
		if n, err := h.Ping(c.Addr.Addr(), 1, 2*time.Second); err != nil || n != 1 {
			t.Fatalf("ping from %s: %d, %v", h.Name, n, err)
		}
	}
	time.Sleep(800 * time.Millisecond) // a path is written once its end has lingered

	endsWhenGone(t, topo, b, r)
	if stderr := r.stderrText(); !strings.Contains(stderr, "packets,") {
		t.Errorf("no summary line before the end: %q", stderr)
	}

	// Packets of b's flooded into reborn, and reborn's flooded into b, are
	// b's to show; a path that starts at a's inode once a went away would be
	// reborn's own (before, a's).
	fromB, inReborn := 0, 0
	for _, l := range r.lines {
		var p struct {
			Src, Proto string
			Time       time.Time
			Hops       []struct {
				NetnsInode uint32 `json:"netns_inode"`
			}
		}
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("stdout line is not JSON: %q", l)
		}
		if p.Proto == "ICMP" && p.Src == b.Addr.Addr().String() {
			fromB++
		}
		if len(p.Hops) > 0 && p.Hops[0].NetnsInode == gone && p.Time.After(bornAfter) {
			inReborn++
			t.Logf("a path that starts at the deleted %s's inode: %s", a.Name, l)
		}
	}
	if fromB == 0 {
		t.Errorf("no path of the ping from %s, still selected, in %d lines", b.Name, len(r.lines))
	}
	if inReborn != 0 {
		t.Errorf("%d paths start at the inode of the deleted %s after it went away", inReborn, a.Name)
	}
	if left := privtest.WaitGone(r.progs, 5*time.Second); len(left) != 0 {
		t.Errorf("programs %v left after the trace ended", left)
	}
}

// latency ends the same way: when its one namespace goes away it makes its
// final report (the packets measured so far), says why and exits 1.
func TestLatencyOfANamespaceThatGoesAway(t *testing.T) {
	privtest.RequireRoot(t)
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	a, b := topo.Hosts[0], topo.Hosts[1]
	r := startCLI(t, "latency", "--netns", a.Name, "--output", "json", "--interval", "10s")
	waitStderr(t, r, "hoptrace: measuring ")
	progs := privtest.ProgramsOf(t, r.cmd.Process.Pid)
	if n, err := a.Ping(b.Addr.Addr(), 3, 2*time.Second); err != nil || n != 3 {
		t.Fatalf("ping: %d, %v", n, err)
	}
	endsWhenGone(t, topo, a, r)
	r.mu.Lock()
	lines := append([]string(nil), r.lines...)
	r.mu.Unlock()
	if len(lines) == 0 {
		t.Fatal("no report before the end")
	}
	var rep struct {
		Final  bool `json:"final"`
		Kernel struct {
			Packets uint64 `json:"packets"`
		} `json:"kernel"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil || !rep.Final || rep.Kernel.Packets < 6 {
		t.Errorf("last line (%v): final %v, %d packets; want the final report with the 3 requests and 3 replies: %s",
			err, rep.Final, rep.Kernel.Packets, lines[len(lines)-1])
	}
	if left := privtest.WaitGone(progs, 5*time.Second); len(left) != 0 {
		t.Errorf("programs %v left after latency ended", left)
	}
}

// endsWhenGone deletes h, the last namespace r's selection names, and waits
// for r to end by itself: status 1 and the line that says h went away.
func endsWhenGone(t *testing.T, topo *testnet.Topology, h *testnet.Host, r *running) {
	t.Helper()
	if err := topo.RemoveHost(h); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("hoptrace still runs 10s after the last selected namespace went away: %s", r.stderrText())
	}
	err := r.cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1 (stderr %q)", err, r.stderrText())
	}
	if want := "hoptrace: netns " + h.Name + " went away: nothing selected is left to trace"; !strings.Contains(r.stderrText(), want) {
		t.Errorf("stderr lacks %q: %q", want, r.stderrText())
	}
}
