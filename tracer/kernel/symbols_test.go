package kernel

import (
	"strings"
	"testing"
)

func TestParseSymbols(t *testing.T) {
	const kallsyms = `ffffffff81000000 T _stext
ffffffff81000100 t icmp_rcv
ffffffff81000200 D some_data
ffffffff81000300 W weak_fn
0000000000000000 T hidden
ffffffff81000400 t ip_rcv_finish_core.constprop.0	[kernel]
ffffffffc0000000 t nft_do_chain	[nf_tables]
ffffffff81000050 T between
bogus line
`
	s, err := ParseSymbols(strings.NewReader(kallsyms))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[uint64]string{
		0xffffffff81000000: "_stext",
		0xffffffff81000060: "between", // sorted by address
		0xffffffff81000180: "icmp_rcv",
		0xffffffff81000250: "icmp_rcv", // data symbols are not code
		0xffffffff81000300: "weak_fn",
		0xffffffff81000450: "ip_rcv_finish_core.constprop.0",
		0xffffffffc0000010: "nft_do_chain",
		0xffffffff80000000: "",
	} {
		if got := s.Name(addr); got != want {
			t.Errorf("Name(%#x) = %q, want %q", addr, got, want)
		}
	}
	if r, ok := s.Range("ip_rcv_finish_core"); !ok || r.Start != 0xffffffff81000400 || r.End != 0xffffffffc0000000 {
		t.Errorf("Range(ip_rcv_finish_core) = %+v, %v", r, ok)
	}
	if len(s.addrs) != 6 {
		names := make([]string, len(s.addrs))
		for i := range names {
			names[i] = s.name(i)
		}
		t.Errorf("%d symbols kept, want 6 (text and weak, nonzero addresses): %v", len(s.addrs), names)
	}
}
