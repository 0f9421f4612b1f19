// Package verify proves a container's network path instead of describing
// it. It derives the path a packet should take from the configuration
// (Docker, netlink, routes), checks every step of it, then sends probe
// packets from inside the container's network namespace, traces them with
// hoptrace's own tracer and compares the hops observed with the hops
// expected. The outcome is PASS, or FAIL at one hop with the reason: a
// failed configuration check, the kernel's drop reason, or a packet that
// vanished with no drop event. Whether the target accepted the probe (a
// listening socket, an echo reply) is reported apart from the path: a UDP
// probe to a closed port travels the whole path and is then refused, which
// is a PASS of the path with delivery outcome NO_SOCKET.
package verify

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/resolve"
	"github.com/hoptrace/hoptrace/tracer/runtime"
	"github.com/hoptrace/hoptrace/tracer/trace"
)

// Verdicts.
const (
	Pass = "PASS"
	Fail = "FAIL"
	Skip = "SKIP" // --all: a container without a bridge path (host, none, container:X)
)

// Failure stages.
const (
	StageConfig = "configuration" // a configuration check failed; no probe was sent
	StagePath   = "path"          // the probes did not travel the expected path
)

// Target kinds.
const (
	TargetGateway   = "gateway"
	TargetContainer = "container"
)

// ErrTarget is wrapped by errors about the --to target: unknown, not
// running, on no network the source shares, not on the same bridge.
var ErrTarget = errors.New("bad target")

// ErrNoPath is wrapped when the source container has no bridge path to
// verify (--network host, none, container:X, no bridge endpoint).
var ErrNoPath = errors.New("no bridge path to verify")

// Options select what to verify and how.
type Options struct {
	// To is "gateway" (or empty), an IPv4 address, or a container (name,
	// ID or ID prefix) on the same bridge.
	To string
	// Proto is "icmp" (default), "udp" or "tcp".
	Proto string
	// Port is the destination port of UDP and TCP probes; 0 picks the
	// default (33434 for UDP, 80 for TCP).
	Port int
	// Count is the number of probes; 0 means 3.
	Count int
	// Timeout bounds the probe stage once the tracer is attached (0: 5s).
	Timeout time.Duration
	// Interval between probes (0: 100ms).
	Interval time.Duration
	// Select, when set, limits All to the containers it accepts.
	Select func(runtime.Container) bool
	// NoRules turns off naming the netfilter rule that drops a probe (by
	// default a temporary nftables table marks the probe packets for
	// nf_tables tracing; see package nftrace).
	NoRules bool
}

// Default ports.
const (
	DefaultUDPPort = 33434
	DefaultTCPPort = 80
)

