package privtest

import (
	"os"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// DropReason is the drop reason a test should see for a drop the kernel
// calls reason: the name itself from 5.17 (kfree_skb passes a reason), ""
// before. Taken from the kernel's version, not from what hoptrace detected,
// so the branch hoptrace takes is asserted on every kernel of the matrix.
func DropReason(t testing.TB, reason string) string {
	t.Helper()
	rel, v, err := kernel.Release()
	if err != nil {
		t.Fatalf("kernel version: %v", err)
	}
	if !v.AtLeast(5, 17) {
		t.Logf("kernel %s has no drop reasons: expecting none instead of %s", rel, reason)
		return ""
	}
	return reason
}

// ReadyTimeout bounds the wait for a trace or latency session to load and
// attach its programs: 20 s on a host, 90 s inside a kernel-matrix VM, where
// the verifier runs under software emulation (tens of seconds for the
// latency programs on 5.10 when the machine is busy).
func ReadyTimeout() time.Duration {
	if os.Getenv("HOPTRACE_VM") != "" {
		return 90 * time.Second
	}
	return 60 * time.Second
}

// SameOnEveryKernel skips the test inside a kernel-matrix VM (HOPTRACE_VM
// set) and does nothing elsewhere: what the test checks does not depend on
// the kernel (command-line parsing, output formats, userspace logic), or it
// is a timing test that software emulation cannot run, so the host (`make
// test`, the matrix's host row) runs it and the VMs spend their emulated
// minutes on the kernel-dependent branches. why says what makes it so, and
// which test covers the kernel-dependent part on every kernel; the matrix
// summary prints it with the skip.
func SameOnEveryKernel(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("HOPTRACE_VM") != "" {
		t.Skip("SKIP in the kernel-matrix VMs (the host runs it): " + why)
	}
}

// RequireTCX is RequireRoot for a test of the tcx engine or of tcx links: on
// a kernel without tcx (before 6.6, the matrix's older kernels) it skips,
// saying why with why ("" when the skip needs no more words), since the
// tracepoint engine attaches nothing per device there.
func RequireTCX(t testing.TB, why string) {
	t.Helper()
	RequireRoot(t)
	if !kernel.ProbeTCX().Available {
		msg := "SKIP: no tcx on this kernel"
		if why != "" {
			msg += " (" + why + ")"
		}
		t.Skip(msg)
	}
}
