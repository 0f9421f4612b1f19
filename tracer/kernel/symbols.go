package kernel

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Symbols maps kernel text addresses to function names (from /proc/kallsyms).
// It names where a packet was freed or dropped ("icmp_rcv", "nft_do_chain").
//
// The table holds no pointer per symbol: the names lie end to end in one
// string, in address order, and ends says where each one ends. A tracer
// keeps the table (over 100k symbols) for its whole run, and the garbage
// collector would otherwise follow a string header per symbol on every
// cycle.
type Symbols struct {
	addrs []uint64
	ends  []uint32 // names[i] is all[ends[i-1]:ends[i]] (from 0 for i = 0)
	all   string
}

// name is the i-th symbol's name.
func (s *Symbols) name(i int) string {
	start := uint32(0)
	if i > 0 {
		start = s.ends[i-1]
	}
	return s.all[start:s.ends[i]]
}

// LoadSymbols reads a kallsyms file. When addresses are hidden
// (kptr_restrict), it returns an empty table: names are then unavailable.
func LoadSymbols(path string) (*Symbols, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	return ParseSymbols(f)
}

// ParseSymbols reads kallsyms-formatted text: "ffffffff81000000 T name [module]".
func ParseSymbols(r io.Reader) (*Symbols, error) {
	type sym struct {
		addr     uint64
		off, end int
	}
	var syms []sym
	var block []byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 3 || len(f[1]) != 1 {
			continue
		}
		switch f[1][0] {
		case 't', 'T', 'w', 'W':
		default:
			continue
		}
		addr, err := strconv.ParseUint(string(f[0]), 16, 64)
		if err != nil || addr == 0 {
			continue
		}
		syms = append(syms, sym{addr, len(block), len(block) + len(f[2])})
		block = append(block, f[2]...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	s := &Symbols{addrs: make([]uint64, len(syms)), ends: make([]uint32, len(syms))}
	sorted := make([]byte, 0, len(block))
	for i, y := range syms {
		sorted = append(sorted, block[y.off:y.end]...)
		s.addrs[i], s.ends[i] = y.addr, uint32(len(sorted))
	}
	s.all = string(sorted)
	return s, nil
}

// Range is a function's code: [Start, End).
type Range struct{ Start, End uint64 }

// Range returns where the named function's code lies: from its address to
// the next symbol's.
func (s *Symbols) Range(name string) (Range, bool) {
	if s == nil {
		return Range{}, false
	}
	for i := range s.addrs {
		if s.name(i) == name && i+1 < len(s.addrs) {
			return Range{Start: s.addrs[i], End: s.addrs[i+1]}, true
		}
	}
	// A static function the compiler specialised is named with a suffix
	// (ip_rcv_finish_core.constprop.0 on Debian's kernels); its cold part
	// (.cold) is not the function.
	for i := range s.addrs {
		if base, suffix, ok := strings.Cut(s.name(i), "."); ok && base == name && suffix != "cold" && i+1 < len(s.addrs) {
			return Range{Start: s.addrs[i], End: s.addrs[i+1]}, true
		}
	}
	return Range{}, false
}

// BaseName is a function's name without the suffix the compiler adds to
// specialised copies (ip_rcv_finish_core.constprop.0 → ip_rcv_finish_core).
func BaseName(name string) string {
	base, _, _ := strings.Cut(name, ".")
	return base
}

// Name returns the function containing addr, or "" when unknown.
func (s *Symbols) Name(addr uint64) string {
	if s == nil || addr == 0 || len(s.addrs) == 0 {
		return ""
	}
	i := sort.Search(len(s.addrs), func(i int) bool { return s.addrs[i] > addr }) - 1
	if i < 0 {
		return ""
	}
	return s.name(i)
}
