// Package doctor checks whether hoptrace can run on this machine and says,
// in plain words, what the kernel offers and what hoptrace will use.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/nftrace"
)

// Groups of checks, in report order.
const (
	GroupKernel      = "kernel"
	GroupTracepoints = "tracepoints"
	GroupPrograms    = "programs"
	GroupFunctions   = "function_hooks"
	GroupTC          = "traffic_control"
	GroupFilesystems = "filesystems"
	GroupAccess      = "access"
	GroupRules       = "rule_naming"
)

// Check is one line of the report.
type Check struct {
	Name      string `json:"name"`
	Group     string `json:"group"`
	Available bool   `json:"available"`
	// Unknown: the check could not run (no privileges); Available is false.
	Unknown  bool   `json:"unknown,omitempty"`
	Required bool   `json:"required"`
	Detail   string `json:"detail"`
}

// Plan says what hoptrace will use on this machine.
type Plan struct {
	// Tracepoints hoptrace attaches tp_btf programs to.
	Tracepoints []string `json:"tracepoints"`
	// Programs are the programs the loader chose for this kernel, one per
	// hook, as the load check loaded them (empty when it could not run).
	Programs []loader.Program `json:"programs"`
	// ConsumeSkbProgram is the consume_skb program variant the loader
	// picks: "on_consume_skb" (with the location argument, 6.3+) or
	// "on_consume_skb_noloc".
	ConsumeSkbProgram string `json:"consume_skb_program"`
	ConsumeSkb        string `json:"consume_skb"`
	// Engine is how trace and latency observe hops by default (--engine
	// auto): "tcx" or "tracepoint"; EngineDetail says it in words.
	Engine        string `json:"engine"`
	EngineDetail  string `json:"engine_detail"`
	FunctionHooks string `json:"function_hooks"`
	DropReasons   string `json:"drop_reasons"`
	Containers    string `json:"containers"`
	// RuleNaming says whether trace --rules and verify name the netfilter
	// rule that dropped a packet.
	RuleNaming string `json:"rule_naming"`

	// KfreeSkbProgram is the kfree_skb variant: "on_kfree_skb" (with the
	// drop reason, 5.17+) or "on_kfree_skb_noreason".
	KfreeSkbProgram string `json:"kfree_skb_program"`
	// Lacks lists what events miss on this kernel, from the variants chosen.
	Lacks []string `json:"lacks,omitempty"`
}

// Report is the doctor's result.
type Report struct {
	Release string  `json:"kernel_release"`
	Version string  `json:"kernel_version"`
	Checks  []Check `json:"checks"`
	Plan    Plan    `json:"will_use"`
	CanRun  bool    `json:"can_run"`
	// Missing names the required checks that failed.
	Missing []string `json:"missing,omitempty"`
}

// Tracepoints returns the tracepoints of hoptrace's tp_btf programs, as the
// compiled BPF object declares them.
func Tracepoints() ([]string, error) {
	spec, err := bpfobj.LoadHoptrace()
	if err != nil {
		return nil, fmt.Errorf("read hoptrace's BPF object: %w", err)
	}
	seen := map[string]bool{}
	var tps []string
	for _, p := range spec.Programs {
		if p.Type == ebpf.Tracing && p.AttachType == ebpf.AttachTraceRawTp && !seen[p.AttachTo] {
			seen[p.AttachTo] = true
			tps = append(tps, p.AttachTo)
		}
	}
	rank := map[string]int{}
	for i, tp := range hookOrder {
		rank[tp] = i + 1
	}
	sort.Slice(tps, func(i, j int) bool {
		ri, rj := rank[tps[i]], rank[tps[j]]
		if ri == 0 || rj == 0 {
			if ri != rj {
				return ri != 0
			}
			return tps[i] < tps[j]
		}
		return ri < rj
	})
	return tps, nil
}

// hookOrder lists the tracepoints in the order a packet meets them.
var hookOrder = []string{
	"net_dev_queue", "net_dev_start_xmit", "net_dev_xmit", "netif_rx", "napi_gro_receive_entry",
	"netif_receive_skb", "kfree_skb", "consume_skb", "skb_copy_datagram_iovec",
}

// Run probes the kernel and this process. It leaves nothing loaded.
func Run() *Report { return run(loader.Check) }

