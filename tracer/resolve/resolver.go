package resolve

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Where namespaces are looked for.
const (
	NamedNetnsDir  = "/var/run/netns"        // "ip netns add" bind mounts
	DockerNetnsDir = "/var/run/docker/netns" // Docker sandbox bind mounts
	hostNetnsPath  = "/proc/1/ns/net"
)

// refreshInterval is the minimum time between two full rescans.
const refreshInterval = 200 * time.Millisecond

// Options configures a Resolver.
type Options struct {
	// Annotator gives owner (container) names for namespaces; may be nil.
	Annotator Annotator
	// NetnsDir and DockerNetnsDir override where named and Docker
	// namespaces are looked for (for example when the host's /run is
	// mounted elsewhere); empty means NamedNetnsDir and DockerNetnsDir.
	NetnsDir       string
	DockerNetnsDir string
	// Logf, when set, receives diagnostics about namespaces that could not
	// be watched and netlink subscriptions that failed; may be nil.
	Logf func(format string, args ...any)
}

// source says how a namespace was found; lower wins when one namespace is
// reachable several ways.
type source int

const (
	srcHost source = iota
	srcNamed
	srcDocker
	srcExplicit
	srcProc
)

// nsState is everything the resolver keeps about one namespace.
//
// Fields under "published" are replaced (never mutated in place) while
// holding r.mu for writing and read under r.mu.RLock. The rest belongs to
// the writer side and is only touched while holding r.wmu.
type nsState struct {
	// published
	ns    Namespace // Owner left empty; filled from the Annotator on read
	links map[int]*Link
	names map[string]int

	// writer side
	src        source
	pid        int // the process whose /proc entry was used (srcProc)
	nsh        netns.NsHandle
	dump       *nl.SocketHandle // dumps and RTM_GETNSID
	stopped    bool
	nsids      map[int]uint32 // nsid (as this namespace numbers peers) -> inode
	unresolved bool           // some veth peer's namespace is not known yet
	pidWatch   *os.File       // pidfd of pid, for srcProc namespaces

	// owned by the event loop's state, under r.ev.mu
	sub      *nlSub // a subscription socket of its own; nil when the shared one carries it
	hostNsid int32  // the nsid the host namespace gives it, -1 for none (or not routed by it)
}

// Resolver maps namespace inodes and ifindexes to names. It is safe for
// concurrent use.
type Resolver struct {
	opts      Options
	hostInode uint32
	hostPath  string
	namedDir  string
	dockerDir string

	mu  sync.RWMutex
	nss map[uint32]*nsState

	wmu         sync.Mutex // serializes every change of the namespace set and of links
	closed      bool
	pendingSeen map[string]time.Time // under wmu; see notePendingLocked
	added       uint64               // under wmu: namespaces added so far (Namespace.Seq)

	changes   chan struct{}
	refreshC  chan struct{}
	dirScanC  chan struct{}
	pendingC  chan struct{}
	quit      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	inotify *os.File
	ev      *events
}

