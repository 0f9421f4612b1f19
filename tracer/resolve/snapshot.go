package resolve

// A one-shot look at the machine's network namespaces and the facts the
// inspect, topology and verify commands show about them: names under
// /var/run/netns, Docker sandboxes, the nsid the host namespace assigned,
// bridge port states. The Resolver keeps the same picture current.

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const maxProcsScanned = 100000

// FoundNetns is one network namespace a Scan found on the machine.
type FoundNetns struct {
	Inode uint32
	// Label is what the Resolver calls it (see Place.Netns).
	Label    string
	Path     string   // a path that opens it
	Names    []string // names under /var/run/netns
	Sandbox  string   // Docker sandbox file name under /var/run/docker/netns
	PIDs     int      // number of processes in it (from /proc)
	FirstPID int      // lowest PID in it, 0 if none
	// NSID is the id the current namespace assigned to it (as shown in
	// "link-netnsid" by ip link), -1 when none was assigned.
	NSID int
}

// Current opens the network namespace of the calling thread (with the
// thread locked while it looks, so the answer is not another thread's),
// and returns it with its inode. The caller closes the handle.
//
// /proc/self/ns/net is not used: it is the main thread's namespace, which
// may differ from the one the process works in.
func Current() (netns.NsHandle, uint32, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := netns.Get()
	if err != nil {
		return netns.None(), 0, fmt.Errorf("open current network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return netns.None(), 0, err
	}
	return h, uint32(st.Ino), nil
}

// HostHandle returns a netlink handle in the caller's namespace and that
// namespace's inode.
func HostHandle() (*netlink.Handle, uint32, error) {
	ns, ino, err := Current()
	if err != nil {
		return nil, 0, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, 0, fmt.Errorf("netlink: %w", err)
	}
	return h, ino, nil
}

// NetnsNames returns the `ip netns` names of the namespace with this inode.
func NetnsNames(inode uint32) []string {
	var out []string
	ents, _ := os.ReadDir(NamedNetnsDir)
	for _, e := range ents {
		if ino, err := NetnsInode(filepath.Join(NamedNetnsDir, e.Name())); err == nil && ino == inode {
			out = append(out, e.Name())
		}
	}
	return out
}

// NSID returns the nsid that the namespace of the netlink handle assigned
// to the namespace at path, or -1.
func NSID(nl *netlink.Handle, path string) int {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return -1
	}
	defer h.Close()
	id, err := nl.GetNetNsIdByFd(int(h))
	if err != nil {
		return -1
	}
	return id
}

// Scan lists the namespaces found under /var/run/netns, Docker's sandbox
// directory and /proc, except self (the inode of the namespace of nl),
// sorted by inode; NSIDs are those that nl's namespace assigned.
func Scan(nl *netlink.Handle, self uint32) []FoundNetns {
	byIno := map[uint32]*FoundNetns{}
	get := func(ino uint32, path string) *FoundNetns {
		ns := byIno[ino]
		if ns == nil {
			ns = &FoundNetns{Inode: ino, Path: path, NSID: -1}
			byIno[ino] = ns
		}
		return ns
	}
	ents, _ := os.ReadDir(NamedNetnsDir)
	for _, e := range ents {
		p := filepath.Join(NamedNetnsDir, e.Name())
		if ino, err := NetnsInode(p); err == nil && ino != self {
			ns := get(ino, p)
			ns.Names = append(ns.Names, e.Name())
		}
	}
	ents, _ = os.ReadDir(DockerNetnsDir)
	for _, e := range ents {
		p := filepath.Join(DockerNetnsDir, e.Name())
		if ino, err := NetnsInode(p); err == nil && ino != self && ino != 0 {
			// An unmounted sandbox file has the inode of an empty file
			// on the host file system; the nsfs check below sorts it out.
			if !isNetns(p) {
				continue
			}
			ns := get(ino, p)
			ns.Sandbox = e.Name()
		}
	}
	procs, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if n++; n > maxProcsScanned {
			break
		}
		p := fmt.Sprintf("/proc/%d/ns/net", pid)
		ino, err := NetnsInode(p)
		if err != nil || ino == self {
			continue
		}
		ns := get(ino, p)
		ns.PIDs++
		if ns.FirstPID == 0 || pid < ns.FirstPID {
			ns.FirstPID = pid
		}
	}
	out := make([]FoundNetns, 0, len(byIno))
	for _, ns := range byIno {
		sort.Strings(ns.Names)
		ns.NSID = NSID(nl, ns.Path)
		switch {
		case len(ns.Names) > 0:
			ns.Label = ns.Names[0]
		case ns.Sandbox != "":
			ns.Label = "docker:" + ns.Sandbox
		default:
			ns.Label = procLabel(ns.Inode, ns.FirstPID)
		}
		out = append(out, *ns)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Inode < out[j].Inode })
	return out
}

// isNetns reports whether path is a network namespace (nsfs) file.
func isNetns(path string) bool {
	_, ok, _ := nsfsInode(path)
	return ok
}

// NetnsHandle opens a netlink handle inside the namespace at path.
func NetnsHandle(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %s: %w", path, err)
	}
	return h, nil
}

// Addrs returns a link's addresses in CIDR notation (IPv4 first, no
// link-local IPv6).
func Addrs(h *netlink.Handle, l netlink.Link) []string {
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		as, err := AddrList(h, l, fam)
		if err != nil {
			continue
		}
		for _, a := range as {
			if a.IP.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, a.IPNet.String())
		}
	}
	return out
}
