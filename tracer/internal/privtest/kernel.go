package privtest

import (
	"testing"

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
