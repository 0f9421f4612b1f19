package resolve

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// candidate is one namespace found by a scan.
type candidate struct {
	inode uint32
	path  string
	src   source
	label string
	pid   int
}

// scanResult collects candidates by inode, keeping the best source.
type scanResult struct {
	byInode map[uint32]candidate
	pending []string // files in the watched directories that are no namespace (yet)
}

func (s *scanResult) add(c candidate) {
	if old, ok := s.byInode[c.inode]; ok {
		if old.src < c.src || (old.src == c.src && old.src == srcProc && old.pid <= c.pid) ||
			(old.src == c.src && old.src != srcProc) {
			return
		}
	}
	s.byInode[c.inode] = c
}

// scanDir adds the namespace files of a directory. A file that is no
// namespace yet (created, bind mount still to come) is noted as pending.
func (s *scanResult) scanDir(dir string, src source) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		ino, ok, err := nsfsInode(p)
		if err != nil {
			continue
		}
		if !ok {
			s.pending = append(s.pending, p)
			continue
		}
		label := e.Name()
		if src == srcDocker {
			label = "docker:" + e.Name()
		}
		s.add(candidate{inode: ino, path: p, src: src, label: label})
	}
}

// scanProc adds the namespaces of all processes, each with its lowest pid.
func (s *scanResult) scanProc() {
	d, err := os.Open("/proc")
	if err != nil {
		return
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return
	}
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 0 {
			continue
		}
		p := "/proc/" + n + "/ns/net"
		target, err := os.Readlink(p)
		if err != nil {
			continue
		}
		ino, ok := parseNsLink(target)
		if !ok {
			continue
		}
		if old, ok := s.byInode[ino]; ok && (old.src != srcProc || old.pid <= pid) {
			continue
		}
		s.byInode[ino] = candidate{inode: ino, path: p, src: srcProc, pid: pid}
	}
}

