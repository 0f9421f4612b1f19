// Package testnet builds throwaway container-like network topologies for
// privileged tests and the benchmarks: a Linux bridge in the host namespace
// and N named network namespaces, each wired to the bridge through a veth
// pair, on a random 10.231.X.0/24 subnet (10.X.0.0/16 for more than 250
// namespaces).
//
// New (for tests) removes everything a Topology creates with a t.Cleanup
// hook, even when the test fails; Build (for programs such as the
// benchmark) leaves that to the caller's Close. The package never sends
// traffic anywhere but to addresses it created itself.
package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
)

// NetnsDir is where named network namespaces are bind-mounted, as iproute2
// ("ip netns") does.
const NetnsDir = "/var/run/netns"

const nfCallIptables = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// Options configures New and Build.
type Options struct {
	Hosts      int    // number of namespaces; 0 means 2; up to 250 on a /24, 12500 on a /16
	BridgeName string // optional; a unique name is picked when empty
	// Prefix is the subnet's length: 24 (the default) or 16 (for more than
	// 250 namespaces; picked automatically then).
	Prefix int
}

// Topology is a bridge with namespaces attached to it.
type Topology struct {
	Bridge      string // bridge name in the host namespace
	BridgeIndex int    // bridge ifindex in the host namespace
	BridgeMAC   net.HardwareAddr
	Gateway     netip.Prefix // bridge address, e.g. 10.231.7.1/24
	Hosts       []*Host

	suffix    string
	hostInode uint32
	prefix    int // 24 or 16

	mu       sync.Mutex
	next     int // next host number (address .next+1)
	iptRule  []string
	lock     *os.File
	closed   bool
	closeErr error
}

// Host is one network namespace attached to the topology's bridge.
type Host struct {
	Name          string // netns name (under /var/run/netns)
	Path          string // /var/run/netns/<name>
	Inode         uint32 // netns inode
	IfName        string // "eth0"
	Ifindex       int    // eth0's ifindex inside the netns
	HostVeth      string // peer name in the host netns
	HostVethIndex int
	Addr          netip.Prefix // e.g. 10.231.7.2/24
	MAC           net.HardwareAddr
}

