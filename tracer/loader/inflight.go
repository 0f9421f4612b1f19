package loader

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
)

// trackSet is one set of the in-flight table (struct track_set).
type trackSet = bpfobj.HoptraceTrackSet

// trackWays is the table's associativity (TRACK_WAYS), from the binding.
const trackWays = len(trackSet{}.Skb)

// TrackSets is the number of sets of the in-flight table for track entries
// (a power of two, at least one).
func TrackSets(track int) int { return pow2Ceil((track + trackWays - 1) / trackWays) }

// InFlight is the kernel's in-flight table (by_skb in bpf/hoptrace.bpf.c),
// mapped into this process: sets of ways, each way an skb address (0: free)
// and its packet's entry. The programs write a way's entry and then its
// address; this side only reads, and frees a way by compare-and-swap on its
// address, which loses to a program that reused the way meanwhile.
type InFlight struct {
	mem  []byte
	sets int
}

// MapInFlight maps an array map shaped like by_skb (BPF_F_MMAPABLE, one
// struct track_set per element). Close unmaps it.
func MapInFlight(m *ebpf.Map) (*InFlight, error) {
	size := int(unsafe.Sizeof(trackSet{}))
	if m.Type() != ebpf.Array || int(m.ValueSize()) != size || m.Flags()&unix.BPF_F_MMAPABLE == 0 {
		return nil, fmt.Errorf("in-flight table: %v map of %d-byte values (flags %#x), want a mappable array of %d-byte sets",
			m.Type(), m.ValueSize(), m.Flags(), size)
	}
	sets := int(m.MaxEntries())
	page := unix.Getpagesize()
	length := (sets*size + page - 1) / page * page
	mem, err := unix.Mmap(m.FD(), 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the in-flight table: %w", err)
	}
	return &InFlight{mem: mem, sets: sets}, nil
}

// Capacity is the number of entries the table holds.
func (f *InFlight) Capacity() int { return f.sets * trackWays }

func (f *InFlight) set(i int) *trackSet {
	return (*trackSet)(unsafe.Pointer(&f.mem[i*int(unsafe.Sizeof(trackSet{}))]))
}

// Sweep frees every entry whose last hop is more than olderThan ns before
// now (CLOCK_MONOTONIC, the programs' clock), calling expired with each
// one's last hop, and returns how many entries are left.
func (f *InFlight) Sweep(now, olderThan uint64, expired func(last bpfobj.HoptraceHopKey)) (left int) {
	for i := 0; i < f.sets; i++ {
		s := f.set(i)
		for w := 0; w < trackWays; w++ {
			k := atomic.LoadUint64(&s.Skb[w])
			if k == 0 {
				continue
			}
			ts := atomic.LoadUint64(&s.T[w].LastTs)
			if ts >= now || now-ts <= olderThan {
				left++
				continue
			}
			last := s.T[w].Last
			if atomic.CompareAndSwapUint64(&s.Skb[w], k, 0) {
				expired(last)
			} else if atomic.LoadUint64(&s.Skb[w]) != 0 {
				left++ // taken by a new packet meanwhile
			}
		}
	}
	return left
}

// Find returns the entry of an skb address, scanning the whole table (for
// tests and diagnostics: the programs hash the address to its set).
func (f *InFlight) Find(skb uint64) (bpfobj.HoptracePktTrack, bool) {
	for i := 0; i < f.sets; i++ {
		s := f.set(i)
		for w := 0; w < trackWays; w++ {
			if atomic.LoadUint64(&s.Skb[w]) == skb {
				return s.T[w], true
			}
		}
	}
	return bpfobj.HoptracePktTrack{}, false
}

// Close unmaps the table. Safe to call twice.
func (f *InFlight) Close() error {
	if f == nil || f.mem == nil {
		return nil
	}
	err := unix.Munmap(f.mem)
	f.mem = nil
	return err
}