// New scans every network namespace it can find (the host namespace, the
// named ones under /var/run/netns, Docker's under /var/run/docker/netns and
// those of running processes), lists their links and addresses, and keeps
// the picture current until Close. ctx bounds the initial scan only.
func New(ctx context.Context, opts Options) (*Resolver, error) {
	r := &Resolver{
		opts:      opts,
		nss:       make(map[uint32]*nsState),
		changes:   make(chan struct{}, 1),
		refreshC:  make(chan struct{}, 1),
		dirScanC:  make(chan struct{}, 1),
		pendingC:  make(chan struct{}, 1),
		quit:      make(chan struct{}),
		namedDir:  NamedNetnsDir,
		dockerDir: DockerNetnsDir,
	}
	if opts.NetnsDir != "" {
		r.namedDir = filepath.Clean(opts.NetnsDir)
	}
	if opts.DockerNetnsDir != "" {
		r.dockerDir = filepath.Clean(opts.DockerNetnsDir)
	}
	ino, path, err := findHostNetns()
	if err != nil {
		return nil, fmt.Errorf("resolve: host network namespace: %w", err)
	}
	r.hostPath = path
	r.hostInode = ino
	if r.ev, err = newEvents(); err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	r.wg.Add(1)
	go r.loop()
	if err := r.openShared(); err != nil {
		r.Close()
		return nil, err
	}

	// Watch the directories before scanning them so no namespace created
	// in between is missed.
	if err := r.startInotify(); err != nil {
		r.logf("resolve: inotify unavailable, named namespaces are found by Refresh only: %v", err)
	}
	if err := r.rescan(ctx, true); err != nil {
		r.Close()
		return nil, err
	}
	r.mu.RLock()
	_, ok := r.nss[r.hostInode]
	r.mu.RUnlock()
	if !ok {
		r.Close()
		return nil, fmt.Errorf("resolve: cannot watch the host network namespace %d (%s)", r.hostInode, r.hostPath)
	}
	r.wg.Add(1)
	go r.manage()
	return r, nil
}

// openShared opens the subscription socket in the host namespace that also
// carries the notifications of every namespace the host has an nsid for.
// Without NETLINK_LISTEN_ALL_NSID (before Linux 4.2) it carries the host's
// alone and every other namespace gets a socket of its own.
func (r *Resolver) openShared() error {
	nsh, err := netns.GetFromPath(r.hostPath)
	if err != nil {
		return fmt.Errorf("resolve: open host netns %s: %w", r.hostPath, err)
	}
	defer nsh.Close()
	s, allErr, err := r.ev.subscribe(nsh, nil, true, sharedRcvBuf)
	if err != nil {
		return fmt.Errorf("resolve: subscribe in the host namespace: %w", err)
	}
	if allErr != nil {
		r.logf("resolve: NETLINK_LISTEN_ALL_NSID: %v; one netlink subscription per namespace", allErr)
	}
	r.ev.mu.Lock()
	r.ev.shared, r.ev.allNsid = s, allErr == nil
	r.ev.mu.Unlock()
	return nil
}

