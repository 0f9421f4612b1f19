package loader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/nsenter"
)

// Engine says how the hop hooks (a packet's egress and ingress at each
// device) are observed.
type Engine uint8

const (
	// EngineAuto is tcx where the kernel has it (Linux 6.6+), else
	// tracepoints; see ResolveEngine.
	EngineAuto Engine = iota
	// EngineTracepoint observes the hop hooks with tp_btf programs on
	// net_dev_queue and netif_receive_skb, which run for every packet of
	// every device on the host.
	EngineTracepoint
	// EngineTCX observes them with tcx egress and ingress programs on the
	// devices the caller attaches: traffic elsewhere pays nothing.
	EngineTCX
)

func (e Engine) String() string {
	switch e {
	case EngineAuto:
		return "auto"
	case EngineTracepoint:
		return "tracepoint"
	case EngineTCX:
		return "tcx"
	}
	return fmt.Sprintf("engine%d", uint8(e))
}

// ParseEngine reads an --engine value: auto, tcx or tracepoint.
func ParseEngine(s string) (Engine, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return EngineAuto, nil
	case "tracepoint", "tp":
		return EngineTracepoint, nil
	case "tcx":
		return EngineTCX, nil
	}
	return 0, fmt.Errorf("engine %q: want auto, tcx or tracepoint", s)
}

// ResolveEngine turns EngineAuto into what this kernel offers (tcx when
// tcx links work, else tracepoints) and checks that an engine asked for by
// name can run here.
func ResolveEngine(e Engine) (Engine, error) {
	switch e {
	case EngineTracepoint:
		return e, nil
	case EngineAuto, EngineTCX:
		p := kernel.ProbeTCX()
		auto := AutoEngine(p)
		if e == EngineTCX && auto != EngineTCX {
			return 0, fmt.Errorf("engine tcx is not available here: %s", p.Detail)
		}
		return auto, nil
	}
	return 0, fmt.Errorf("unknown engine %d", e)
}

// AutoEngine is what EngineAuto means given the tcx probe's result: tcx
// where tcx links work, else tracepoints (legacy tc filters would outlive
// a killed hoptrace, so they are never used).
func AutoEngine(tcx kernel.Probe) Engine {
	if tcx.Available {
		return EngineTCX
	}
	return EngineTracepoint
}

// tcxProgram names the tcx program standing in for a hop hook's tracepoint:
// tcx egress fires just before net_dev_queue, tcx ingress just after
// netif_receive_skb, for the same skb.
func tcxProgram(p *bpfobj.HoptraceProgramSpecs, h Hook) *ebpf.ProgramSpec {
	switch h {
	case event.HookNetDevQueue:
		return p.OnTcxEgress
	case event.HookNetifReceiveSkb:
		return p.OnTcxIngress
	}
	return nil
}

// DevKey names a device: ifindexes repeat across namespaces.
type DevKey struct {
	Netns   uint32
	Ifindex int
}

// NetnsRef is a namespace to attach in: its inode, and a path that opens it.
type NetnsRef struct {
	Inode uint32
	Path  string
}

type tcxState struct {
	ingress, egress *ebpf.Program
	devs            map[DevKey]*devLinks
	// moved holds the links of devices that left the namespace they were
	// attached in: a tcx link follows its device into another namespace
	// (a veth Docker creates in the host and moves into a container), so
	// the device stays observed from its first packet there. Closed once
	// the device is gone (the link's ifindex reads 0), or at Close.
	moved []link.Link
}

// devLinks are the tcx links of one device.
type devLinks struct {
	links []link.Link
}

func (d *devLinks) close() error {
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	return errors.Join(errs...)
}

// NetnsDevices are devices of one namespace to carry the tcx programs.
type NetnsDevices struct {
	Netns     NetnsRef
	Ifindexes []int
}

// NetnsAttached is what AttachNetns did in one namespace: the ifindexes
// attached, and the first failure, if any (the devices it stopped are left
// out; a later call tries them again).
type NetnsAttached struct {
	Ifindexes []int
	Err       error
}

// tcxWorkers bounds the tcx links created or closed at once. Each create
// and close commits a new program list for its hook and waits for an RCU
// grace period (about 10 ms on this kind of VM, more on a busy host), and
// the kernel holds the rtnl lock across that wait (tcx_link_attach,
// tcx_link_release): the commits run one at a time whatever the number of
// workers (306 devices took 5.9 s with 4 workers and with 48). A few
// workers overlap the rest (entering namespaces, the placement queries);
// more would only make a cancelled attach wait for more of them.
const tcxWorkers = 4

// AttachDevices attaches the tcx programs to these devices of one
// namespace; see AttachNetns.
func (t *Tracer) AttachDevices(ns NetnsRef, ifindexes []int) ([]int, error) {
	res := t.AttachNetns(context.Background(), []NetnsDevices{{ns, ifindexes}})
	return res[0].Ifindexes, res[0].Err
}

