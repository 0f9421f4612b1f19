package resolve

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// errIncomplete marks a relist that used a dump the kernel flagged as
// interrupted by concurrent changes.
var errIncomplete = errors.New("dump interrupted by concurrent changes")

// coalesceDelay is how long the event loop collects a namespace's netlink
// notifications before relisting it.
const coalesceDelay = 5 * time.Millisecond

// netlinkTimeout bounds every netlink request the resolver makes.
const netlinkTimeout = 5 * time.Second

// applyCandidateLocked adds a newly found namespace or updates how a known
// one is called. It reports whether anything changed. Caller holds r.wmu.
func (r *Resolver) applyCandidateLocked(c candidate) (bool, error) {
	st := r.nss[c.inode]
	if st == nil {
		c.fillLabel()
		if err := r.addLocked(c); err != nil {
			return false, err
		}
		return true, nil
	}
	if c.src == st.src && c.path == st.ns.Path {
		return false, nil
	}
	// A better-known name wins; a worse one replaces the current only when
	// the current path no longer opens this namespace.
	if c.src >= st.src {
		if ino, err := checkNetnsFile(st.ns.Path); err == nil && ino == c.inode {
			return false, nil
		}
	}
	c.fillLabel()
	ns := st.ns
	ns.Path, ns.Label = c.path, c.label
	r.mu.Lock()
	st.ns = ns
	r.mu.Unlock()
	st.src, st.pid = c.src, c.pid
	r.watchPidLocked(st)
	return true, nil
}

// fillLabel computes the label of a namespace found through /proc (it reads
// the process name, so only for namespaces being added or renamed).
func (c *candidate) fillLabel() {
	if c.label == "" {
		c.label = procLabel(c.inode, c.pid)
	}
}

// addLocked opens a namespace, makes sure its link and address changes are
// heard (see events.go), lists it and publishes it. Caller holds r.wmu.
func (r *Resolver) addLocked(c candidate) (err error) {
	nsh, err := netns.GetFromPath(c.path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", c.path, err)
	}
	r.added++
	st := &nsState{
		ns:       Namespace{Inode: c.inode, Label: c.label, Path: c.path, Seq: r.added},
		links:    map[int]*Link{},
		names:    map[string]int{},
		src:      c.src,
		pid:      c.pid,
		nsh:      nsh,
		nsids:    map[int]uint32{},
		hostNsid: -1,
	}
	defer func() {
		if err != nil {
			r.ev.forget(st)
			st.closeHandles()
		}
	}()
	var fst unix.Stat_t
	if err := unix.Fstat(int(nsh), &fst); err != nil {
		return fmt.Errorf("stat netns %s: %w", c.path, err)
	}
	if uint32(fst.Ino) != c.inode {
		return fmt.Errorf("netns %s changed while opening it", c.path)
	}
	sock, err := nl.GetNetlinkSocketAt(nsh, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket in %s: %w", c.path, err)
	}
	st.dump = &nl.SocketHandle{Socket: sock}
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	if err := sock.SetReceiveTimeout(&tv); err != nil {
		return fmt.Errorf("netlink socket in %s: %w", c.path, err)
	}
	if err := sock.SetSendTimeout(&tv); err != nil {
		return fmt.Errorf("netlink socket in %s: %w", c.path, err)
	}
	// Subscribe before listing so that no change falls in between.
	if err := r.subscribeLocked(st); err != nil {
		return fmt.Errorf("subscribe in %s: %w", c.path, err)
	}
	// List before publishing, so that readers never see it without links.
	_, listErr := r.relistLocked(st)
	if listErr != nil {
		r.ev.kick(st) // the event loop retries
	}
	r.mu.Lock()
	r.nss[c.inode] = st
	r.mu.Unlock()
	r.watchPidLocked(st)
	return nil
}

// subscribeLocked makes sure st's notifications reach the event loop: the
// host's come on the shared socket, so do those of a namespace the host has
// an nsid for; any other namespace gets a socket of its own. Caller holds
// r.wmu.
func (r *Resolver) subscribeLocked(st *nsState) error {
	e := r.ev
	if st.ns.Inode == r.hostInode {
		e.mu.Lock()
		e.host = st
		e.mu.Unlock()
		// Should the host number itself, its own notifications carry
		// that nsid.
		if id, err := getNsid(st.dump, int(st.nsh)); err == nil && id >= 0 {
			e.route(st, id)
		}
		return nil
	}
	if host := r.nss[r.hostInode]; host != nil && !host.stopped && e.allNsid {
		if id, err := getNsid(host.dump, int(st.nsh)); err == nil && id >= 0 {
			e.route(st, id)
			return nil
		}
	}
	sub, _, err := e.subscribe(st.nsh, st, false, ownRcvBuf)
	if err != nil {
		return err
	}
	st.sub = sub
	return nil
}

func (st *nsState) closeHandles() {
	if st.dump != nil {
		st.dump.Close()
		st.dump = nil
	}
	if st.pidWatch != nil {
		st.pidWatch.Close()
		st.pidWatch = nil
	}
	if st.nsh.IsOpen() {
		st.nsh.Close()
		st.nsh = netns.None()
	}
}