// findHostNetns returns the namespace of PID 1 or, where PID 1 cannot be
// inspected (a supervisor hiding it), the one of kthreadd (kernel threads
// live in the initial namespace), or else the calling thread's.
func findHostNetns() (uint32, string, error) {
	if ino, ok := readableNetns(hostNetnsPath); ok {
		return ino, hostNetnsPath, nil
	}
	if comm, err := os.ReadFile("/proc/2/comm"); err == nil && strings.TrimSpace(string(comm)) == "kthreadd" {
		if ino, ok := readableNetns("/proc/2/ns/net"); ok {
			return ino, "/proc/2/ns/net", nil
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	path := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	ino, err := checkNetnsFile(path)
	return ino, path, err
}

func readableNetns(path string) (uint32, bool) {
	target, err := os.Readlink(path)
	if err != nil {
		return 0, false
	}
	ino, ok := parseNsLink(target)
	if !ok {
		return 0, false
	}
	ino2, err := checkNetnsFile(path)
	return ino, err == nil && ino2 == ino
}

func (r *Resolver) logf(format string, args ...any) {
	if r.opts.Logf != nil {
		r.opts.Logf(format, args...)
	}
}

// notify signals a change on the coalescing Changes channel.
func (r *Resolver) notify() {
	select {
	case r.changes <- struct{}{}:
	default:
	}
}

// Changes delivers a (coalesced) notification after any link, address or
// namespace change.
func (r *Resolver) Changes() <-chan struct{} { return r.changes }

// HostInode returns the inode of the host (initial) network namespace.
func (r *Resolver) HostInode() uint32 { return r.hostInode }

// Link returns the link with ifindex in the namespace with inode netns.
func (r *Resolver) Link(netns uint32, ifindex int) (Link, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if st := r.nss[netns]; st != nil {
		if l := st.links[ifindex]; l != nil {
			return *l, true
		}
	}
	return Link{}, false
}

// LinkByName returns the link called name in the namespace with inode netns.
func (r *Resolver) LinkByName(netns uint32, name string) (Link, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if st := r.nss[netns]; st != nil {
		if idx, ok := st.names[name]; ok {
			if l := st.links[idx]; l != nil {
				return *l, true
			}
		}
	}
	return Link{}, false
}

// Links returns the links of a namespace ordered by ifindex.
func (r *Resolver) Links(netns uint32) []Link {
	r.mu.RLock()
	st := r.nss[netns]
	var out []Link
	if st != nil {
		out = make([]Link, 0, len(st.links))
		for _, l := range st.links {
			out = append(out, *l)
		}
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

func (r *Resolver) owner(inode uint32) string {
	if a := r.opts.Annotator; a != nil {
		if o, ok := a.NetnsOwner(inode); ok {
			return o
		}
	}
	return ""
}

// Namespace returns what is known about the namespace with this inode, its
// Owner filled in from the Annotator.
func (r *Resolver) Namespace(inode uint32) (Namespace, bool) {
	r.mu.RLock()
	st := r.nss[inode]
	var ns Namespace
	if st != nil {
		ns = st.ns
	}
	r.mu.RUnlock()
	if st == nil {
		return Namespace{}, false
	}
	ns.Owner = r.owner(inode)
	return ns, true
}

// Namespaces returns every known namespace, host first, then by label.
func (r *Resolver) Namespaces() []Namespace {
	r.mu.RLock()
	out := make([]Namespace, 0, len(r.nss))
	for _, st := range r.nss {
		out = append(out, st.ns)
	}
	r.mu.RUnlock()
	for i := range out {
		out[i].Owner = r.owner(out[i].Inode)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.Inode == r.hostInode) != (b.Inode == r.hostInode) {
			return a.Inode == r.hostInode
		}
		if a.Label != b.Label {
			return a.Label < b.Label
		}
		return a.Inode < b.Inode
	})
	return out
}

// Label names a namespace for people: its owner (container) if the
// Annotator knows one, else its label, else "netns:<inode>".
func (r *Resolver) Label(inode uint32) string {
	if o := r.owner(inode); o != "" {
		return o
	}
	r.mu.RLock()
	var l string
	if st := r.nss[inode]; st != nil {
		l = st.ns.Label
	}
	r.mu.RUnlock()
	if l != "" {
		return l
	}
	return "netns:" + strconv.FormatUint(uint64(inode), 10)
}

// Refresh asks for a rescan of all namespaces (including /proc), for
// example after meeting an unknown namespace inode. It never blocks; rescans
// run at most every 200ms, requests in between are coalesced.
func (r *Resolver) Refresh() {
	select {
	case r.refreshC <- struct{}{}:
	default:
	}
}

// schedulePendingRetry asks for another directory scan soon: a file in a
// namespace directory is not bind-mounted yet, and mounts raise no inotify
// event.
func (r *Resolver) schedulePendingRetry() {
	select {
	case r.pendingC <- struct{}{}:
	default:
	}
}

func (r *Resolver) requestDirScan() {
	select {
	case r.dirScanC <- struct{}{}:
	default:
	}
}

// OpenNetns resolves a --netns argument: a name under /var/run/netns, a
// Docker sandbox id under /var/run/docker/netns, or a path to a namespace
// file such as /proc/PID/ns/net. The namespace is added to the watched set.
func (r *Resolver) OpenNetns(spec string) (Namespace, error) {
	if spec == "" {
		return Namespace{}, errors.New("netns: empty name")
	}
	var (
		path  string
		src   source
		label string
	)
	if strings.ContainsRune(spec, '/') {
		path = spec
		if _, err := os.Stat(path); err != nil {
			return Namespace{}, fmt.Errorf("netns %q: %w", spec, unwrapPathErr(err))
		}
		src, label = classifyPath(path, r.namedDir, r.dockerDir)
	} else {
		for _, c := range []struct {
			dir string
			src source
		}{{r.namedDir, srcNamed}, {r.dockerDir, srcDocker}} {
			p := filepath.Join(c.dir, spec)
			if _, err := os.Stat(p); err == nil {
				path, src = p, c.src
				break
			}
		}
		if path == "" {
			return Namespace{}, fmt.Errorf("netns %q: no such namespace (looked in %s, %s)", spec, r.namedDir, r.dockerDir)
		}
		label = spec
		if src == srcDocker {
			label = "docker:" + spec
		}
	}
	ino, err := checkNetnsFile(path)
	if err != nil {
		return Namespace{}, fmt.Errorf("netns %q: %w", spec, err)
	}
	if src == srcProc {
		label = procLabel(ino, procPid(path))
	}

	r.wmu.Lock()
	if r.closed {
		r.wmu.Unlock()
		return Namespace{}, errors.New("netns: resolver closed")
	}
	cand := candidate{inode: ino, path: path, src: src, label: label, pid: procPid(path)}
	changed, err := r.applyCandidateLocked(cand)
	if err == nil && changed {
		r.resolvePendingPeersLocked()
	}
	r.wmu.Unlock()
	if err != nil {
		return Namespace{}, fmt.Errorf("netns %q: %w", spec, err)
	}
	if changed {
		r.notify()
	}
	ns, ok := r.Namespace(ino)
	if !ok {
		return Namespace{}, fmt.Errorf("netns %q: namespace vanished", spec)
	}
	return ns, nil
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		if errors.Is(pe.Err, os.ErrNotExist) {
			return errors.New("no such file")
		}
		return pe.Err
	}
	return err
}

// Close stops watching, closes every netlink socket and namespace handle and
// waits for all goroutines the resolver started.
func (r *Resolver) Close() error {
	r.closeOnce.Do(func() {
		close(r.quit)
		if r.ev != nil {
			r.ev.wake()
		}
		r.wmu.Lock()
		r.closed = true
		for _, st := range r.nss {
			r.dropLocked(st)
		}
		r.wmu.Unlock()
		if r.inotify != nil {
			r.inotify.Close()
		}
		r.wg.Wait()
		if r.ev != nil {
			r.ev.close()
		}
	})
	return nil
}

// manage runs rescans: rate-limited full ones on Refresh, directory-only
// ones on inotify events, and retries with backoff while a new file in a
// namespace directory is not a namespace yet.
func (r *Resolver) manage() {
	defer r.wg.Done()
	var (
		last     time.Time
		retry    *time.Timer
		retryC   <-chan time.Time
		attempts int
	)
	stopRetry := func() {
		if retry != nil {
			retry.Stop()
			retry, retryC = nil, nil
		}
	}
	defer stopRetry()
	for {
		select {
		case <-r.quit:
			return
		case <-r.dirScanC:
			attempts = 0
			r.rescan(context.Background(), false)
		case <-r.pendingC:
			if retryC == nil && attempts < maxPendingRetries {
				retry = time.NewTimer(min(10*time.Millisecond<<attempts, time.Second))
				retryC = retry.C
				attempts++
			}
		case <-retryC:
			retry, retryC = nil, nil
			r.rescan(context.Background(), false)
		case <-r.refreshC:
			if wait := time.Until(last.Add(refreshInterval)); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-r.quit:
					t.Stop()
					return
				case <-t.C:
				}
			}
			r.rescan(context.Background(), true)
			last = time.Now()
		}
	}
}

// maxPendingRetries bounds the retries for a directory entry that never
// becomes a namespace (about 10s in all).
const maxPendingRetries = 14
