// Package privtest holds small helpers for privileged tests: the root check
// and a census of hoptrace's BPF programs still loaded in the kernel.
package privtest

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// RequireRoot skips the test, loudly, when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: this privileged test needs root (BPF, network namespaces); run `sudo make test`")
	}
}

// LoadedPrograms lists the names of loaded BPF programs that belong to
// hoptrace (their names start with "on_"), so tests can prove nothing is
// left behind after a tracer exits.
func LoadedPrograms(t testing.TB) []string {
	t.Helper()
	var names []string
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			t.Fatalf("iterate BPF programs: %v", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			continue
		}
		if strings.HasPrefix(info.Name, "on_") {
			names = append(names, info.Name)
		}
	}
	return names
}

// WaitProgramsGone waits until at most baseline hoptrace programs are loaded
// (the kernel frees programs asynchronously after their last link closes)
// and returns how many remain above the baseline when the wait ends.
func WaitProgramsGone(t testing.TB, baseline int, wait time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		left := len(LoadedPrograms(t)) - baseline
		if left <= 0 || time.Now().After(deadline) {
			return max(left, 0)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