// AttachNetns attaches the tcx programs, first in line and returning
// TCX_NEXT, to these devices of these namespaces, up to tcxWorkers at once,
// each on a locked thread that entered its device's namespace when it is
// not this process's. Devices already carrying them are skipped; devices
// (and namespaces) that are gone by now are left out of the result, whose
// element i lists the ifindexes attached in sets[i]. Once ctx is done no
// further device is attached: the result lists those that were.
func (t *Tracer) AttachNetns(ctx context.Context, sets []NetnsDevices) []NetnsAttached {
	res := make([]NetnsAttached, len(sets))
	if t.tcx == nil {
		for i := range res {
			res[i].Err = errors.New("devices are attached only with the tcx engine")
		}
		return res
	}
	// A job is a share of one namespace's devices: a namespace holding
	// most of them (the host's veths) is spread over many workers.
	type job struct {
		set  int
		todo []int
		done []int
		devs []*devLinks
		err  error
	}
	var todo [][]int
	total := 0
	seen := map[DevKey]bool{}
	for _, s := range sets {
		var idxs []int
		for _, idx := range s.Ifindexes {
			k := DevKey{s.Netns.Inode, idx}
			if _, ok := t.tcx.devs[k]; !ok && !seen[k] {
				seen[k] = true
				idxs = append(idxs, idx)
			}
		}
		todo = append(todo, idxs)
		total += len(idxs)
	}
	share := max(1, (total+tcxWorkers-1)/tcxWorkers)
	var jobs []*job
	for i, idxs := range todo {
		for len(idxs) > 0 {
			n := min(share, len(idxs))
			jobs = append(jobs, &job{set: i, todo: idxs[:n]})
			idxs = idxs[n:]
		}
	}
	inParallel(len(jobs), func(i int) {
		j := jobs[i]
		if ctx.Err() == nil {
			j.done, j.devs, j.err = t.attachIn(ctx, sets[j.set].Netns, j.todo)
		}
	})
	// The device map is written here only, by the caller's goroutine.
	for _, j := range jobs {
		r := &res[j.set]
		for n, idx := range j.done {
			t.tcx.devs[DevKey{sets[j.set].Netns.Inode, idx}] = j.devs[n]
		}
		r.Ifindexes = append(r.Ifindexes, j.done...)
		if r.Err == nil {
			r.Err = j.err
		}
	}
	return res
}

// attachIn attaches the tcx programs to devices of one namespace, entering
// it on a locked thread when it is not this thread's, and returns the
// ifindexes attached with their links.
func (t *Tracer) attachIn(ctx context.Context, ns NetnsRef, todo []int) ([]int, []*devLinks, error) {
	var done []int
	var devs []*devLinks
	entered := false
	attach := func() error {
		entered = true
		if ino, err := threadNetns(); err != nil {
			return err
		} else if ino != ns.Inode {
			return fmt.Errorf("%s is netns %d now, not %d: %w", ns.Path, ino, ns.Inode, errNetnsGone)
		}
		for _, idx := range todo {
			if ctx.Err() != nil {
				return nil // stopped: what is attached stays listed
			}
			d, err := t.attachDevice(idx)
			if errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist) {
				continue // gone since it was listed
			}
			if err != nil {
				return fmt.Errorf("attach tcx programs to ifindex %d in netns %d: %w", idx, ns.Inode, err)
			}
			done = append(done, idx)
			devs = append(devs, d)
		}
		return nil
	}
	var err error
	if cur, cerr := threadNetns(); cerr == nil && cur == ns.Inode {
		err = attach()
	} else {
		err = nsenter.Do(ns.Path, attach)
	}
	if errors.Is(err, errNetnsGone) || (err != nil && !entered && !isNetns(ns)) {
		err = nil // the namespace is gone: nothing to attach to
	}
	return done, devs, err
}

// inParallel calls fn(0) to fn(n-1), at most tcxWorkers at once, each on a
// goroutine of its own (so that a thread nsenter could not bring back ends
// with it), and waits for all of them.
func inParallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	slots := make(chan struct{}, tcxWorkers)
	for i := range n {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			fn(i)
		})
	}
	wg.Wait()
}

// links counts the tcx links held.
func (s *tcxState) links() int {
	n := len(s.moved)
	for _, d := range s.devs {
		n += len(d.links)
	}
	return n
}

// closeLinks closes the tcx links, up to tcxWorkers at once (see
// tcxWorkers), and waits for all of them.
func (s *tcxState) closeLinks() error {
	var links []link.Link
	for k, d := range s.devs {
		links = append(links, d.links...)
		d.links = nil
		delete(s.devs, k)
	}
	links = append(links, s.moved...)
	s.moved = nil
	errs := make([]error, len(links))
	inParallel(len(links), func(i int) { errs[i] = links[i].Close() })
	return errors.Join(errs...)
}

// isNetns reports whether ns.Path still opens the namespace ns.Inode (a
// Docker sandbox's file stays behind, unmounted, when the container stops).
func isNetns(ns NetnsRef) bool {
	var st unix.Stat_t
	var fs unix.Statfs_t
	if unix.Stat(ns.Path, &st) != nil || unix.Statfs(ns.Path, &fs) != nil {
		return false
	}
	return fs.Type == unix.NSFS_MAGIC && uint32(st.Ino) == ns.Inode
}

