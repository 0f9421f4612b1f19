package e2e

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// runAsNobody runs the binary as uid 65534 holding only the given
// capabilities (ambient, so that they survive the exec).
func runAsNobody(t *testing.T, caps []uintptr, args ...string) result {
	t.Helper()
	cmd := exec.Command(hoptraceBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 65534, Gid: 65534},
		AmbientCaps: caps,
	}
	return runCmd(t, cmd)
}

// One privilege rule for doctor, trace and the loader: root, or CAP_BPF,
// CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN.
func TestPrivilegeRuleSharedByDoctorAndTrace(t *testing.T) {
	privtest.RequireRoot(t) // to switch to another user
	all := []uintptr{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN}
	rule, lacks := "root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN", "CAP_NET_ADMIN, CAP_SYS_ADMIN"
	if kernel.MemlockCharged() {
		// before 5.11 maps are charged to RLIMIT_MEMLOCK, which only CAP_SYS_RESOURCE raises
		all = append(all, unix.CAP_SYS_RESOURCE)
		rule += " (and CAP_SYS_RESOURCE before Linux 5.11, which charges BPF maps to RLIMIT_MEMLOCK)"
		lacks += ", CAP_SYS_RESOURCE"
	}

	r := runAsNobody(t, all, "trace", "--duration", "500ms")
	if r.code != 0 || !strings.Contains(r.stderr, "hoptrace: tracing every namespace") {
		t.Errorf("trace as nobody with the four capabilities: exit %d, stderr %q; want it to trace", r.code, r.stderr)
	}
	r = runAsNobody(t, all, "doctor")
	if r.code != 0 || !strings.Contains(r.stdout, "hoptrace can run here.") {
		t.Errorf("doctor as nobody with the four capabilities: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	some := []uintptr{unix.CAP_BPF, unix.CAP_PERFMON}
	r = runAsNobody(t, some, "trace", "--duration", "500ms")
	if want := "hoptrace: trace needs " + rule + " (lacks " + lacks + ")"; r.code != exitFail || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("trace as nobody with CAP_BPF and CAP_PERFMON: exit %d, stderr %q; want exit %d and one line %q…", r.code, r.stderr, exitFail, want)
	}
	r = runAsNobody(t, some, "doctor")
	if r.code != exitFail || !strings.Contains(r.stdout, "lacks CAP_NET_ADMIN CAP_SYS_ADMIN") {
		t.Errorf("doctor as nobody with CAP_BPF and CAP_PERFMON: exit %d, want %d and the lacking capabilities named\n%s%s", r.code, exitFail, r.stdout, r.stderr)
	}
}
