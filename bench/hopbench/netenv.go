package main

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
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named namespaces are bind-mounted ("ip netns add").
const netnsDir = "/var/run/netns"

// Net is a bridge in the host namespace with named namespaces attached to it,
// each through a veth pair (eth0 inside, hbv<id><n> on the bridge). The
// benchmark sends traffic only between the addresses of a Net it built.
type Net struct {
	ID      string
	Bridge  string
	Gateway netip.Prefix // the bridge's address
	Hosts   []*NetHost

	bridgeIndex int
	iptRule     []string
}

// NetHost is one namespace of a Net.
type NetHost struct {
	Name     string // under /var/run/netns
	Path     string
	HostVeth string
	Addr     netip.Prefix
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// pickSubnet returns a 10.X.0.0/16 (X from 200 up) that no address or route
// of the host namespace touches.
func pickSubnet() (netip.Prefix, error) {
	used := map[byte]bool{}
	addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
	for _, a := range addrs {
		if ip := a.IP.To4(); ip != nil && ip[0] == 10 {
			used[ip[1]] = true
		}
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil {
			if ip := r.Dst.IP.To4(); ip != nil && ip[0] == 10 {
				used[ip[1]] = true
			}
		}
	}
	for x := 200; x < 250; x++ {
		if !used[byte(x)] {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x), 0, 0}), 16), nil
		}
	}
	return netip.Prefix{}, errors.New("no free 10.X.0.0/16 for the benchmark network")
}

// NewNet builds a bridge and n namespaces. On error, whatever was built is
// removed.
func NewNet(n int) (nt *Net, err error) {
	subnet, err := pickSubnet()
	if err != nil {
		return nil, err
	}
	id := randHex(5)
	base := subnet.Addr().As4()
	nt = &Net{ID: id, Bridge: "hbbr" + id, Gateway: netip.PrefixFrom(netip.AddrFrom4([4]byte{base[0], base[1], 0, 1}), 16)}
	defer func() {
		if err != nil {
			nt.Close()
			nt = nil
		}
	}()
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: nt.Bridge}}); err != nil {
		return nt, fmt.Errorf("add bridge %s: %w", nt.Bridge, err)
	}
	br, err := netlink.LinkByName(nt.Bridge)
	if err != nil {
		return nt, err
	}
	nt.bridgeIndex = br.Attrs().Index
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipnet(nt.Gateway)}); err != nil {
		return nt, fmt.Errorf("address on %s: %w", nt.Bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nt, err
	}
	// With br_netfilter, bridged traffic crosses the FORWARD chain (policy
	// DROP on Docker hosts): accept this bridge's own traffic, removed in Close.
	if b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil && strings.TrimSpace(string(b)) == "1" {
		rule := []string{"FORWARD", "-i", nt.Bridge, "-o", nt.Bridge, "-j", "ACCEPT"}
		if out, err := exec.Command("iptables", append([]string{"-w", "-I"}, rule...)...).CombinedOutput(); err != nil {
			return nt, fmt.Errorf("iptables: %v: %s", err, out)
		}
		nt.iptRule = rule
	}
	for i := 0; i < n; i++ {
		if _, err := nt.addHost(); err != nil {
			return nt, err
		}
	}
	return nt, nil
}

func (nt *Net) addHost() (*NetHost, error) {
	i := len(nt.Hosts) + 1 // hosts are .0.2, .0.3, ..., .0.251, .1.2, ...
	gw := nt.Gateway.Addr().As4()
	h := &NetHost{
		Name:     fmt.Sprintf("hb%s-%d", nt.ID, i),
		HostVeth: fmt.Sprintf("hbv%s%d", nt.ID, i),
		Addr:     netip.PrefixFrom(netip.AddrFrom4([4]byte{gw[0], gw[1], byte((i - 1) / 250), byte((i-1)%250 + 2)}), 16),
	}
	h.Path = filepath.Join(netnsDir, h.Name)
	nt.Hosts = append(nt.Hosts, h)
	if err := createNetns(h.Path); err != nil {
		return nil, err
	}
	nsh, err := netns.GetFromPath(h.Path)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.HostVeth, MasterIndex: nt.bridgeIndex},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", h.HostVeth, err)
	}
	hl, err := netlink.LinkByName(h.HostVeth)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return nil, err
	}
	nh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := nh.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w", name, h.Name, err)
		}
		if name == "eth0" {
			if err := nh.AddrAdd(l, &netlink.Addr{IPNet: ipnet(h.Addr)}); err != nil {
				return nil, fmt.Errorf("address in %s: %w", h.Name, err)
			}
		}
		if err := nh.LinkSetUp(l); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// DisableIPv6 turns IPv6 off inside the namespaces so that router
// solicitations and MLD reports do not add background packets.
func (nt *Net) DisableIPv6() {
	for _, h := range nt.Hosts {
		_ = h.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0)
		})
	}
}

// Close removes the namespaces, veths, bridge and iptables rule.
func (nt *Net) Close() error {
	var errs []error
	// Unmounting a namespace that nothing else holds destroys it and its veth
	// end, which takes the host end along; the kernel does that in batches,
	// much faster than one link deletion (and RCU grace period) at a time.
	for _, h := range nt.Hosts {
		if err := unix.Unmount(h.Path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", h.Path, err))
		}
		if err := os.Remove(h.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, h := range nt.Hosts {
		for {
			l, err := netlink.LinkByName(h.HostVeth)
			if err != nil {
				break // gone
			}
			if time.Now().After(deadline) {
				if err := netlink.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("delete %s: %w", h.HostVeth, err))
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	nt.Hosts = nil
	if l, err := netlink.LinkByName(nt.Bridge); err == nil && l.Attrs().Index == nt.bridgeIndex {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, err)
		}
	}
	if nt.iptRule != nil {
		if out, err := exec.Command("iptables", append([]string{"-w", "-D"}, nt.iptRule...)...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("iptables -D: %v: %s", err, out))
		}
		nt.iptRule = nil
	}
	return errors.Join(errs...)
}

// createNetns makes a namespace and bind-mounts it at path ("ip netns add"),
// unsharing on a thread that is thrown away afterwards.
func createNetns(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		errc <- unix.Mount(src, path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	return nil
}

// Do runs fn on a thread inside the namespace; sockets fn opens stay there.
func (h *NetHost) Do(fn func() error) error {
	target, err := netns.GetFromPath(h.Path)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// UDPSender opens a UDP socket in the namespace connected to dst.
func (h *NetHost) UDPSender(dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = net.DialTimeout("udp4", dst.String(), time.Second)
		return err
	})
	return c, err
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