// errNetnsGone: a namespace's path opens another namespace by now.
var errNetnsGone = errors.New("network namespace gone")

// attachDevice attaches both programs to one device of the current
// namespace, unless it carries them already (a device moved here from a
// namespace where it was attached).
func (t *Tracer) attachDevice(ifindex int) (*devLinks, error) {
	d := &devLinks{}
	for _, a := range []struct {
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{{t.tcx.ingress, ebpf.AttachTCXIngress}, {t.tcx.egress, ebpf.AttachTCXEgress}} {
		if a.prog == nil {
			continue
		}
		l, err := attachPlaced(ifindex, a.attach, a.prog)
		if err != nil {
			d.close()
			return nil, err
		}
		if l != nil {
			d.links = append(d.links, l)
		}
	}
	return d, nil
}

// attachPlaced attaches prog at a tcx hook of a device where placement
// says (nil when it is there already). Other hoptrace processes attach and
// detach on the same devices: a program list that grew between the query's
// two calls (ENOSPC) or an anchor that went away before the attach (ENOENT)
// is a race, tried again.
func attachPlaced(ifindex int, at ebpf.AttachType, prog *ebpf.Program) (link.Link, error) {
	for try := 0; ; try++ {
		has, anchor, err := placement(ifindex, at, prog)
		if err == nil && has {
			return nil, nil
		}
		var l link.Link
		if err == nil {
			l, err = link.AttachTCX(link.TCXOptions{Program: prog, Attach: at, Interface: ifindex, Anchor: anchor})
		}
		if err == nil {
			return l, nil
		}
		if try >= 9 || !(errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOENT)) {
			return nil, err
		}
	}
}

// placement reports whether prog is attached at this tcx hook of a device
// already and, if not, where it goes: ahead of every other program (so that
// it sees each packet before any of them decides its fate, as the
// tracepoints do), but after the tcx programs of other hoptrace processes,
// so that several tracers run in the same order at every hook, tcx and
// tracepoints alike (each measures the others' programs consistently).
func placement(ifindex int, at ebpf.AttachType, prog *ebpf.Program) (bool, link.Anchor, error) {
	info, err := prog.Info()
	if err != nil {
		return false, nil, err
	}
	id, _ := info.ID()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
	if err != nil {
		return false, nil, err
	}
	var anchor link.Anchor = link.Head()
	for _, p := range res.Programs {
		if p.ID == id {
			return true, nil, nil
		}
		if isTCXProgram(p.ID) {
			anchor = link.AfterProgramByID(p.ID)
		}
	}
	return false, anchor, nil
}

// isTCXProgram reports whether a program is one of hoptrace's tcx programs.
func isTCXProgram(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && (info.Name == "on_tcx_ingress" || info.Name == "on_tcx_egress")
}

// ForgetDevice is for a device no longer seen at k: deleted (its links are
// closed) or moved to another namespace (its links stay, so it keeps being
// observed there; AttachDevices then finds the programs on it and adds none).
func (t *Tracer) ForgetDevice(k DevKey) error {
	if t.tcx == nil {
		return nil
	}
	d, ok := t.tcx.devs[k]
	if !ok {
		return nil
	}
	delete(t.tcx.devs, k)
	var errs []error
	for _, l := range d.links {
		if attachedIfindex(l) != 0 {
			t.tcx.moved = append(t.tcx.moved, l)
			continue
		}
		errs = append(errs, l.Close())
	}
	d.links = nil
	return errors.Join(errs...)
}

// PruneMoved closes the links of moved devices that are gone by now.
func (t *Tracer) PruneMoved() error {
	if t.tcx == nil {
		return nil
	}
	var errs []error
	kept := t.tcx.moved[:0]
	for _, l := range t.tcx.moved {
		if attachedIfindex(l) != 0 {
			kept = append(kept, l)
			continue
		}
		errs = append(errs, l.Close())
	}
	clear(t.tcx.moved[len(kept):])
	t.tcx.moved = kept
	return errors.Join(errs...)
}

// attachedIfindex is the ifindex a tcx link is attached to, 0 once its
// device is gone.
func attachedIfindex(l link.Link) uint32 {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	if x := info.TCX(); x != nil {
		return x.Ifindex
	}
	return 0
}

// AttachedDevices lists the devices carrying the tcx programs.
func (t *Tracer) AttachedDevices() []DevKey {
	if t.tcx == nil {
		return nil
	}
	out := make([]DevKey, 0, len(t.tcx.devs))
	for k := range t.tcx.devs {
		out = append(out, k)
	}
	return out
}

// Attached reports whether a device carries the tcx programs.
func (t *Tracer) Attached(k DevKey) bool {
	if t.tcx == nil {
		return false
	}
	_, ok := t.tcx.devs[k]
	return ok
}

// threadNetns is the inode of the calling thread's network namespace.
func threadNetns() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("stat own network namespace: %w", err)
	}
	return uint32(st.Ino), nil
}
