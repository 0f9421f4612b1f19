package resolve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// How the resolver hears about link and address changes.
//
// One NETLINK_ROUTE socket in the host namespace, with
// NETLINK_LISTEN_ALL_NSID set, receives the link and address notifications
// of the host and of every namespace the host has an nsid for; each message
// carries that nsid in a control message. A veth whose peer lives in
// another namespace gives the two namespaces nsids for each other (the
// kernel assigns them when the pair is created or moved), so every
// container namespace on a bridge is covered by that one socket. The
// resolver only reads nsids (RTM_GETNSID never assigns one): a namespace
// the host has no nsid for — no veth to the host, such as a
// --network=none container or a namespace with only a dummy or a macvlan
// — gets a subscription socket of its own, and moves to the shared one when
// an nsid appears for it.
//
// All subscription sockets are read by one goroutine (epoll), which also
// runs the relists: a namespace reported changed is relisted coalesceDelay
// after the first notification of a burst. Relists are serialized by
// r.wmu anyway, so one goroutine loses nothing, and no goroutine (with the
// 64 KiB receive buffer netlink's readers keep on their stacks) is spent
// per namespace.

// rtnlGroups are the multicast groups every subscription joins.
var rtnlGroups = []int{unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR}

// Receive buffer sizes: a namespace's own socket, and the shared one that
// takes every covered namespace's bursts (a container start brings a dozen
// messages; an overrun costs a relist of everything the socket covers).
const (
	ownRcvBuf    = 256 << 10
	sharedRcvBuf = 4 << 20
)

// wakeToken is the epoll token of the event loop's eventfd.
const wakeToken = 0

// nlSub is one subscription socket, read by the event loop.
type nlSub struct {
	sock  *nl.NetlinkSocket
	token int32
	st    *nsState // the namespace it was opened in; nil for the shared socket
}

// events is the event loop's state; everything but epfd and wakefd is
// guarded by mu. Lock order: r.wmu before mu.
type events struct {
	epfd, wakefd int

	mu        sync.Mutex
	subs      map[int32]*nlSub
	nextToken int32
	shared    *nlSub // host namespace socket; nil until New opened it
	allNsid   bool   // shared carries every namespace the host has an nsid for
	byNsid    map[int32]*nsState
	host      *nsState
	looked    map[int32]bool // nsids of messages no namespace was found for
	dirty     map[*nsState]time.Time
	failures  map[*nsState]int
	buf, oob  []byte
	recvFails int
}

func newEvents() (*events, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := &unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeToken}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &events{
		epfd: epfd, wakefd: wakefd,
		subs: map[int32]*nlSub{}, nextToken: wakeToken + 1,
		byNsid: map[int32]*nsState{}, looked: map[int32]bool{},
		dirty: map[*nsState]time.Time{}, failures: map[*nsState]int{},
		buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(4)*4),
	}, nil
}

// wake interrupts the event loop's epoll_wait.
func (e *events) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(e.wakefd, one[:])
}

// close releases the loop's descriptors; the loop must have ended.
func (e *events) close() {
	e.mu.Lock()
	for _, s := range e.subs {
		s.sock.Close()
	}
	e.subs = map[int32]*nlSub{}
	e.shared = nil
	e.mu.Unlock()
	unix.Close(e.epfd)
	unix.Close(e.wakefd)
}

// subscribe opens a subscription socket in the namespace nsh and hands it to
// the loop. all sets NETLINK_LISTEN_ALL_NSID; its failure is reported in
// allErr, the socket works for its own namespace regardless.
func (e *events) subscribe(nsh netns.NsHandle, st *nsState, all bool, rcvbuf int) (s *nlSub, allErr error, err error) {
	sock, err := nl.GetNetlinkSocketAt(nsh, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, err
	}
	fd := sock.GetFd()
	defer func() {
		if err != nil {
			sock.Close()
		}
	}()
	for _, g := range rtnlGroups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
			return nil, nil, fmt.Errorf("join netlink group %d: %w", g, err)
		}
	}
	// SO_RCVBUFFORCE passes rmem_max (root); SO_RCVBUF is capped by it.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return nil, nil, fmt.Errorf("netlink receive buffer: %w", err)
		}
	}
	if all {
		allErr = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_LISTEN_ALL_NSID, 1)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s = &nlSub{sock: sock, token: e.nextToken, st: st}
	e.nextToken++
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: s.token}); err != nil {
		return nil, nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	e.subs[s.token] = s
	return s, allErr, nil
}