// New builds a topology, registers its removal with t.Cleanup and fails the
// test on any error; it skips the test unless it runs as root.
func New(t testing.TB, opts Options) *Topology {
	t.Helper()
	privtest.RequireRoot(t)
	topo, err := Build(opts)
	if topo != nil {
		t.Cleanup(func() {
			if err := topo.Close(); err != nil {
				t.Errorf("testnet cleanup: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testnet: %v", err)
	}
	return topo
}

// HostInode returns the inode of the namespace the bridge lives in (the
// test process's namespace).
func (t *Topology) HostInode() uint32 { return t.hostInode }

// Subnet returns the topology's /24.
func (t *Topology) Subnet() netip.Prefix { return t.Gateway.Masked() }

// AddHost attaches one more namespace to the bridge. It is removed with the
// rest of the topology.
func (t *Topology) AddHost(tb testing.TB) *Host {
	tb.Helper()
	h, err := t.addHost()
	if err != nil {
		tb.Fatalf("testnet: add host: %v", err)
	}
	return h
}

// RemoveHost deletes one host (its namespace and veth pair) ahead of the
// topology's cleanup, e.g. to test how code copes with a vanishing namespace.
func (t *Topology) RemoveHost(h *Host) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, x := range t.Hosts {
		if x == h {
			t.Hosts = append(t.Hosts[:i:i], t.Hosts[i+1:]...)
			break
		}
	}
	return removeHost(h)
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// Build builds a topology; the caller removes it with Close. On error,
// whatever was built is already removed.
func Build(opts Options) (topo *Topology, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("testnet: needs root (network namespaces, veths, bridges)")
	}
	if opts.Hosts <= 0 {
		opts.Hosts = 2
	}
	switch {
	case opts.Prefix == 0 && opts.Hosts > 250:
		opts.Prefix = 16
	case opts.Prefix == 0:
		opts.Prefix = 24
	case opts.Prefix != 16 && opts.Prefix != 24:
		return nil, fmt.Errorf("testnet: prefix /%d: want /24 or /16", opts.Prefix)
	}
	if max := maxHosts(opts.Prefix); opts.Hosts > max {
		return nil, fmt.Errorf("testnet: %d hosts do not fit a /%d (at most %d)", opts.Hosts, opts.Prefix, max)
	}
	topo = &Topology{suffix: randHex(6), next: 1, prefix: opts.Prefix}
	topo.Bridge = opts.BridgeName
	if topo.Bridge == "" {
		topo.Bridge = "htbr" + topo.suffix
	}
	if len(topo.Bridge) > 15 {
		return nil, fmt.Errorf("bridge name %q longer than 15 characters", topo.Bridge)
	}

	runtime.LockOSThread()
	hostNS, err := netns.Get()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	topo.hostInode, err = fdInode(int(hostNS))
	hostNS.Close()
	if err != nil {
		return nil, err
	}
	if err := topo.pickSubnet(opts.Prefix); err != nil {
		return nil, err
	}
	// From here on Close undoes whatever exists.
	defer func() {
		if err != nil {
			topo.Close()
			topo = nil
		}
	}()

	// A fixed MAC: a bridge otherwise takes the lowest MAC of its ports,
	// which changes as hosts come and go.
	mac := net.HardwareAddr{0x02, 0x68, 0x74, randByte(), randByte(), randByte()}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: topo.Bridge, HardwareAddr: mac}}
	if err := netlink.LinkAdd(br); err != nil {
		return topo, fmt.Errorf("add bridge %s: %w", topo.Bridge, err)
	}
	link, err := netlink.LinkByName(topo.Bridge)
	if err != nil {
		return topo, fmt.Errorf("bridge %s: %w", topo.Bridge, err)
	}
	topo.BridgeIndex = link.Attrs().Index
	topo.BridgeMAC = link.Attrs().HardwareAddr
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: prefixToIPNet(topo.Gateway)}); err != nil {
		return topo, fmt.Errorf("address %s on %s: %w", topo.Gateway, topo.Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return topo, fmt.Errorf("set %s up: %w", topo.Bridge, err)
	}
	if err := topo.allowForwarding(); err != nil {
		return topo, err
	}
	for i := 0; i < opts.Hosts; i++ {
		if _, err := topo.addHost(); err != nil {
			return topo, err
		}
	}
	return topo, nil
}

// pickSubnet chooses 10.231.X.0/24 with a random X (or, for a /16,
// 10.X.0.0/16 with X from 200 to 249) that no address or route of the host
// namespace touches and that no other topology (in this or another test
// process) holds, using a flock'ed file per subnet.
func (t *Topology) pickSubnet(bits int) error {
	candidate := func(x byte) netip.Prefix {
		if bits == 16 {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, x, 0, 0}), 16)
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 231, x, 0}), 24)
	}
	var inUse []netip.Prefix
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if p, ok := netipPrefix(a.IPNet); ok {
				inUse = append(inUse, p)
			}
		}
	}
	if routes, err := netlink.RouteList(nil, netlink.FAMILY_V4); err == nil {
		for _, r := range routes {
			if p, ok := netipPrefix(r.Dst); ok && p.Bits() > 0 {
				inUse = append(inUse, p)
			}
		}
	}
	free := func(c netip.Prefix) bool {
		for _, p := range inUse {
			if p.Overlaps(c) {
				return false
			}
		}
		return true
	}
	start := randByte()
	for i := 0; i < 256; i++ {
		x := start + byte(i)
		if bits == 16 {
			x = 200 + x%50
		}
		if x == 0 || x == 255 {
			continue
		}
		c := candidate(x)
		if !free(c) {
			continue
		}
		f, ok := lockSubnet(c)
		if !ok {
			continue
		}
		t.lock = f
		t.Gateway = netip.PrefixFrom(c.Addr().Next(), bits)
		return nil
	}
	return fmt.Errorf("no free %s subnet", candidate(0))
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(n.String())
	return p.Masked(), err == nil
}

