package loader

import (
	"fmt"

	"github.com/cilium/ebpf/btf"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// A variant is one of a hook's programs in the BPF object. It needs the
// tracepoint to pass at least Args arguments (a tp_btf program that reads
// an argument the tracepoint does not have is refused by the verifier).
type variant struct {
	Program string
	Args    int
	// Lacks says what events miss when this variant is the one loaded; ""
	// for the full variant.
	Lacks string
}

// hookPrograms lists, per hook, its tracepoint and its program variants,
// the fullest first. A hook whose tracepoint changed its arguments across
// kernels has one variant per signature; the loader takes the first the
// running kernel's tracepoint (its BTF prototype) can feed.
var hookPrograms = map[Hook]struct {
	Tracepoint string
	Variants   []variant
}{
	event.HookNetDevQueue:     {"net_dev_queue", []variant{{"on_net_dev_queue", 1, ""}}},
	event.HookNetDevStartXmit: {"net_dev_start_xmit", []variant{{"on_net_dev_start_xmit", 2, ""}}},
	event.HookNetDevXmit:      {"net_dev_xmit", []variant{{"on_net_dev_xmit", 3, ""}}},
	event.HookNetifRx:         {"netif_rx", []variant{{"on_netif_rx", 1, ""}}},
	event.HookGROReceive:      {"napi_gro_receive_entry", []variant{{"on_napi_gro_receive_entry", 1, ""}}},
	event.HookNetifReceiveSkb: {"netif_receive_skb", []variant{{"on_netif_receive_skb", 1, ""}}},
	// kfree_skb(skb, location, reason) since 5.17, (skb, location) before.
	event.HookKfreeSkb: {"kfree_skb", []variant{
		{"on_kfree_skb", 3, ""},
		{"on_kfree_skb_noreason", 2, "no drop reason (kfree_skb passes none before Linux 5.17; the dropping function is named)"},
	}},
	// consume_skb(skb, location) since 6.3, (skb) before.
	event.HookConsumeSkb: {"consume_skb", []variant{
		{"on_consume_skb", 2, ""},
		{"on_consume_skb_noloc", 1, "no caller (consume_skb passes no location before Linux 6.3)"},
	}},
	event.HookCopyDatagram: {"skb_copy_datagram_iovec", []variant{{"on_skb_copy_datagram_iovec", 2, ""}}},
}

// AllHooks is every hook the BPF object has a program for, in hook order.
var AllHooks = []Hook{
	event.HookNetDevQueue, event.HookNetDevStartXmit, event.HookNetDevXmit, event.HookNetifRx,
	event.HookGROReceive, event.HookNetifReceiveSkb, event.HookKfreeSkb, event.HookConsumeSkb,
	event.HookCopyDatagram,
}

// Program is the program chosen for one hook on this kernel.
type Program struct {
	Hook       Hook   `json:"hook"`
	Tracepoint string `json:"tracepoint"`
	Name       string `json:"program"`
	// Args is the number of arguments the tracepoint passes on this kernel
	// (from its BTF prototype); -1 when its prototype could not be read.
	Args int `json:"tracepoint_args"`
	// Lacks says what this variant's events miss ("" for the full one).
	Lacks string `json:"lacks,omitempty"`
}

// ChoosePrograms picks each hook's program for the kernel whose BTF is kspec.
// A tracepoint whose prototype cannot be read gets its last (leanest)
// variant; loading it then says what is wrong.
func ChoosePrograms(kspec *btf.Spec, hooks []Hook) ([]Program, error) {
	progs := make([]Program, 0, len(hooks))
	for _, h := range hooks {
		hp, ok := hookPrograms[h]
		if !ok {
			return nil, fmt.Errorf("unknown hook %d", h)
		}
		n, err := kernel.TracepointArgs(kspec, hp.Tracepoint)
		if err != nil {
			n = -1
		}
		v := hp.Variants[len(hp.Variants)-1]
		for _, c := range hp.Variants {
			if n >= c.Args {
				v = c
				break
			}
		}
		progs = append(progs, Program{Hook: h, Tracepoint: hp.Tracepoint, Name: v.Program, Args: n, Lacks: v.Lacks})
	}
	return progs, nil
}

// Check loads every program hoptrace would load in mode on this kernel (all
// hooks, under the engine auto picks, every filter kind compiled in, so
// every code path is verified),
// attaches them with a selection that matches no packet, then detaches and
// unloads everything. It returns the programs chosen; its error is Load's.
func Check(mode Mode) ([]Program, error) {
	engine, err := ResolveEngine(EngineAuto)
	if err != nil {
		return nil, err
	}
	t, err := Load(Options{
		Mode:        mode,
		Engine:      engine, // tcx programs are loaded (and verified) too where auto picks them
		Hooks:       AllHooks,
		FilterKinds: FilterNetns | FilterDev | FilterAddr | FilterPort, // empty filter maps: nothing is tracked
		RingBytes:   16 << 10,
	})
	if err != nil {
		return nil, err
	}
	progs := t.Programs()
	if err := t.Close(); err != nil {
		return progs, fmt.Errorf("unload the check programs: %w", err)
	}
	return progs, nil
}