// unsubscribeLocked closes a subscription socket. Caller holds e.mu (so
// the loop is not reading it).
func (e *events) unsubscribeLocked(s *nlSub) {
	if s == nil || e.subs[s.token] != s {
		return
	}
	delete(e.subs, s.token)
	unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, s.sock.GetFd(), nil)
	s.sock.Close()
}

// markLocked asks for a relist of st at the latest at due. Caller holds e.mu.
func (e *events) markLocked(st *nsState, due time.Time) {
	if d, ok := e.dirty[st]; !ok || due.Before(d) {
		e.dirty[st] = due
	}
}

// kick asks the loop for a relist of st now.
func (e *events) kick(st *nsState) {
	e.mu.Lock()
	e.markLocked(st, time.Now())
	e.mu.Unlock()
	e.wake()
}

// forget removes everything the loop knows about st. Caller holds r.wmu.
func (e *events) forget(st *nsState) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.unsubscribeLocked(st.sub)
	st.sub = nil
	if st.hostNsid >= 0 && e.byNsid[st.hostNsid] == st {
		delete(e.byNsid, st.hostNsid)
	}
	delete(e.dirty, st)
	delete(e.failures, st)
	clear(e.looked)
}

// route records that the shared socket carries st's notifications (the
// host numbers it nsid), closing st's own socket if it had one. Caller
// holds r.wmu.
func (e *events) route(st *nsState, nsid int32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.unsubscribeLocked(st.sub)
	st.sub = nil
	st.hostNsid = nsid
	e.byNsid[nsid] = st
	delete(e.looked, nsid)
}

