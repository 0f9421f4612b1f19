package topology

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Formats accepted by Write.
var Formats = []string{"tree", "dot", "mermaid", "json"}

// Write renders the topology in one of Formats.
func (t *Topology) Write(w io.Writer, format string) error {
	switch format {
	case "", "tree":
		return t.WriteTree(w)
	case "dot":
		return t.WriteDOT(w)
	case "mermaid":
		return t.WriteMermaid(w)
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(t)
	}
	return fmt.Errorf("unknown format %q (want %s)", format, strings.Join(Formats, ", "))
}

func updown(up bool) string {
	if up {
		return "up"
	}
	return "DOWN"
}

func (b Bridge) summary() string {
	s := fmt.Sprintf("%s  bridge, %s", b.Name, updown(b.Up))
	if len(b.Addrs) > 0 {
		s += ", " + strings.Join(b.Addrs, " ")
	}
	if b.Network != "" {
		s += fmt.Sprintf("  [network %s]", b.Network)
	}
	return s
}

func (p Port) summary() string {
	s := fmt.Sprintf("%s (ifindex %d", p.Name, p.Index)
	if p.Kind != "veth" {
		s += ", " + p.Kind
	}
	if !p.Up {
		s += ", DOWN"
	}
	if p.State != "" {
		s += ", " + p.State
	}
	s += ")"
	if p.Peer == nil {
		return s
	}
	pe := p.Peer
	if pe.NotFound {
		return s + fmt.Sprintf(" ⇄ ? (%s)", pe.NotFoundW)
	}
	s += fmt.Sprintf(" ⇄ %s (ifindex %d) in %s %s", pe.Name, pe.Index, pe.Netns.Kind(), pe.Netns.Label())
	var ns []string
	if pe.Netns.Inode != 0 {
		ns = append(ns, fmt.Sprintf("netns %d", pe.Netns.Inode))
	}
	if pe.Netns.Container != "" && len(pe.Netns.Names) > 0 {
		ns = append(ns, "ip netns "+pe.Netns.Names[0])
	}
	if len(ns) > 0 {
		s += " (" + strings.Join(ns, ", ") + ")"
	}
	if len(pe.Addrs) > 0 {
		s += "  " + strings.Join(pe.Addrs, " ")
	}
	if !pe.Up {
		s += "  DOWN"
	}
	return s
}

