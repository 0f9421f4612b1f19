package docker

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// A SandboxKey that is a plain file (the daemon bind-mounted it in a mount
// namespace of its own) does not name the container's namespace: its
// process's /proc/PID/ns/net does.
func TestNetnsOfPlainSandboxKey(t *testing.T) {
	plain := filepath.Join(t.TempDir(), "0123456789ab")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	self := "/proc/" + strconv.Itoa(os.Getpid()) + "/ns/net"
	want, err := resolve.NetnsInode(self)
	if err != nil {
		t.Fatal(err)
	}
	if p, ino := netnsOf(plain, os.Getpid()); p != self || ino != want {
		t.Errorf("netnsOf(plain file, own pid) = %q, %d; want %q, %d", p, ino, self, want)
	}
	if p, ino := netnsOf(self, 0); p != self || ino != want {
		t.Errorf("netnsOf(namespace file, 0) = %q, %d; want %q, %d", p, ino, self, want)
	}
	if _, ino := netnsOf(plain, 0); ino != 0 {
		t.Errorf("netnsOf(plain file, no pid) = inode %d, want 0", ino)
	}
}
