package resolve

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	dirEvents      = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	ancestorEvents = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ONLYDIR
)

// dirWatcher keeps inotify watches on the namespace directories. A
// directory that does not exist yet (no "ip netns add" so far, Docker not
// started) is waited for by watching its nearest existing ancestor.
// Only the inotify goroutine touches it.
type dirWatcher struct {
	fd      int
	targets []string
	watched map[string]int32 // target dir -> wd
	wds     map[int32]string // wd -> watched path (target or ancestor)
}

func newDirWatcher(fd int, targets []string) *dirWatcher {
	return &dirWatcher{fd: fd, targets: targets, watched: map[string]int32{}, wds: map[int32]string{}}
}

// ensure adds missing watches; it reports whether a target directory got
// watched just now (its content must then be scanned).
func (w *dirWatcher) ensure() bool {
	added := false
	for _, t := range w.targets {
		// A few rounds: a directory below the ancestor just watched may
		// have been created before that watch existed (mkdir -p), and its
		// creation event is then lost; look again instead.
		for round := 0; round < 8; round++ {
			if _, ok := w.watched[t]; ok {
				break
			}
			wd, err := unix.InotifyAddWatch(w.fd, t, dirEvents)
			if err == nil {
				w.watched[t] = int32(wd)
				w.wds[int32(wd)] = t
				added = true
				break
			}
			// Watch the closest ancestor that exists for the directory to appear.
			var watchedDir string
			for dir := filepath.Dir(t); ; dir = filepath.Dir(dir) {
				if wd, err := unix.InotifyAddWatch(w.fd, dir, ancestorEvents); err == nil {
					w.wds[int32(wd)] = dir
					watchedDir = dir
					break
				}
				if dir == "/" {
					break
				}
			}
			if watchedDir == "" || !childOfExists(watchedDir, t) {
				break
			}
		}
	}
	return added
}

// event handles one inotify event and reports whether the namespace
// directories need a scan.
func (w *dirWatcher) event(wd int32, mask uint32) bool {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.ensure()
		return true
	}
	path, ok := w.wds[wd]
	if !ok {
		return false
	}
	if mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
		if mask&unix.IN_IGNORED != 0 {
			delete(w.wds, wd)
		} else {
			unix.InotifyRmWatch(w.fd, uint32(wd))
		}
		for t, twd := range w.watched {
			if twd == wd {
				delete(w.watched, t)
			}
		}
		w.ensure()
		return true
	}
	for _, t := range w.targets {
		if w.watched[t] == wd && path == t {
			return true // something came or went in a namespace directory
		}
	}
	// An ancestor changed: perhaps a namespace directory appeared.
	return w.ensure()
}

// startInotify watches the namespace directories and starts the goroutine
// that turns events into directory scans.
func (r *Resolver) startInotify() error {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("inotify_init1: %w", err)
	}
	w := newDirWatcher(fd, []string{r.namedDir, r.dockerDir})
	w.ensure()
	f := os.NewFile(uintptr(fd), "inotify")
	r.inotify = f
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := f.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrClosed) {
					r.logf("resolve: inotify: %v", err)
				}
				return
			}
			scan := false
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if w.event(ev.Wd, ev.Mask) {
					scan = true
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
			if scan {
				r.requestDirScan()
			}
		}
	}()
	return nil
}

// childOfExists reports whether the next directory from ancestor towards
// target exists already.
func childOfExists(ancestor, target string) bool {
	rel, err := filepath.Rel(ancestor, target)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return false
	}
	first := strings.SplitN(rel, string(filepath.Separator), 2)[0]
	_, err = os.Stat(filepath.Join(ancestor, first))
	return err == nil
}
