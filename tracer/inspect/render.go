package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Marks used in the text output.
const (
	MarkOK  = "✓"
	MarkBad = "✗"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	row := func(label, format string, a ...any) {
		fmt.Fprintf(&b, "%-11s %s\n", label, fmt.Sprintf(format, a...))
	}
	row("container", "%s", r.Name)
	row("id", "%s", r.ID)
	state := r.State
	if r.PID > 0 {
		state += fmt.Sprintf(", pid %d", r.PID)
	}
	if r.Image != "" {
		state += ", image " + r.Image
	}
	row("state", "%s", state)
	row("network", "mode %s", r.NetworkMode)
	if r.SandboxKey != "" {
		row("netns", "%s (%s)", r.Netns, r.SandboxKey)
		ns := fmt.Sprintf("inode %d", r.NetnsInode)
		if r.NSID >= 0 {
			ns += fmt.Sprintf(", nsid %d", r.NSID)
		} else {
			ns += ", no nsid"
		}
		if len(r.NetnsNames) > 0 {
			ns += ", ip netns " + strings.Join(r.NetnsNames, ", ")
		} else {
			ns += ", not in ip netns"
		}
		row("", "%s", ns)
	}
	if r.Note != "" {
		fmt.Fprintf(&b, "\n%s %s.\n", r.Name, r.Note)
	}
	for _, l := range r.OtherLinks {
		fmt.Fprintf(&b, "  other interface %s (ifindex %d, %s) %s\n", l.Name, l.Index, l.Kind, strings.Join(l.Addrs, " "))
	}
	for i, e := range r.Endpoints {
		e.writeText(&b, r.Name, i+1)
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintf(&b, "\n%d warning(s):\n", len(r.Warnings))
		for _, wmsg := range r.Warnings {
			fmt.Fprintf(&b, "  %s %s\n", MarkBad, wmsg)
		}
	} else if len(r.Endpoints) > 0 {
		fmt.Fprintf(&b, "\n%s the kernel agrees with %s on every endpoint\n", MarkOK, firstNonEmpty(r.Runtime, "the runtime"))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (e Endpoint) find(fact string) (Check, bool) {
	for _, c := range e.Checks {
		if c.Fact == fact {
			return c, true
		}
	}
	return Check{}, false
}

// mark renders a check: "✓" or "✗ detail"; "" when the check was not made.
func (e Endpoint) mark(fact string) string {
	c, ok := e.find(fact)
	if !ok {
		return ""
	}
	if c.OK {
		return MarkOK
	}
	return MarkBad + " " + c.Detail
}

func (e Endpoint) writeText(b *strings.Builder, name string, n int) {
	id := e.NetworkID
	if len(id) > 12 {
		id = id[:12]
	}
	epid := e.EndpointID
	if len(epid) > 12 {
		epid = epid[:12]
	}
	fmt.Fprintf(b, "\nendpoint %d  network %s (id %s, driver %s)\n", n, e.Network, id, firstNonEmpty(e.Driver, "?"))
	line := func(label, value, mark string) {
		if mark != "" {
			fmt.Fprintf(b, "  %-10s %-44s %s\n", label, value, mark)
		} else {
			fmt.Fprintf(b, "  %-10s %s\n", label, value)
		}
	}
	line("endpoint", e.EndpointID, "")
	if e.Container != nil {
		c := e.Container
		line("container", fmt.Sprintf("%s@if%d  ifindex %d, peer ifindex %d", c.Name, c.PeerIndex, c.Index, c.PeerIndex), e.mark("container interface"))
		line("", "state "+updown(c.Up)+", "+c.OperState+fmt.Sprintf(", mtu %d", c.MTU), e.mark(c.Name+" up"))
	} else {
		line("container", "?", e.mark("container interface"))
	}
	if e.MAC != "" {
		line("mac", e.MAC, e.mark("MAC "+e.MAC))
	}
	if e.IPv4 != "" {
		line("ipv4", e.IPv4, e.mark("address "+e.IPv4))
	}
	if e.IPv6 != "" {
		line("ipv6", e.IPv6, e.mark("address "+e.IPv6))
	}
	if e.Gateway != "" {
		line("gateway", e.Gateway, e.mark("gateway "+e.Gateway))
	}
	if e.HostVeth != nil {
		h := e.HostVeth
		line("host veth", fmt.Sprintf("%s  ifindex %d, peer ifindex %d", h.Name, h.Index, h.PeerIndex), e.mark("veth peer"))
		line("", "state "+updown(h.Up)+", "+h.OperState, e.mark(h.Name+" up"))
		master := "master " + firstNonEmpty(h.Master, "none")
		if e.PortState != "" {
			master += ", port " + e.PortState
		}
		line("", master, e.mark("bridge port"))
	} else if m := e.mark("veth peer"); m != "" {
		line("host veth", "?", m)
	} else if m := e.mark("veth pair"); m != "" {
		line("host veth", "-", m)
	}
	if e.Bridge != "" {
		v := e.Bridge
		if bd := e.BridgeDev; bd != nil {
			v = fmt.Sprintf("%s  ifindex %d, %s, %s", bd.Name, bd.Index, updown(bd.Up), bd.OperState)
		}
		line("bridge", v, e.mark("bridge "+e.Bridge))
	}
	if e.Container != nil && e.HostVeth != nil {
		path := fmt.Sprintf("%s (%s) → %s", e.Container.Name, name, e.HostVeth.Name)
		if e.HostVeth.Master != "" {
			path += " → " + e.HostVeth.Master
		}
		line("path", path, "")
	}
}

func updown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