// maxHosts is how many namespaces fit a subnet: .2 to .251 of each /24 in it.
func maxHosts(bits int) int {
	if bits == 16 {
		return 250 * 50
	}
	return 250
}

// hostAddr is host n's address (n from 1): .2 to .251 of the first /24,
// then of the next one (a /16 only).
func (t *Topology) hostAddr(n int) netip.Prefix {
	b := t.Gateway.Masked().Addr().As4()
	b[2] += byte((n - 1) / 250)
	b[3] = byte((n-1)%250 + 2)
	return netip.PrefixFrom(netip.AddrFrom4(b), t.Gateway.Bits())
}

func randByte() byte {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return b[0]
}

// lockSubnet takes an exclusive, non-blocking flock on a per-subnet file. The
// kernel drops the lock when the process dies, so a crashed test never keeps
// a subnet. Where no lock file can be created (read-only root), the subnet is
// used without a lock.
func lockSubnet(subnet netip.Prefix) (*os.File, bool) {
	name := fmt.Sprintf("%s.lock", subnet.Addr())
	if subnet.Bits() == 24 {
		name = fmt.Sprintf("10.231.%d.lock", subnet.Addr().As4()[2]) // the name older runs locked
	}
	return lockFile(name)
}

// allowForwarding inserts an iptables ACCEPT rule for traffic bridged within
// the test bridge, but only when bridged traffic goes through iptables at all
// (br_netfilter loaded and bridge-nf-call-iptables=1), as on a Docker host
// whose FORWARD policy is DROP.
func (t *Topology) allowForwarding() error {
	b, err := os.ReadFile(nfCallIptables)
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		return nil
	}
	rule := []string{"FORWARD", "-i", t.Bridge, "-o", t.Bridge, "-j", "ACCEPT"}
	args := append([]string{"-w", "-I"}, rule...)
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	t.iptRule = rule
	return nil
}

func (t *Topology) addHost() (*Host, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("topology closed")
	}
	n := t.next
	if n > maxHosts(t.prefix) {
		return nil, errors.New("subnet full")
	}
	t.next++
	h := &Host{
		Name:     fmt.Sprintf("ht%s-%d", t.suffix, n),
		IfName:   "eth0",
		HostVeth: fmt.Sprintf("htv%s%d", t.suffix, n),
		Addr:     t.hostAddr(n),
	}
	h.Path = filepath.Join(NetnsDir, h.Name)
	// Track it before it is complete so that Close removes partial work.
	t.Hosts = append(t.Hosts, h)
	if err := t.setupHost(h); err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	return h, nil
}

func (t *Topology) setupHost(h *Host) error {
	if err := createNamedNetns(h.Path); err != nil {
		return err
	}
	ino, err := inode(h.Path)
	if err != nil {
		return err
	}
	h.Inode = ino

	nsh, err := netns.GetFromPath(h.Path)
	if err != nil {
		return fmt.Errorf("open %s: %w", h.Path, err)
	}
	defer nsh.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.HostVeth, MasterIndex: t.BridgeIndex},
		PeerName:      h.IfName,
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", h.HostVeth, err)
	}
	hl, err := netlink.LinkByName(h.HostVeth)
	if err != nil {
		return fmt.Errorf("veth %s: %w", h.HostVeth, err)
	}
	h.HostVethIndex = hl.Attrs().Index
	if hl.Attrs().MasterIndex != t.BridgeIndex {
		if err := netlink.LinkSetMasterByIndex(hl, t.BridgeIndex); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", h.HostVeth, t.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", h.HostVeth, err)
	}

	return configureEnd(nsh, h, t.Gateway.Addr())
}

// configureEnd sets up the namespace side of a host: lo and its interface
// up, its address, a default route via gw; it fills Ifindex and MAC.
func configureEnd(nsh netns.NsHandle, h *Host, gw netip.Addr) error {
	nh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", h.Name, err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo in %s: %w", h.Name, err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", h.Name, err)
	}
	eth, err := nh.LinkByName(h.IfName)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", h.IfName, h.Name, err)
	}
	h.Ifindex = eth.Attrs().Index
	h.MAC = append(net.HardwareAddr(nil), eth.Attrs().HardwareAddr...)
	if err := nh.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(h.Addr)}); err != nil {
		return fmt.Errorf("address %s on %s in %s: %w", h.Addr, h.IfName, h.Name, err)
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up in %s: %w", h.IfName, h.Name, err)
	}
	if err := nh.RouteAdd(&netlink.Route{LinkIndex: h.Ifindex, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gw, h.Name, err)
	}
	return nil
}