// run is Run with the load check given (tests make it fail).
func run(check func(loader.Mode) ([]loader.Program, error)) *Report {
	r := &Report{}
	rel, v, err := kernel.Release()
	r.Release, r.Version = rel, v.String()
	if err != nil {
		r.Version = "unknown"
	}
	priv := kernel.ProbePrivileges()
	privOK := priv.CanTrace()

	add := func(group string, required bool, p kernel.Probe) Check {
		c := Check{Name: p.Name, Group: group, Available: p.Available, Required: required, Detail: p.Detail}
		if !p.Available && p.Denied {
			c.Unknown = true
		}
		r.Checks = append(r.Checks, c)
		return c
	}

	add(GroupKernel, true, kernel.ProbeBTF())
	add(GroupKernel, true, kernel.ProbeRingBuf())
	drops := add(GroupKernel, false, kernel.ProbeDropReasons())
	add(GroupKernel, false, kernel.ProbeKfreeSkbReason())
	loc := kernel.ProbeConsumeSkbLocation()
	add(GroupKernel, false, loc)

	tps, err := Tracepoints()
	if err != nil {
		r.Checks = append(r.Checks, Check{Name: "bpf_object", Group: GroupTracepoints, Required: true, Detail: err.Error()})
	}
	for _, tp := range tps {
		p := kernel.ProbeTracepoint(tp)
		p.Name = tp
		if tp == "consume_skb" && p.Available {
			p.Detail += "; " + loc.Detail
		}
		add(GroupTracepoints, true, p)
	}
	r.Plan.Tracepoints = tps

	// The verdict rests on loading the very programs hoptrace loads, in
	// each mode, and unloading them again.
	for _, m := range []struct {
		name string
		mode loader.Mode
		what string
	}{
		{"programs_events", loader.ModeEvents, "trace and verify"},
		{"programs_latency", loader.ModeLatency, "latency"},
	} {
		progs, err := check(m.mode)
		p := kernel.Probe{Name: m.name, Available: err == nil}
		switch {
		case err != nil && !privOK:
			p.Detail = "not loaded without privileges: " + strings.SplitN(err.Error(), "\n", 2)[0]
			p.Denied = true
		case err != nil:
			p.Detail = "hoptrace's programs for " + m.what + " do not load: " + strings.SplitN(err.Error(), "\n", 2)[0]
		default:
			names := make([]string, len(progs))
			for i, pr := range progs {
				names[i] = pr.Name
			}
			p.Detail = fmt.Sprintf("the %d programs for %s load, attach and unload: %s", len(progs), m.what, strings.Join(names, ", "))
			if r.Plan.Programs == nil {
				r.Plan.Programs = progs
			}
		}
		add(GroupPrograms, true, p)
	}

	kp := add(GroupFunctions, false, kernel.ProbeKprobes())
	fe := add(GroupFunctions, false, kernel.ProbeFentry())
	tcx := add(GroupTC, false, kernel.ProbeTCX())
	cls := kernel.ProbeClsact()
	cls.Name = "legacy_tc"
	add(GroupTC, false, cls)
	add(GroupFilesystems, false, kernel.ProbeBPFFS())
	add(GroupFilesystems, false, kernel.ProbeTracefs())
	add(GroupAccess, true, priv.Probe())
	docker := add(GroupAccess, false, kernel.ProbeDockerSocket())
	r.Plan.RuleNaming = r.ruleNaming(privOK)

	// What hoptrace will use.
	eng := loader.AutoEngine(kernel.Probe{Name: tcx.Name, Available: tcx.Available, Detail: tcx.Detail})
	r.Plan.Engine = eng.String()
	if eng == loader.EngineTCX {
		r.Plan.EngineDetail = "tcx: tcx ingress and egress programs on every device of every namespace observe the hops " +
			"(net_dev_queue and netif_receive_skb stay detached, so traffic pays only on the devices it crosses); " +
			"the end tracepoints, and --detail's and latency's, stay; --engine tracepoint uses the tracepoints instead"
	} else {
		r.Plan.EngineDetail = "tracepoint: tp_btf programs on net_dev_queue and netif_receive_skb observe the hops of every packet on the host " +
			"(no tcx here: " + tcx.Detail + ")"
	}
	// The program variants: those the load check loaded, or, when it
	// could not run, the ones the loader would choose.
	progs := r.Plan.Programs
	if progs == nil {
		if spec, err := kernel.KernelBTF(); err == nil {
			progs, _ = loader.ChoosePrograms(spec, loader.AllHooks)
		}
	}
	for _, p := range progs {
		switch p.Hook {
		case event.HookConsumeSkb:
			r.Plan.ConsumeSkbProgram = p.Name
		case event.HookKfreeSkb:
			r.Plan.KfreeSkbProgram = p.Name
		}
		if p.Lacks != "" {
			r.Plan.Lacks = append(r.Plan.Lacks, p.Tracepoint+" events: "+p.Lacks)
		}
	}
	if r.Plan.ConsumeSkbProgram == "on_consume_skb" {
		r.Plan.ConsumeSkb = "the consume_skb program with the location argument (kernel 6.3+), so frees are attributed to a function"
	} else {
		r.Plan.ConsumeSkb = "the consume_skb program without the location argument (kernel before 6.3): consumed packets carry no caller"
	}
	r.Plan.FunctionHooks = "none; hoptrace needs no kprobes and no fentry (on this kernel kprobes are " +
		availableWord(kp) + ", fentry is " + availableWord(fe) + ")"
	switch {
	case r.Plan.KfreeSkbProgram == "on_kfree_skb_noreason":
		r.Plan.DropReasons = "none on this kernel (kfree_skb passes no reason before Linux 5.17): " +
			"drops are reported with the dropping function, from kfree_skb's location and /proc/kallsyms"
	case drops.Available:
		r.Plan.DropReasons = "named from this kernel's BTF (" + drops.Detail + ")"
	default:
		r.Plan.DropReasons = "numbers only: " + drops.Detail
	}
	if docker.Available {
		r.Plan.Containers = "Docker, through " + kernel.DockerSocket() + " (--container and container names)"
	} else {
		r.Plan.Containers = "none, " + docker.Detail + "; trace with --netns and --interface"
	}

	r.CanRun = true
	for _, c := range r.Checks {
		if !c.Required || c.Available {
			continue
		}
		if c.Unknown && !privOK {
			continue // the privileges check names the cause
		}
		r.CanRun = false
		if c.Group == GroupTracepoints {
			r.Missing = append(r.Missing, "tracepoint "+c.Name)
		} else {
			r.Missing = append(r.Missing, c.Name)
		}
	}
	return r
}

