// Package kernel answers questions about the running kernel that shape how
// hoptrace loads: tracepoint signatures and drop reason names from BTF,
// symbol names from kallsyms, and feature probes.
package kernel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// TracepointArgs returns the number of arguments the tracepoint passes to a
// tp_btf program, read from the kernel's btf_trace_<name> typedef.
func TracepointArgs(spec *btf.Spec, name string) (int, error) {
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+name, &td); err != nil {
		return 0, fmt.Errorf("tracepoint %s not in kernel BTF: %w", name, err)
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return 0, fmt.Errorf("btf_trace_%s: unexpected type %s", name, td.Type)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return 0, fmt.Errorf("btf_trace_%s: unexpected target %s", name, ptr.Target)
	}
	// The first parameter is the tracepoint's private data, not an argument.
	if len(proto.Params) == 0 {
		return 0, nil
	}
	return len(proto.Params) - 1, nil
}

// DropReasons names the values of enum skb_drop_reason, without the
// SKB_DROP_REASON_ prefix, as this kernel defines them (they differ across
// versions, so they are never hard-coded).
type DropReasons map[uint32]string

// KernelDropReasons reads this kernel's drop reason names; nil when its
// BTF cannot be read or has none (numbers are shown then).
func KernelDropReasons() DropReasons {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil
	}
	d, err := LoadDropReasons(spec)
	if err != nil {
		return nil
	}
	return d
}

// LoadDropReasons reads enum skb_drop_reason from kernel BTF.
func LoadDropReasons(spec *btf.Spec) (DropReasons, error) {
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		if errors.Is(err, btf.ErrNotFound) {
			return DropReasons{}, nil // old kernel: reasons unknown, not an error
		}
		return nil, fmt.Errorf("read enum skb_drop_reason: %w", err)
	}
	reasons := make(DropReasons, len(e.Values))
	for _, v := range e.Values {
		reasons[uint32(v.Value)] = strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
	}
	return reasons, nil
}

// Available reports whether this kernel has drop reasons (5.17+).
func (d DropReasons) Available() bool { return len(d) > 0 }

// Has reports whether this kernel has the named reason ("OTHERHOST").
func (d DropReasons) Has(name string) bool {
	for _, n := range d {
		if n == name {
			return true
		}
	}
	return false
}

// Name returns the reason's name, "REASON_<n>" when this kernel has no name
// for it, or "" when this kernel has no drop reasons at all.
func (d DropReasons) Name(v uint32) string {
	if !d.Available() {
		return ""
	}
	if n, ok := d[v]; ok {
		return n
	}
	return fmt.Sprintf("REASON_%d", v)
}