func (o *Options) normalize() error {
	o.Proto = strings.ToLower(o.Proto)
	switch o.Proto {
	case "":
		o.Proto = "icmp"
	case "icmp", "udp", "tcp":
	default:
		return fmt.Errorf("unknown protocol %q (want icmp, udp or tcp)", o.Proto)
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("port %d out of range", o.Port)
	}
	if o.Proto == "icmp" && o.Port != 0 {
		return fmt.Errorf("--port applies to udp and tcp probes, not icmp")
	}
	if o.Port == 0 {
		switch o.Proto {
		case "udp":
			o.Port = DefaultUDPPort
		case "tcp":
			o.Port = DefaultTCPPort
		}
	}
	if o.Count < 0 {
		return fmt.Errorf("count must not be negative")
	}
	if o.Count == 0 {
		o.Count = 3
	}
	if o.Timeout < 0 {
		return fmt.Errorf("timeout must not be negative")
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Interval <= 0 {
		o.Interval = 100 * time.Millisecond
	}
	return nil
}

// Validate checks options without running anything (for usage errors).
func (o Options) Validate() error { return o.normalize() }

// Report is the result of one verification; it is also the JSON output.
type Report struct {
	Container string `json:"container"`
	ID        string `json:"id"`
	Network   string `json:"network,omitempty"`
	Bridge    string `json:"bridge,omitempty"`
	Ifname    string `json:"ifname,omitempty"` // the container's interface on that network
	Source    string `json:"source,omitempty"` // its IPv4 address
	Target    Target `json:"target"`
	Proto     string `json:"proto"`
	Port      int    `json:"port,omitempty"`

	Checks   []Check `json:"checks"`
	Expected []Hop   `json:"expected"`
	Probes   []Probe `json:"probes"`
	// ProbesSkipped says why no probe was sent, when none was.
	ProbesSkipped string `json:"probes_skipped,omitempty"`

	Verdict  string    `json:"verdict"` // PASS, FAIL or SKIP
	Failure  *Failure  `json:"failure,omitempty"`
	Delivery *Delivery `json:"delivery,omitempty"`
	// Summary is the verdict line: "PASS" or "FAIL at <hop>: <reason>".
	Summary string `json:"summary"`
	// Note explains a SKIP (--all).
	Note string `json:"note,omitempty"`
}

// Target is what the probes are sent to.
type Target struct {
	Kind      string `json:"kind"` // gateway or container
	Name      string `json:"name,omitempty"`
	ID        string `json:"id,omitempty"`
	IP        string `json:"ip"`
	Ifname    string `json:"ifname,omitempty"`
	HostVeth  string `json:"host_veth,omitempty"`
	NetnsPath string `json:"-"`
	Netns     uint32 `json:"netns_inode,omitempty"`
}

// Check is one step of the expected path checked against the kernel.
type Check struct {
	Hop    string `json:"hop"` // the point on the path it concerns: "web eth0", "host veth1a2b", "bridge port veth1a2b → docker0"
	Fact   string `json:"fact"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	// Consequence marks a failure explained by another failed check
	// (the container's eth0 loses carrier when its host veth is down).
	Consequence bool `json:"consequence,omitempty"`
}

// Hop is one expected point on the path.
type Hop struct {
	Netns      string          `json:"netns"` // container name or "host"
	NetnsInode uint32          `json:"netns_inode"`
	Ifname     string          `json:"ifname"`
	Kind       resolve.Kind    `json:"kind"`
	Direction  event.Direction `json:"direction"`
	Note       string          `json:"note,omitempty"`
}

// Label names the hop for a verdict line: "web eth0", "host veth1a2b",
// "host docker0 (forward)".
func (h Hop) Label() string {
	s := h.Netns + " " + h.Ifname
	switch {
	case h.Kind == resolve.KindBridge && h.Direction == event.Forward:
		s += " (forward)"
	case h.Kind == resolve.KindBridge && h.Direction == event.Local:
		s += " (local delivery)"
	}
	return s
}

// Probe is one probe packet and what became of it.
type Probe struct {
	Seq     int    `json:"seq"`
	Summary string `json:"summary"`
	Sport   int    `json:"sport,omitempty"`
	IcmpID  int    `json:"icmp_id,omitempty"`
	// SendError is set when the probe could not be sent.
	SendError string `json:"send_error,omitempty"`
	// Path is the traced path of the probe packet; nil when none was seen.
	Path *path.Path `json:"path,omitempty"`
	// Hops compares the observed hops with the expected ones.
	Hops []ObservedHop `json:"hops"`
	// Matched is how many expected hops the probe was seen at, in order.
	Matched int      `json:"matched"`
	PathOK  bool     `json:"path_ok"`
	Failure *Failure `json:"failure,omitempty"`
	// Outcome is what the target did with the probe (see Delivery).
	Outcome string `json:"outcome"`
	// Response is what came back to the probing socket.
	Response string `json:"response,omitempty"`
	RTTNs    int64  `json:"rtt_ns,omitempty"`
	// Reply is the traced path of the answer (echo reply, SYN-ACK, RST), when seen.
	Reply *path.Path `json:"reply,omitempty"`
}

// ObservedHop is one hop of a probe's path, against the expected hop.
type ObservedHop struct {
	path.Hop
	// Expected is the index of the expected hop it matches, -1 when none.
	Expected int  `json:"expected"`
	OK       bool `json:"ok"`
}

// Failure says where and why a verification failed.
type Failure struct {
	Stage  string `json:"stage"` // configuration or path
	Hop    string `json:"hop"`
	Reason string `json:"reason"`
	// DropReason and DropLocation are the kernel's, when a drop was seen.
	DropReason   string `json:"drop_reason,omitempty"`
	DropLocation string `json:"drop_location,omitempty"`
	Probe        int    `json:"probe,omitempty"`
	// Rule is the netfilter rule or chain policy that dropped the probe.
	Rule *path.Rule `json:"rule,omitempty"`
}

// Delivery outcomes: what the target did with probes that travelled the path.
const (
	OutcomeAccepted   = "accepted"    // a socket took it / echo reply / connection accepted
	OutcomeNoSocket   = "no_socket"   // nothing listens: kernel NO_SOCKET; ICMP port unreachable or RST back
	OutcomeRefused    = "refused"     // the probing socket got ECONNREFUSED without a traced NO_SOCKET drop
	OutcomeDropped    = "dropped"     // dropped at the target after the path (e.g. an INPUT rule)
	OutcomeNoResponse = "no_response" // the path was travelled, nothing came back
	OutcomeNotReached = "not_reached" // the probe did not travel the path
)

// Delivery is the outcome at the target, apart from the path.
type Delivery struct {
	Outcome string `json:"outcome"`
	// Reason is the kernel's drop reason at the target (NO_SOCKET, ...).
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail"`
	// Probes counts probes per outcome.
	Probes map[string]int `json:"probes"`
	// Rule is the netfilter rule or chain policy that dropped the probe at the target.
	Rule *path.Rule `json:"rule,omitempty"`
}

// Verifier runs verifications against one container runtime.
type Verifier struct {
	Runtime runtime.Runtime
	// Names resolves namespaces and links for the tracer (a
	// *resolve.Resolver, best with the runtime's annotator so that hops
	// are named after containers).
	Names trace.Resolver
	// Trace, if set, replaces trace.Run (tests).
	Trace func(context.Context, trace.Config, trace.Resolver) (trace.Result, error)
	// Warn, if set, is told once when rule naming cannot work here.
	Warn func(string)
}

// Verify verifies the path from the container ref to opts.To. Errors are
// for what prevents a verdict: an unknown or stopped container (wrapping
// runtime errors), a bad target (ErrTarget), a container without a bridge
// path (ErrNoPath), a tracer that cannot load. A FAIL is a Report, not an
// error.
func (v *Verifier) Verify(ctx context.Context, ref string, opts Options) (*Report, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	c, err := v.Runtime.Lookup(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !c.Running {
		return nil, runtime.NotRunning(c)
	}
	plan, err := v.plan(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	if plan.report.Verdict == Fail {
		return plan.report, nil
	}
	sess, err := v.startSession(ctx, plan.netns(), !opts.NoRules)
	if err != nil {
		return nil, err
	}
	defer sess.close()
	v.probe(ctx, sess, plan, opts)
	return plan.report, nil
}

// All verifies every running container against its gateway, sharing one
// trace. Containers without a bridge path get a SKIP report.
func (v *Verifier) All(ctx context.Context, opts Options) ([]*Report, error) {
	opts.To = TargetGateway
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	cs, err := v.Runtime.List(ctx)
	if err != nil {
		return nil, err
	}
	var reports []*Report
	var plans []*plan
	var inodes []uint32
	for _, c := range cs {
		if !c.Running || (opts.Select != nil && !opts.Select(c)) {
			continue
		}
		p, err := v.plan(ctx, c, opts)
		if err != nil {
			r := &Report{Container: c.Name, ID: c.ID, Proto: opts.Proto, Verdict: Skip, Checks: []Check{}, Expected: []Hop{}, Probes: []Probe{}}
			if errors.Is(err, ErrNoPath) {
				r.Note = err.Error()
				r.Summary = "SKIP: " + r.Note
			} else {
				r.Verdict = Fail
				r.Failure = &Failure{Stage: StageConfig, Hop: c.Name, Reason: err.Error()}
				r.Summary = "FAIL at " + c.Name + ": " + err.Error()
			}
			reports = append(reports, r)
			continue
		}
		reports = append(reports, p.report)
		if p.report.Verdict != Fail {
			plans = append(plans, p)
			inodes = append(inodes, p.netns()...)
		}
	}
	if len(plans) == 0 {
		return reports, nil
	}
	sess, err := v.startSession(ctx, inodes, !opts.NoRules)
	if err != nil {
		return nil, err
	}
	defer sess.close()
	for _, p := range plans {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		v.probe(ctx, sess, p, opts)
	}
	return reports, nil
}

// Failed reports whether any report is a FAIL.
func Failed(rs ...*Report) bool {
	for _, r := range rs {
		if r.Verdict == Fail {
			return true
		}
	}
	return false
}

func (r *Report) fail(f Failure) {
	r.Verdict = Fail
	r.Failure = &f
	r.Summary = fmt.Sprintf("FAIL at %s: %s", f.Hop, f.Reason)
}

func hostIP(cidr string) string { ip, _, _ := strings.Cut(cidr, "/"); return ip }

func parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	return a, err == nil && a.Is4()
}
