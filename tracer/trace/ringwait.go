package trace

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// ringWaiter waits for records in the ring buffer in the Go runtime's
// poller: the reading goroutine parks until the kernel's wake-up or the
// deadline, and no thread sits in a blocking epoll_wait. (A thread blocked
// in a system call keeps the runtime's monitor waking every 20 µs to hand
// its processor on, which cost as much CPU as a fifth of the tracing.)
type ringWaiter struct {
	f  *os.File
	rc syscall.RawConn
	rd *ringbuf.Reader
}

// newRingWaiter watches the ring buffer map m, read through rd. It fails
// where the runtime cannot poll the map's descriptor; the reader's own
// blocking wait is then the way.
func newRingWaiter(m *ebpf.Map, rd *ringbuf.Reader) (*ringWaiter, error) {
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the ring buffer's descriptor: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ring buffer descriptor: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ring buffer")
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("poll the ring buffer: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("poll the ring buffer: %w", err)
	}
	return &ringWaiter{f: f, rc: rc, rd: rd}, nil
}

// wait returns once the ring buffer holds data, or os.ErrDeadlineExceeded
// at the deadline.
func (w *ringWaiter) wait(deadline time.Time) error {
	if w.rd.AvailableBytes() > 0 {
		return nil
	}
	if err := w.f.SetReadDeadline(deadline); err != nil {
		return err
	}
	err := w.rc.Read(func(uintptr) bool { return w.rd.AvailableBytes() > 0 })
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return os.ErrDeadlineExceeded
	}
	return err
}

func (w *ringWaiter) Close() error { return w.f.Close() }