// ruleNaming adds the rule-naming checks (nf_tables, owned tables, the
// iptables backend, the nft command) and says what hoptrace will do.
func (r *Report) ruleNaming(priv bool) string {
	add := func(name string, ok, unknown bool, detail string) {
		r.Checks = append(r.Checks, Check{Name: name, Group: GroupRules, Available: ok, Unknown: unknown, Detail: detail})
	}
	if !priv {
		for _, n := range []string{"nf_tables", "nft_table_owner"} {
			add(n, false, true, "not checked (needs root)")
		}
		return "not checked (needs root)"
	}
	st := nftrace.Check()
	add("nf_tables", st.NFTables, false, st.NFTablesDetail)
	add("nft_table_owner", st.Owner, false, st.OwnerDetail)
	switch {
	case st.Backend == "nf_tables" && len(st.LegacyTables) == 0:
		add("iptables_backend", true, false, "iptables-nft: iptables rules are nf_tables rules and can be named")
	case st.Backend == "legacy" || len(st.LegacyTables) > 0:
		detail := "iptables-legacy"
		if len(st.LegacyTables) > 0 {
			detail += " tables loaded (" + strings.Join(st.LegacyTables, ", ") + ")"
		}
		add("iptables_backend", false, false, detail+": drops in them keep only their drop reason")
	case st.Backend == "":
		add("iptables_backend", false, false, "iptables is not installed")
	default:
		add("iptables_backend", false, false, st.Backend)
	}
	if st.NftBinary {
		add("nft_command", true, false, "rule texts as `nft -a list chain` prints them")
	} else {
		add("nft_command", false, false, "nft is not installed: rules are named by table, chain and handle, without their text")
	}
	if ok, why := st.Available(); !ok {
		return "off: " + why + "; drops keep their kernel reason"
	}
	return "a temporary owned nftables table marks the selected packets for nf_tables tracing (trace --rules; verify by default)"
}