// parseNsLink parses a namespace link target such as "net:[4026531840]".
func parseNsLink(s string) (uint32, bool) {
	rest, ok := strings.CutPrefix(s, "net:[")
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// procPid returns PID for a path /proc/PID/ns/net (also /proc/PID/task/TID/ns/net
// gives TID), else 0.
func procPid(path string) int {
	parts := strings.Split(filepath.Clean(path), "/")
	// "", "proc", PID, "ns", "net"  or  "", "proc", PID, "task", TID, "ns", "net"
	if len(parts) < 5 || parts[0] != "" || parts[1] != "proc" || parts[len(parts)-2] != "ns" || parts[len(parts)-1] != "net" {
		return 0
	}
	idx := 2
	if len(parts) == 7 && parts[3] == "task" {
		idx = 4
	} else if len(parts) != 5 {
		return 0
	}
	pid, err := strconv.Atoi(parts[idx])
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// classifyPath tells which source an explicitly given path corresponds to
// and the label it gets.
func classifyPath(path, namedDir, dockerDir string) (source, string) {
	clean := filepath.Clean(path)
	switch dir := filepath.Dir(clean); dir {
	case namedDir, canonicalRun(namedDir):
		return srcNamed, filepath.Base(clean)
	case dockerDir, canonicalRun(dockerDir):
		return srcDocker, "docker:" + filepath.Base(clean)
	}
	if procPid(clean) > 0 {
		return srcProc, ""
	}
	return srcExplicit, clean
}

// canonicalRun spells a /var/run path as /run (where /var/run usually
// links to), so that both spellings are recognized.
func canonicalRun(dir string) string {
	if rest, ok := strings.CutPrefix(dir, "/var/run/"); ok {
		return "/run/" + rest
	}
	return dir
}

// LabelOf is the label the Resolver gives the namespace with this inode
// that path opens (see Place.Netns), for callers that found it themselves.
func LabelOf(inode uint32, path string) string {
	if names := NetnsNames(inode); len(names) > 0 {
		return names[0]
	}
	switch src, label := classifyPath(path, NamedNetnsDir, DockerNetnsDir); src {
	case srcNamed, srcDocker:
		return label
	case srcProc:
		return procLabel(inode, procPid(path))
	}
	return procLabel(inode, 0)
}

// procLabel labels a namespace known only through a process.
func procLabel(inode uint32, pid int) string {
	l := "netns:" + strconv.FormatUint(uint64(inode), 10)
	if pid <= 0 {
		return l
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if c := strings.TrimSpace(string(comm)); err == nil && c != "" {
		return fmt.Sprintf("%s (pid %d %s)", l, pid, c)
	}
	return fmt.Sprintf("%s (pid %d)", l, pid)
}

// NetnsInode returns the inode of the namespace file at path
// (/var/run/netns/NAME, /proc/PID/ns/net, ...), which identifies the namespace.
func NetnsInode(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint32(st.Ino), nil
}

// nsfsInode returns the inode of path and whether it is a namespace file
// (on nsfs) at all; a plain file in /var/run/netns is one whose bind mount
// has not happened yet (or failed).
func nsfsInode(path string) (uint32, bool, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return 0, false, err
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, false, nil
	}
	ino, err := NetnsInode(path)
	return ino, err == nil, err
}

// checkNetnsFile verifies that path opens a network namespace and returns
// its inode.
func checkNetnsFile(path string) (uint32, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is not a namespace file", path)
	}
	// NS_GET_NSTYPE (_IO(0xb7, 0x3)) says which kind of namespace it is.
	typ, err := unix.IoctlRetInt(fd, 0xb703)
	if err == nil && typ != unix.CLONE_NEWNET {
		return 0, fmt.Errorf("%s is not a network namespace", path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint32(st.Ino), nil
}

// pendingWindow is how long a new file in a namespace directory is looked
// at again for its bind mount to appear.
const pendingWindow = 5 * time.Second

// notePendingLocked records when each not-yet-namespace file was first
// seen and reports whether one is recent enough to look again soon. Files
// already there at the first scan are old: Docker leaves the files of
// stopped sandboxes behind, unmounted. Caller holds r.wmu.
func (r *Resolver) notePendingLocked(pending []string, now time.Time) bool {
	first := r.pendingSeen == nil
	seen := make(map[string]time.Time, len(pending))
	retry := false
	for _, p := range pending {
		t, ok := r.pendingSeen[p]
		if !ok {
			t = now
			if first {
				t = time.Time{}
			}
		}
		seen[p] = t
		if !t.IsZero() && now.Sub(t) < pendingWindow {
			retry = true
		}
	}
	r.pendingSeen = seen
	return retry
}

// rescan looks for namespaces: always the host one and the two
// directories, and /proc too when full. New namespaces are added, ones that
// can no longer be reached are dropped.
func (r *Resolver) rescan(ctx context.Context, full bool) error {
	res := &scanResult{byInode: make(map[uint32]candidate)}
	res.add(candidate{inode: r.hostInode, path: r.hostPath, src: srcHost, label: "host"})
	res.scanDir(r.namedDir, srcNamed)
	res.scanDir(r.dockerDir, srcDocker)
	if full {
		res.scanProc()
	}

	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.closed {
		return errors.New("resolve: closed")
	}
	if r.notePendingLocked(res.pending, time.Now()) {
		r.schedulePendingRetry()
	}
	changed := false
	var errs []error
	// Host first, then by source: veth peers mostly live in the host
	// namespace, and knowing it first saves relisting the others.
	cands := make([]candidate, 0, len(res.byInode))
	for _, c := range res.byInode {
		cands = append(cands, c)
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].src != cands[j].src {
			return cands[i].src < cands[j].src
		}
		return cands[i].inode < cands[j].inode
	})
	for _, c := range cands {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("resolve: scan: %w", err)
		}
		ch, err := r.applyCandidateLocked(c)
		if err != nil {
			if c.src == srcHost {
				errs = append(errs, err)
			} else {
				r.logf("resolve: %v", err)
			}
		}
		changed = changed || ch
	}
	// Drop what the scan did not find and cannot be reached any more.
	for ino, st := range r.nss {
		if _, ok := res.byInode[ino]; ok {
			continue
		}
		switch st.src {
		case srcHost:
			continue
		case srcProc:
			if !full {
				continue // only a full scan looks at processes
			}
		case srcExplicit:
			if ino2, err := checkNetnsFile(st.ns.Path); err == nil && ino2 == ino {
				continue
			}
		}
		r.dropLocked(st)
		changed = true
	}
	if changed {
		r.resolvePendingPeersLocked()
		r.notify()
	}
	if len(errs) > 0 {
		return fmt.Errorf("resolve: %w", errors.Join(errs...))
	}
	return nil
}