// dropLocked forgets a namespace and stops listening to it. Caller holds
// r.wmu.
func (r *Resolver) dropLocked(st *nsState) {
	if st.stopped {
		return
	}
	st.stopped = true
	r.ev.forget(st)
	st.closeHandles()
	ino := st.ns.Inode
	r.mu.Lock()
	if r.nss[ino] == st {
		delete(r.nss, ino)
	}
	r.mu.Unlock()
	// The kernel may hand the dropped namespace's nsids to others.
	for _, o := range r.nss {
		for id, target := range o.nsids {
			if target == ino {
				delete(o.nsids, id)
			}
		}
	}
}

// resolvePendingPeersLocked relists namespaces with veths whose peer
// namespace was unknown, after the set of namespaces changed.
func (r *Resolver) resolvePendingPeersLocked() {
	for _, st := range r.nss {
		if st.unresolved && !st.stopped {
			if _, err := r.relistLocked(st); err != nil {
				r.ev.kick(st)
			}
		}
	}
}

// resolveNsidLocked maps an nsid, as namespace st numbers its peers, to a
// namespace inode, asking the kernel (RTM_GETNSID) for the id st gives each
// known namespace not mapped yet, the host namespace first.
func (r *Resolver) resolveNsidLocked(st *nsState, nsid int) (uint32, bool) {
	if ino, ok := st.nsids[nsid]; ok {
		if _, known := r.nss[ino]; known {
			return ino, true
		}
		delete(st.nsids, nsid)
	}
	mapped := make(map[uint32]bool, len(st.nsids))
	for _, ino := range st.nsids {
		mapped[ino] = true
	}
	probe := func(o *nsState) bool {
		if o == st || o.stopped || mapped[o.ns.Inode] || !o.nsh.IsOpen() {
			return false
		}
		id, err := getNsid(st.dump, int(o.nsh))
		if err != nil || id < 0 {
			return false
		}
		st.nsids[int(id)] = o.ns.Inode
		mapped[o.ns.Inode] = true
		return int(id) == nsid
	}
	if host := r.nss[r.hostInode]; host != nil && probe(host) {
		return host.ns.Inode, true
	}
	for _, o := range r.nss {
		if probe(o) {
			return o.ns.Inode, true
		}
	}
	return 0, false
}

// relistLocked dumps links and addresses of a namespace and publishes them,
// reporting whether anything differs from what was known. Caller holds
// r.wmu.
func (r *Resolver) relistLocked(st *nsState) (changed bool, listErr error) {
	if st.stopped || st.dump == nil {
		return false, errors.New("namespace closed")
	}
	// A dump that raced with a change is retried; if changes keep coming,
	// its (nearly right) result is used and the caller retries later.
	var (
		raws        []rawLink
		addrs       []netlink.Addr
		err         error
		interrupted bool
	)
	for try := 0; ; try++ {
		raws, err = dumpLinks(st.dump)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || try == 3 {
			break
		}
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		interrupted, err = true, nil
	}
	if err != nil {
		return false, fmt.Errorf("dump links: %w", err)
	}
	for try := 0; ; try++ {
		addrs, err = dumpAddrs(st.dump)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || try == 3 {
			break
		}
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		interrupted, err = true, nil
	}
	if err != nil {
		return false, fmt.Errorf("dump addresses: %w", err)
	}
	if interrupted {
		defer func() {
			if listErr == nil {
				listErr = errIncomplete
			}
		}()
	}

	links, names, unresolved := buildLinks(st.ns.Inode, raws, addrs, func(nsid int) (uint32, bool) {
		return r.resolveNsidLocked(st, nsid)
	})
	st.unresolved = unresolved
	if sameLinks(st.links, links) {
		return false, nil
	}
	r.mu.Lock()
	st.links, st.names = links, names
	r.mu.Unlock()
	return true, nil
}

// sameLinks reports whether two views of a namespace's links are equal.
func sameLinks(a, b map[int]*Link) bool {
	if len(a) != len(b) {
		return false
	}
	for idx, la := range a {
		lb, ok := b[idx]
		if !ok || !sameLink(la, lb) {
			return false
		}
	}
	return true
}

func sameLink(a, b *Link) bool {
	return a.Netns == b.Netns && a.Index == b.Index && a.Name == b.Name && a.Kind == b.Kind &&
		a.Up == b.Up && a.Running == b.Running && a.MAC == b.MAC && a.MTU == b.MTU &&
		a.MasterIndex == b.MasterIndex && a.MasterName == b.MasterName && a.PortState == b.PortState &&
		a.PeerIndex == b.PeerIndex && a.PeerNetns == b.PeerNetns && slices.Equal(a.Addrs, b.Addrs)
}

// watchPidLocked watches the process through which a namespace was found,
// so that its exit triggers a rescan (the namespace may be gone with it).
func (r *Resolver) watchPidLocked(st *nsState) {
	if st.pidWatch != nil {
		st.pidWatch.Close()
		st.pidWatch = nil
	}
	if st.src != srcProc || st.pid <= 0 {
		return
	}
	fd, err := unix.PidfdOpen(st.pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return // kernel without pidfd, or the process is gone already
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	st.pidWatch = f
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		rc, err := f.SyscallConn()
		if err != nil {
			return
		}
		exited := false
		err = rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(pfd, 0)
			exited = n > 0
			return exited
		})
		if err == nil && exited {
			r.Refresh()
		}
	}()
}
