// Package privtest holds small helpers for privileged tests: the root check
// and a census of the BPF programs a process holds, so tests can prove that
// nothing stays loaded after a tracer exits, even while other processes on
// the machine load programs of their own.
package privtest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/hoptrace/hoptrace/tracer/nsenter"
)

// RequireRoot skips the test, loudly, when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: this privileged test needs root (BPF, network namespaces); run `sudo make test`")
	}
}

// ProgramsOf returns the IDs of hoptrace's BPF programs (names starting
// with "on_") that process pid holds, directly or through links.
func ProgramsOf(t testing.TB, pid int) []ebpf.ProgramID {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fdinfo")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // the process is gone
	}
	seen := map[ebpf.ProgramID]bool{}
	var ids []ebpf.ProgramID
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			v, ok := strings.CutPrefix(sc.Text(), "prog_id:")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil || seen[ebpf.ProgramID(n)] {
				continue
			}
			id := ebpf.ProgramID(n)
			seen[id] = true
			if isHoptrace(id) {
				ids = append(ids, id)
			}
		}
		f.Close()
	}
	return ids
}

func isHoptrace(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && strings.HasPrefix(info.Name, "on_")
}

// WaitAttached waits until process pid holds at least n hoptrace programs
// and returns their IDs; it fails the test after the timeout.
func WaitAttached(t testing.TB, pid, n int, timeout time.Duration) []ebpf.ProgramID {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ids := ProgramsOf(t, pid)
		if len(ids) >= n {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d holds %d hoptrace programs after %v, want %d", pid, len(ids), timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitGone waits until none of the programs is loaded any more (the kernel
// frees a program asynchronously after its last reference goes) and returns
// those still loaded when the wait ends.
func WaitGone(ids []ebpf.ProgramID, timeout time.Duration) []ebpf.ProgramID {
	deadline := time.Now().Add(timeout)
	for {
		var left []ebpf.ProgramID
		for _, id := range ids {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err == nil {
				p.Close()
			}
			left = append(left, id)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SyncBuffer collects output written by one goroutine (a trace, a tool's
// stderr) while the test reads it from another.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Tool returns the path of a program a test needs. When it is missing the
// test fails under CI (CI=true: the setup, scripts/install-deps.sh, installs
// the Debian package pkg) and skips, loudly, elsewhere.
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found, and CI must have it: add %s to scripts/install-deps.sh (%v)", name, pkg, err)
	}
	t.Skipf("SKIPPED: %s not installed (apt-get install %s, or make setup)", name, pkg)
	return ""
}

// TCXLinksOf returns the IDs of the tcx links (any process's) that run one
// of these programs, found by iterating every BPF link in the kernel.
func TCXLinksOf(t testing.TB, progs []ebpf.ProgramID) []link.ID {
	t.Helper()
	return LinksOf(t, link.TCXType, progs)
}

// LinksOf returns the IDs of the links of this type (any process's) that
// run one of these programs.
func LinksOf(t testing.TB, typ link.Type, progs []ebpf.ProgramID) []link.ID {
	t.Helper()
	want := map[ebpf.ProgramID]bool{}
	for _, p := range progs {
		want[p] = true
	}
	var ids []link.ID
	it := new(link.Iterator)
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if info.Type == typ && want[info.Program] {
			ids = append(ids, info.ID)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate BPF links: %v", err)
	}
	return ids
}

// WaitLinksGone waits until none of the links exists any more and returns
// those still there when the wait ends.
func WaitLinksGone(ids []link.ID, timeout time.Duration) []link.ID {
	deadline := time.Now().Add(timeout)
	for {
		var left []link.ID
		for _, id := range ids {
			l, err := link.NewFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err == nil {
				l.Close()
			}
			left = append(left, id)
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TCXPrograms returns the programs attached at tcx ingress and egress of a
// device, looked up inside the namespace at nsPath ("" for this process's).
func TCXPrograms(t testing.TB, nsPath, ifname string) (ingress, egress []ebpf.ProgramID) {
	t.Helper()
	query := func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: at})
			if err != nil {
				return fmt.Errorf("query %s of %s: %w", at, ifname, err)
			}
			for _, p := range res.Programs {
				if at == ebpf.AttachTCXIngress {
					ingress = append(ingress, p.ID)
				} else {
					egress = append(egress, p.ID)
				}
			}
		}
		return nil
	}
	var err error
	if nsPath == "" {
		err = query()
	} else {
		err = nsenter.Do(nsPath, query)
	}
	if err != nil {
		t.Fatalf("tcx programs of %s in %q: %v", ifname, nsPath, err)
	}
	return ingress, egress
}
