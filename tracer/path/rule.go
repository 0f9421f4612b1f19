package path

import "fmt"

// Rule names the netfilter rule, or the chain policy, that gave a packet
// its verdict (a NETFILTER_DROP), as nf_tables tracing reported it.
type Rule struct {
	Family string `json:"family"` // ip, ip6, inet, bridge, ...
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	// Handle is the rule's handle (`nft -a list chain` prints it); 0 for a policy.
	Handle uint64 `json:"handle,omitempty"`
	// Text is the rule as `nft list` prints it (counters left out), when known.
	Text string `json:"text,omitempty"`
	// Iptables is the rule as iptables-save prints it, for tables iptables-nft manages.
	Iptables string `json:"iptables,omitempty"`
	Verdict  string `json:"verdict"` // drop, accept, ...
	// Policy is true when the chain's policy, not a rule, decided.
	Policy bool `json:"policy,omitempty"`
}

// String renders the rule for a path's end:
// "dropped by ip filter DOCKER-USER handle 12: ip saddr 172.17.0.2 drop (iptables: -A DOCKER-USER -s 172.17.0.2/32 -j DROP)"
// or "policy drop of ip filter FORWARD".
func (r *Rule) String() string {
	where := r.Family + " " + r.Table + " " + r.Chain
	if r.Policy {
		return fmt.Sprintf("policy %s of %s", r.Verdict, where)
	}
	verb := r.Verdict + " by"
	if r.Verdict == "drop" {
		verb = "dropped by"
	}
	s := fmt.Sprintf("%s %s handle %d", verb, where, r.Handle)
	if r.Text != "" {
		s += ": " + r.Text
	}
	if r.Iptables != "" {
		s += " (iptables: " + r.Iptables + ")"
	}
	return s
}

// SetRule names the rule that dropped the packet: on the path and at the
// end of its End text.
func (p *Path) SetRule(r *Rule) {
	p.Rule = r
	p.End += "; " + r.String()
}
