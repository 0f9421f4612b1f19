package loader

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
)

// The filter_bloom map (see bpf/hoptrace.bpf.c): one bit per hashed
// selected namespace, address and device, so that the tcx programs say "not
// selected" to most packets without a hash lookup. A set bit only sends the
// packet on to the exact filter maps.
const (
	bloomBits  = 4096
	bloomShift = 20 // 32 - log2(bloomBits)
	bloomWords = bloomBits / 64
)

type bloomKind int

const (
	bloomNetns bloomKind = iota // words [0, bloomWords)
	bloomAddr                   // words [bloomWords, 2*bloomWords)
	bloomDev                    // words [2*bloomWords, 3*bloomWords)
	bloomKinds
)

// bloom keeps what is selected, to rebuild the bits after a removal: each
// kind's exact keys (a namespace inode, an addr_key, a dev_key) and their
// folds. Two keys may fold alike; removing one keeps the other's bit.
type bloom struct {
	keys [bloomKinds]map[any]uint32
}

// bloomIndex mirrors bloom_has.
func bloomIndex(v uint32) uint32 { return (v * 0x9E3779B1) >> bloomShift }

// addrFold mirrors addr_fold: an IPv4 address as the program loads it from
// the packet (little-endian), IPv6 folded into 32 bits.
func addrFold(family uint32, a [16]uint8) uint32 {
	w := func(i int) uint32 { return binary.LittleEndian.Uint32(a[4*i:]) }
	if family == 4 {
		return w(0)
	}
	return w(0) ^ w(1) ^ w(2) ^ w(3)
}

// devFold mirrors dev_fold: a device's namespace and index in 32 bits.
func devFold(netns uint32, ifindex uint32) uint32 { return netns ^ (ifindex * 0x85EBCA77) }

// change records a selection change; false when it changes nothing
// (SelectX is idempotent).
func (b *bloom) change(kind bloomKind, key any, fold uint32, on bool) bool {
	if b.keys[kind] == nil {
		b.keys[kind] = map[any]uint32{}
	}
	_, had := b.keys[kind][key]
	if on == had {
		return false
	}
	if on {
		b.keys[kind][key] = fold
	} else {
		delete(b.keys[kind], key)
	}
	return true
}

// bits is the map's value: every kind's bits, from the folds of its keys.
func (b *bloom) bits() [bloomKinds * bloomWords]uint64 {
	var val [bloomKinds * bloomWords]uint64
	for k := range b.keys {
		for _, fold := range b.keys[k] {
			i := bloomIndex(fold)
			val[k*bloomWords+int(i/64)] |= 1 << (i % 64)
		}
	}
	return val
}

// set records a selection change and writes the bits to the map.
func (b *bloom) set(m *ebpf.Map, kind bloomKind, key any, fold uint32, on bool) error {
	if !b.change(kind, key, fold, on) {
		return nil
	}
	if err := m.Update(uint32(0), b.bits(), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update filter bloom: %w", err)
	}
	return nil
}