// createNamedNetns creates a new network namespace and bind-mounts it at
// path, like "ip netns add". The unshare happens on a locked OS thread that
// returns to its namespace before it is unlocked. (Letting the thread die
// instead is no option: on the main thread the runtime would keep it
// wedged in the new namespace, and /proc/self/ns/net would name that.)
func createNamedNetns(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		err = unix.Mount(src, path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind-mount netns at %s: %w", path, err)
		}
		if rerr := netns.Set(orig); rerr != nil {
			// Stay locked: the runtime discards the thread when the
			// goroutine exits instead of reusing it in the wrong namespace.
			errc <- errors.Join(err, fmt.Errorf("return to original netns: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

func deleteNamedNetns(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

func removeHost(h *Host) error {
	var errs []error
	if l, err := netlink.LinkByName(h.HostVeth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", h.HostVeth, err))
		}
	}
	if err := deleteNamedNetns(h.Path); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close removes every namespace, link and iptables rule of the topology. It
// is idempotent; New registers it with t.Cleanup.
func (t *Topology) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return t.closeErr
	}
	t.closed = true
	var errs []error
	// Unmounting a namespace that nothing else holds destroys it and its
	// veth end, which takes the host end along; the kernel does that in
	// batches, much faster than one link deletion (and RCU grace period) at
	// a time. Host veths still there once the kernel stops making progress
	// (a process still holds the namespace) are deleted one by one.
	for _, h := range t.Hosts {
		if err := deleteNamedNetns(h.Path); err != nil {
			errs = append(errs, err)
		}
	}
	left, progress := t.Hosts, time.Now()
	for len(left) > 0 && time.Since(progress) < 500*time.Millisecond {
		time.Sleep(10 * time.Millisecond)
		var still []*Host
		for _, h := range left {
			if _, err := netlink.LinkByName(h.HostVeth); err == nil {
				still = append(still, h)
			}
		}
		if len(still) < len(left) {
			progress = time.Now()
		}
		left = still
	}
	for _, h := range left {
		if l, err := netlink.LinkByName(h.HostVeth); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", h.HostVeth, err))
			}
		}
	}
	if l, err := netlink.LinkByName(t.Bridge); err == nil && l.Attrs().Index == t.BridgeIndex {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", t.Bridge, err))
		}
	}
	if t.iptRule != nil {
		args := append([]string{"-w", "-D"}, t.iptRule...)
		if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out))))
		}
	}
	if t.lock != nil {
		// The file stays: removing it could let two processes lock two
		// different files for the same subnet.
		t.lock.Close()
	}
	t.closeErr = errors.Join(errs...)
	return t.closeErr
}

// inode returns the inode number of a namespace file: resolve.NetnsInode,
// which this package cannot import (resolve's own tests import testnet).
func inode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint32(st.Ino), nil
}

func fdInode(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat netns: %w", err)
	}
	return uint32(st.Ino), nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// Flood makes the bridge flood every frame for h: learning off on h's
// port, and the address it learned already forgotten. Each unicast to h
// then also reaches every other namespace of the topology, whose ip_rcv
// frees it as OTHERHOST (not for this host).
func (t *Topology) Flood(h *Host) error {
	port, err := netlink.LinkByIndex(h.HostVethIndex)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetLearning(port, false); err != nil {
		return fmt.Errorf("learning off on %s: %w", h.HostVeth, err)
	}
	err = netlink.NeighDel(&netlink.Neigh{LinkIndex: h.HostVethIndex, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_MASTER, HardwareAddr: h.MAC})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forget %s on %s: %w", h.MAC, h.HostVeth, err)
	}
	return nil
}