func availableWord(c Check) string {
	switch {
	case c.Available:
		return "available"
	case c.Unknown:
		return "not checked (no privileges)"
	}
	return "unavailable"
}

// Problem is the one-line reason hoptrace cannot run, or "".
func (r *Report) Problem() string {
	if r.CanRun {
		return ""
	}
	return "cannot run here: missing " + strings.Join(r.Missing, ", ")
}

// WriteJSON writes the report as one indented JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

var groupTitles = []struct{ group, title string }{
	{GroupKernel, "Kernel (BTF and the ring buffer are required)"},
	{GroupTracepoints, "Tracepoints hoptrace attaches to (tp_btf, all required)"},
	{GroupPrograms, "hoptrace's own programs, loaded and unloaded (required)"},
	{GroupFunctions, "Function hooks (hoptrace does not use them)"},
	{GroupTC, "Traffic control attachment (tcx: the default engine where available; legacy tc is never used)"},
	{GroupFilesystems, "Filesystems (not required)"},
	{GroupAccess, "Access"},
	{GroupRules, "Naming the netfilter rule of a drop (trace --rules, verify; not required)"},
}

var checkTitles = map[string]string{
	"btf":                  "BTF",
	"ringbuf":              "ring buffer",
	"drop_reasons":         "drop reasons",
	"consume_skb_location": "consume_skb location",
	"kfree_skb_reason":     "kfree_skb reason",
	"programs_events":      "trace programs",
	"programs_latency":     "latency programs",
	"kprobe":               "kprobes",
	"fentry":               "fentry",
	"tcx":                  "tcx",
	"legacy_tc":            "legacy tc (clsact)",
	"bpffs":                "bpffs",
	"tracefs":              "tracefs",
	"privileges":           "privileges",
	"docker":               "Docker socket",
	"nf_tables":            "nf_tables",
	"nft_table_owner":      "owned tables (5.12+)",
	"iptables_backend":     "iptables backend",
	"nft_command":          "nft command",
}

// WriteText writes the report in plain words.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Kernel %s (Linux %s)\n", r.Release, r.Version)
	for _, g := range groupTitles {
		fmt.Fprintf(&b, "\n%s:\n", g.title)
		for _, c := range r.Checks {
			if c.Group != g.group {
				continue
			}
			mark := "yes"
			switch {
			case c.Unknown:
				mark = "???"
			case !c.Available && c.Required:
				mark = "NO "
			case !c.Available:
				mark = "no "
			}
			title := checkTitles[c.Name]
			if title == "" {
				title = c.Name
			}
			fmt.Fprintf(&b, "  %s  %-24s %s\n", mark, title, c.Detail)
		}
	}
	fmt.Fprintf(&b, "\nhoptrace will use:\n")
	fmt.Fprintf(&b, "  - engine %s\n", r.Plan.EngineDetail)
	fmt.Fprintf(&b, "  - tp_btf programs on %d tracepoints: %s\n", len(r.Plan.Tracepoints), strings.Join(r.Plan.Tracepoints, ", "))
	fmt.Fprintf(&b, "  - %s\n", r.Plan.ConsumeSkb)
	fmt.Fprintf(&b, "  - function hooks: %s\n", r.Plan.FunctionHooks)
	fmt.Fprintf(&b, "  - drop reasons: %s\n", r.Plan.DropReasons)
	fmt.Fprintf(&b, "  - containers: %s\n", r.Plan.Containers)
	fmt.Fprintf(&b, "  - rule naming: %s\n", r.Plan.RuleNaming)
	if len(r.Plan.Lacks) > 0 {
		fmt.Fprintf(&b, "\nWhat this kernel does not give:\n")
		for _, l := range r.Plan.Lacks {
			fmt.Fprintf(&b, "  - %s\n", l)
		}
	}
	if r.CanRun {
		fmt.Fprintf(&b, "\nhoptrace can run here.\n")
	} else {
		fmt.Fprintf(&b, "\nhoptrace %s.\n", r.Problem())
	}
	_, err := io.WriteString(w, b.String())
	return err
}
