package testnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
)

// Outside is "the outside" of a Docker host, built by the test: a network
// namespace behind a host veth that is routed (not bridged), on a random
// 10.213.X.0/24. The host side has .1, the namespace's eth0 .2 with a
// default route via .1. Traffic from containers reaches it through the
// host's routing and MASQUERADE; it reaches published ports of containers
// through DNAT. Nothing is sent anywhere else.
type Outside struct {
	Host                  // the namespace (Name, Path, Inode, eth0, Addr .2)
	HostAddr netip.Prefix // the host veth's address, .1
	lock     *os.File
}

// NewOutside builds an Outside and registers its removal with t.Cleanup.
func NewOutside(t testing.TB) *Outside {
	t.Helper()
	privtest.RequireRoot(t)
	o, err := newOutside()
	if o != nil {
		t.Cleanup(func() {
			if err := o.Close(); err != nil {
				t.Errorf("testnet outside cleanup: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testnet outside: %v", err)
	}
	return o
}

func newOutside() (*Outside, error) {
	o := &Outside{}
	used := map[byte]bool{}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip := a.IP.To4(); ip != nil && ip[0] == 10 && ip[1] == 213 {
				used[ip[2]] = true
			}
		}
	}
	start := randByte()
	for i := 0; i < 256 && o.lock == nil; i++ {
		x := start + byte(i)
		if x == 0 || x == 255 || used[x] {
			continue
		}
		f, ok := lockFile(fmt.Sprintf("10.213.%d.lock", x))
		if !ok {
			continue
		}
		if f == nil {
			f, _ = os.Open(os.DevNull) // no lock directory: run unlocked
		}
		o.lock = f
		o.HostAddr = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, x, 1}), 24)
		o.Addr = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, x, 2}), 24)
	}
	if o.lock == nil {
		return nil, errors.New("no free 10.213.X.0/24 subnet")
	}
	suffix := randHex(6)
	o.Name, o.IfName, o.HostVeth = "hto"+suffix, "eth0", "hto"+suffix
	o.Path = filepath.Join(NetnsDir, o.Name)
	if err := o.setup(); err != nil {
		return o, err
	}
	return o, nil
}

func (o *Outside) setup() error {
	if err := createNamedNetns(o.Path); err != nil {
		return err
	}
	ino, err := inode(o.Path)
	if err != nil {
		return err
	}
	o.Inode = ino
	nsh, err := netns.GetFromPath(o.Path)
	if err != nil {
		return fmt.Errorf("open %s: %w", o.Path, err)
	}
	defer nsh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: o.HostVeth},
		PeerName:      o.IfName,
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", o.HostVeth, err)
	}
	hl, err := netlink.LinkByName(o.HostVeth)
	if err != nil {
		return fmt.Errorf("veth %s: %w", o.HostVeth, err)
	}
	o.HostVethIndex = hl.Attrs().Index
	if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: prefixToIPNet(o.HostAddr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", o.HostAddr, o.HostVeth, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", o.HostVeth, err)
	}
	return configureEnd(nsh, &o.Host, o.HostAddr.Addr())
}

// Close removes the namespace and the veth pair.
func (o *Outside) Close() error {
	err := removeHost(&o.Host)
	if o.lock != nil {
		o.lock.Close()
		o.lock = nil
	}
	return err
}

// lockFile takes an exclusive, non-blocking flock on a file of the shared
// lock directory; (nil, true) when no lock directory can be created.
func lockFile(name string) (*os.File, bool) {
	for _, dir := range []string{"/run/hoptrace-testnet", filepath.Join(os.TempDir(), "hoptrace-testnet")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return nil, false
		}
		return f, true
	}
	return nil, true
}