// WriteTree writes the terminal tree.
func (t *Topology) WriteTree(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "host (netns %d)\n", t.HostInode)
	groups := len(t.Bridges)
	if len(t.Loose) > 0 {
		groups++
	}
	if groups == 0 {
		b.WriteString("└── no bridges\n")
	}
	for i, br := range t.Bridges {
		last := i == groups-1
		writeGroup(&b, br.summary(), br.Ports, last, "(no ports)")
	}
	if len(t.Loose) > 0 {
		writeGroup(&b, "veths on no bridge", t.Loose, true, "")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeGroup(b *strings.Builder, head string, ports []Port, last bool, empty string) {
	branch, indent := "├── ", "│   "
	if last {
		branch, indent = "└── ", "    "
	}
	b.WriteString(branch + head + "\n")
	if len(ports) == 0 && empty != "" {
		b.WriteString(indent + "└── " + empty + "\n")
	}
	for j, p := range ports {
		pb := "├── "
		if j == len(ports)-1 {
			pb = "└── "
		}
		b.WriteString(indent + pb + p.summary() + "\n")
	}
}

// quote makes a DOT string literal.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}

type nsGroup struct {
	netns Netns
	ends  []string // node ids
	label []string
}

// peers groups veth peers by namespace, in a stable order.
func (t *Topology) peers() []*nsGroup {
	m := map[string]*nsGroup{}
	var order []string
	visit := func(p Port) {
		if p.Peer == nil || p.Peer.NotFound {
			return
		}
		key := fmt.Sprintf("%d/%d", p.Peer.Netns.Inode, p.Peer.Netns.NSID)
		g := m[key]
		if g == nil {
			g = &nsGroup{netns: p.Peer.Netns}
			m[key] = g
			order = append(order, key)
		}
		g.ends = append(g.ends, peerID(p))
		lbl := fmt.Sprintf("%s (if %d)", p.Peer.Name, p.Peer.Index)
		if len(p.Peer.Addrs) > 0 {
			lbl += "\n" + strings.Join(p.Peer.Addrs, "\n")
		}
		g.label = append(g.label, lbl)
	}
	for _, br := range t.Bridges {
		for _, p := range br.Ports {
			visit(p)
		}
	}
	for _, p := range t.Loose {
		visit(p)
	}
	sort.SliceStable(order, func(i, j int) bool { return m[order[i]].netns.Label() < m[order[j]].netns.Label() })
	out := make([]*nsGroup, len(order))
	for i, k := range order {
		out[i] = m[k]
	}
	return out
}

func bridgeID(b Bridge) string { return fmt.Sprintf("br_%d", b.Index) }
func portID(p Port) string     { return fmt.Sprintf("host_%d", p.Index) }
func peerID(p Port) string {
	return fmt.Sprintf("ns_%d_%d_if_%d", p.Peer.Netns.Inode, p.Peer.Netns.NSID+1, p.Peer.Index)
}
func nsID(n Netns) string { return fmt.Sprintf("cluster_ns_%d_%d", n.Inode, n.NSID+1) }

func (g *nsGroup) title() string {
	s := g.netns.Kind() + " " + g.netns.Label()
	if g.netns.Inode != 0 {
		s += fmt.Sprintf("\nnetns %d", g.netns.Inode)
	}
	return s
}

// WriteDOT writes a Graphviz graph (render with dot -Tsvg).
func (t *Topology) WriteDOT(w io.Writer) error {
	var b strings.Builder
	b.WriteString("graph hoptrace {\n")
	b.WriteString("  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n")
	fmt.Fprintf(&b, "  subgraph cluster_host {\n    label=%s;\n    style=rounded;\n", quote(fmt.Sprintf("host (netns %d)", t.HostInode)))
	for _, br := range t.Bridges {
		lbl := br.Name + "\nbridge"
		if br.Network != "" {
			lbl += " (network " + br.Network + ")"
		}
		if len(br.Addrs) > 0 {
			lbl += "\n" + strings.Join(br.Addrs, "\n")
		}
		style := "filled"
		if !br.Up {
			style = "filled,dashed"
		}
		fmt.Fprintf(&b, "    %s [label=%s, shape=box3d, style=%q, fillcolor=\"#dde8f8\"];\n", bridgeID(br), quote(lbl), style)
		for _, p := range br.Ports {
			writeDOTPort(&b, p)
		}
	}
	for _, p := range t.Loose {
		writeDOTPort(&b, p)
	}
	b.WriteString("  }\n")
	for _, g := range t.peers() {
		fmt.Fprintf(&b, "  subgraph %s {\n    label=%s;\n    style=rounded;\n", nsID(g.netns), quote(g.title()))
		for i, id := range g.ends {
			fmt.Fprintf(&b, "    %s [label=%s, shape=ellipse];\n", id, quote(g.label[i]))
		}
		b.WriteString("  }\n")
	}
	for _, br := range t.Bridges {
		for _, p := range br.Ports {
			fmt.Fprintf(&b, "  %s -- %s;\n", bridgeID(br), portID(p))
			writeDOTPeerEdge(&b, p)
		}
	}
	for _, p := range t.Loose {
		writeDOTPeerEdge(&b, p)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func writeDOTPort(b *strings.Builder, p Port) {
	lbl := fmt.Sprintf("%s\n%s, if %d", p.Name, p.Kind, p.Index)
	if p.State != "" {
		lbl += "\n" + p.State
	}
	style := "solid"
	if !p.Up {
		style = "dashed"
		lbl += "\nDOWN"
	}
	fmt.Fprintf(b, "    %s [label=%s, style=%q];\n", portID(p), quote(lbl), style)
}

func writeDOTPeerEdge(b *strings.Builder, p Port) {
	if p.Peer == nil || p.Peer.NotFound {
		return
	}
	fmt.Fprintf(b, "  %s -- %s [label=\"veth\", style=bold];\n", portID(p), peerID(p))
}

// mmd escapes a Mermaid label (quoted, with <br/> for new lines).
func mmd(s string) string {
	s = strings.NewReplacer(`"`, "#quot;", "<", "#lt;", ">", "#gt;").Replace(s)
	return `"` + strings.ReplaceAll(s, "\n", "<br/>") + `"`
}

// WriteMermaid writes a Mermaid flowchart.
func (t *Topology) WriteMermaid(w io.Writer) error {
	var b strings.Builder
	b.WriteString("flowchart LR\n")
	fmt.Fprintf(&b, "  subgraph host[%s]\n", mmd(fmt.Sprintf("host (netns %d)", t.HostInode)))
	for _, br := range t.Bridges {
		lbl := br.Name + "\nbridge"
		if br.Network != "" {
			lbl += " (network " + br.Network + ")"
		}
		if len(br.Addrs) > 0 {
			lbl += "\n" + strings.Join(br.Addrs, "\n")
		}
		fmt.Fprintf(&b, "    %s[[%s]]\n", bridgeID(br), mmd(lbl))
		for _, p := range br.Ports {
			fmt.Fprintf(&b, "    %s[%s]\n", portID(p), mmd(portLabel(p)))
		}
	}
	for _, p := range t.Loose {
		fmt.Fprintf(&b, "    %s[%s]\n", portID(p), mmd(portLabel(p)))
	}
	b.WriteString("  end\n")
	for _, g := range t.peers() {
		fmt.Fprintf(&b, "  subgraph %s[%s]\n", nsID(g.netns), mmd(g.title()))
		for i, id := range g.ends {
			fmt.Fprintf(&b, "    %s([%s])\n", id, mmd(g.label[i]))
		}
		b.WriteString("  end\n")
	}
	for _, br := range t.Bridges {
		for _, p := range br.Ports {
			fmt.Fprintf(&b, "  %s --- %s\n", bridgeID(br), portID(p))
			if p.Peer != nil && !p.Peer.NotFound {
				fmt.Fprintf(&b, "  %s ===|veth| %s\n", portID(p), peerID(p))
			}
		}
	}
	for _, p := range t.Loose {
		if p.Peer != nil && !p.Peer.NotFound {
			fmt.Fprintf(&b, "  %s ===|veth| %s\n", portID(p), peerID(p))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func portLabel(p Port) string {
	lbl := fmt.Sprintf("%s\n%s, if %d", p.Name, p.Kind, p.Index)
	if p.State != "" {
		lbl += "\n" + p.State
	}
	if !p.Up {
		lbl += "\nDOWN"
	}
	return lbl
}
