package path

import (
	"bytes"
	"net/netip"
	"strconv"
	"unsafe"

	"github.com/hoptrace/hoptrace/tracer/event"
)

// scratch is a Describer's working memory, kept from one path to the next
// so that describing a packet at full rate allocates little: the sets and
// maps of one path become reused slices, and the texts paths repeat (skb
// addresses, addresses, notes, ends) are made once and shared.
type scratch struct {
	buf      []byte
	texts    map[string]string
	skbs     map[uint64]string
	addrs    map[netip.Addr]string
	hopSkbs  []uint64
	lastMeta []skbMeta
	branches []branch
	ends     []*EndEvent
	lastSkb  uint64 // the skb address rendered last, and its text
	skbText  string
	places   map[uint64]*place // see Describer.CacheNames
	lookup   place             // the place looked up last, when not cached
}

// skbMeta is the headers last seen on one skb.
type skbMeta struct {
	skb  uint64
	meta *event.Meta
}

// branch is one skb of a path and the index of its last hop.
type branch struct {
	skb  string
	last int
}

// maxShared bounds each table of shared texts; a full table is emptied and
// filled again (skb addresses come from slabs and repeat, as do a trace's
// addresses and places).
const maxShared = 4096

func newScratch() *scratch {
	return &scratch{
		texts:  make(map[string]string),
		skbs:   make(map[uint64]string),
		addrs:  make(map[netip.Addr]string),
		places: make(map[uint64]*place),
	}
}

// text returns b as a string, the one made for the same bytes before if any.
func (s *scratch) text(b []byte) string {
	if t, ok := s.texts[string(b)]; ok {
		return t
	}
	if len(s.texts) >= maxShared {
		clear(s.texts)
	}
	t := string(b)
	s.texts[t] = t
	return t
}

// join is the concatenation of parts, shared like text.
func (s *scratch) join(parts ...string) string {
	b := s.buf[:0]
	for _, p := range parts {
		b = append(b, p...)
	}
	s.buf = b
	return s.text(b)
}

// skb is SkbString(addr), shared.
func (s *scratch) skb(addr uint64) string {
	if addr == s.lastSkb && s.skbText != "" {
		return s.skbText // a packet's events are mostly of one skb
	}
	if t, ok := s.skbs[addr]; ok {
		s.lastSkb, s.skbText = addr, t
		return t
	}
	if len(s.skbs) >= maxShared {
		clear(s.skbs)
	}
	b := append(s.buf[:0], "0x"...)
	b = strconv.AppendUint(b, addr, 16)
	s.buf = b
	t := string(b)
	s.skbs[addr] = t
	s.lastSkb, s.skbText = addr, t
	return t
}

// addr is a.String(), shared.
func (s *scratch) addr(a netip.Addr) string {
	if t, ok := s.addrs[a]; ok {
		return t
	}
	if len(s.addrs) >= maxShared {
		clear(s.addrs)
	}
	t := a.String()
	s.addrs[a] = t
	return t
}

// ifname is event.Ifname(e), shared.
func (s *scratch) ifname(e *event.Event) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&e.Ifname[0])), len(e.Ifname))
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if len(b) == 0 {
		return ""
	}
	return s.text(b)
}