// readLocked drains one subscription socket and marks the namespaces its
// messages came from. It returns the nsids no namespace is known for.
// Caller holds e.mu.
func (e *events) readLocked(s *nlSub, now time.Time, unknown []int32) []int32 {
	due := now.Add(coalesceDelay)
	fd := s.sock.GetFd()
	for range 256 { // bounded, so that one busy socket cannot starve the rest
		n, oobn, flags, from, err := unix.Recvmsg(fd, e.buf, e.oob, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return unknown
		}
		if err != nil || flags&unix.MSG_TRUNC != 0 {
			// ENOBUFS: the receive buffer overran and notifications
			// were lost; relist everything this socket covers.
			if !errors.Is(err, unix.ENOBUFS) {
				e.recvFails++
			}
			e.markCoveredLocked(s, due)
			if err != nil && !errors.Is(err, unix.ENOBUFS) {
				return unknown
			}
			continue
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 || n < unix.NLMSG_HDRLEN {
			continue // not from the kernel
		}
		if s.st != nil {
			e.markLocked(s.st, due)
			continue
		}
		nsid, ok := cmsgNsid(e.oob[:oobn])
		if !ok {
			if e.host != nil {
				e.markLocked(e.host, due) // the host's own notification
			}
			continue
		}
		if st := e.byNsid[nsid]; st != nil {
			e.markLocked(st, due)
		} else if !e.looked[nsid] {
			e.looked[nsid] = true
			unknown = append(unknown, nsid)
		}
	}
	return unknown
}

// markCoveredLocked marks every namespace whose notifications s carries.
func (e *events) markCoveredLocked(s *nlSub, due time.Time) {
	if s.st != nil {
		e.markLocked(s.st, due)
		return
	}
	if e.host != nil {
		e.markLocked(e.host, due)
	}
	for _, st := range e.byNsid {
		e.markLocked(st, due)
	}
}

// cmsgNsid returns the nsid of a NETLINK_LISTEN_ALL_NSID control message.
func cmsgNsid(oob []byte) (int32, bool) {
	if len(oob) == 0 {
		return 0, false
	}
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, c := range cms {
		if c.Header.Level == unix.SOL_NETLINK && c.Header.Type == unix.NETLINK_LISTEN_ALL_NSID && len(c.Data) >= 4 {
			return int32(binary.NativeEndian.Uint32(c.Data)), true
		}
	}
	return 0, false
}

// takeDue removes and returns the namespaces whose relist is due, and
// the epoll timeout (ms, -1 for none) until the next one.
func (e *events) takeDue(now time.Time, out []*nsState) ([]*nsState, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	timeout := -1
	for st, due := range e.dirty {
		if !due.After(now) {
			out = append(out, st)
			delete(e.dirty, st)
			continue
		}
		ms := int((due.Sub(now) + time.Millisecond - 1) / time.Millisecond)
		if timeout < 0 || ms < timeout {
			timeout = ms
		}
	}
	return out, timeout
}

// relisted records the outcome of a relist of st, scheduling a retry with
// backoff after a failure; it reports whether the failure is worth a log
// line.
func (e *events) relisted(st *nsState, err error, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil {
		delete(e.failures, st)
		return false
	}
	f := e.failures[st] + 1
	e.failures[st] = f
	e.markLocked(st, now.Add(min(10*time.Millisecond<<min(f, 7), time.Second)))
	return !errors.Is(err, errIncomplete) || f > 3
}

// loop reads every subscription socket and relists the namespaces they
// report changed, until r.quit.
func (r *Resolver) loop() {
	defer r.wg.Done()
	e := r.ev
	evs := make([]unix.EpollEvent, 64)
	var due []*nsState
	for {
		// Checked before every wait: Close's wake-up may have been read
		// together with an earlier one.
		select {
		case <-r.quit:
			return
		default:
		}
		var timeout int
		due, timeout = e.takeDue(time.Now(), due[:0])
		if len(due) > 0 {
			r.relistDue(due)
			continue // relists take time; look at the sockets again
		}
		n, err := unix.EpollWait(e.epfd, evs, timeout)
		if err != nil {
			if !errors.Is(err, unix.EINTR) {
				r.logf("resolve: epoll_wait: %v", err)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		now := time.Now()
		var unknown []int32
		e.mu.Lock()
		for _, ev := range evs[:n] {
			if ev.Fd == wakeToken {
				var b [8]byte
				unix.Read(e.wakefd, b[:])
				continue
			}
			if s := e.subs[ev.Fd]; s != nil {
				unknown = e.readLocked(s, now, unknown)
			}
		}
		fails := e.recvFails
		e.recvFails = 0
		e.mu.Unlock()
		if fails > 0 {
			r.logf("resolve: %d netlink receive errors, relisting", fails)
		}
		if len(unknown) > 0 {
			r.adoptNsids(unknown)
		}
	}
}

// relistDue relists namespaces whose notifications are in.
func (r *Resolver) relistDue(due []*nsState) {
	for _, st := range due {
		r.wmu.Lock()
		var (
			changed bool
			err     error
		)
		if st.stopped {
			r.wmu.Unlock()
			continue
		}
		changed, err = r.relistLocked(st)
		// Under wmu, so that a namespace dropped meanwhile is not
		// scheduled again.
		logIt := r.ev.relisted(st, err, time.Now())
		r.wmu.Unlock()
		if changed {
			r.notify()
		}
		if logIt {
			r.logf("resolve: list %s: %v", st.ns.Label, err)
		}
	}
}

// adoptNsids handles notifications the shared socket carried for nsids no
// namespace is routed by: a namespace with a socket of its own may have
// been given an nsid since it was added. Those that have one now move to
// the shared socket (and are relisted, since notifications may have been
// read from neither socket in between).
func (r *Resolver) adoptNsids(unknown []int32) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	host := r.nss[r.hostInode]
	if host == nil || host.stopped || !r.ev.allNsid {
		return
	}
	want := make(map[int32]bool, len(unknown))
	for _, id := range unknown {
		want[id] = true
	}
	now := time.Now()
	for _, st := range r.nss {
		if len(want) == 0 {
			break
		}
		if st == host || st.stopped || st.sub == nil {
			continue
		}
		id, err := getNsid(host.dump, int(st.nsh))
		if err != nil || id < 0 || !want[id] {
			continue
		}
		delete(want, id)
		r.ev.route(st, id)
		r.ev.mu.Lock()
		r.ev.markLocked(st, now)
		r.ev.mu.Unlock()
	}
}
