package output

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/hoptrace/hoptrace/tracer/path"
)

// appendPathJSON appends p as encoding/json would marshal it, field for
// field (a test holds the two together), without reflection: at full packet
// rate the encoder is a quarter of hoptrace's userspace time otherwise.
func appendPathJSON(b []byte, p *path.Path) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, p.ID, 10)
	b = append(b, `,"time":`...)
	b = appendTime(b, p.Time)
	b = appendStrField(b, "proto", p.Proto)
	b = appendStrField(b, "src", p.Src)
	b = appendStrField(b, "dst", p.Dst)
	b = appendUintField(b, "sport", uint64(p.Sport))
	b = appendUintField(b, "dport", uint64(p.Dport))
	b = appendUintField(b, "len", uint64(p.Len))
	b = appendStrField(b, "summary", p.Summary)
	b = appendStrField(b, "verdict", p.Verdict)
	b = appendStrField(b, "drop_reason", p.DropReason)
	if p.DropLocation != "" {
		b = appendStrField(b, "drop_location", p.DropLocation)
	}
	b = appendStrField(b, "end", p.End)
	b = append(b, `,"hops":`...)
	if p.Hops == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range p.Hops {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendHopJSON(b, &p.Hops[i])
		}
		b = append(b, ']')
	}
	if len(p.Ends) > 0 {
		b = append(b, `,"ends":[`...)
		for i := range p.Ends {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendEndJSON(b, &p.Ends[i])
		}
		b = append(b, ']')
	}
	if p.Rule != nil {
		b = appendRuleJSON(b, p.Rule)
	}
	return append(b, '}')
}

func appendHopJSON(b []byte, h *path.Hop) []byte {
	b = append(b, `{"netns":`...)
	b = appendString(b, h.Netns)
	b = appendUintField(b, "netns_inode", uint64(h.NetnsInode))
	b = appendStrField(b, "container", h.Container)
	b = appendIntField(b, "ifindex", int64(h.Ifindex))
	b = appendStrField(b, "ifname", h.Ifname)
	b = appendStrField(b, "kind", string(h.Kind))
	b = appendStrField(b, "direction", string(h.Direction))
	b = appendStrField(b, "bridge", h.Bridge)
	b = appendStrField(b, "hook", string(h.Hook))
	b = appendUintField(b, "ts_ns", h.TsNs)
	b = appendUintField(b, "delta_ns", h.DeltaNs)
	b = appendUintField(b, "since_first_ns", h.SinceNs)
	if h.Inferred {
		b = append(b, `,"inferred":true`...)
	}
	if h.Clone {
		b = append(b, `,"clone":true`...)
	}
	b = appendStrField(b, "skb", h.Skb)
	if h.Note != "" {
		b = appendStrField(b, "note", h.Note)
	}
	if h.NAT != "" {
		b = appendStrField(b, "nat", h.NAT)
	}
	return append(b, '}')
}

func appendEndJSON(b []byte, e *path.EndEvent) []byte {
	b = append(b, `{"hook":`...)
	b = appendString(b, string(e.Hook))
	b = appendStrField(b, "netns", e.Netns)
	b = appendUintField(b, "netns_inode", uint64(e.NetnsInode))
	if e.Ifname != "" {
		b = appendStrField(b, "ifname", e.Ifname)
	}
	b = appendUintField(b, "ts_ns", e.TsNs)
	if e.Reason != "" {
		b = appendStrField(b, "reason", e.Reason)
	}
	if e.Location != "" {
		b = appendStrField(b, "location", e.Location)
	}
	b = appendStrField(b, "skb", e.Skb)
	if e.Copy {
		b = append(b, `,"copy":true`...)
	}
	if e.NAT != "" {
		b = appendStrField(b, "nat", e.NAT)
	}
	return append(b, '}')
}

func appendRuleJSON(b []byte, r *path.Rule) []byte {
	b = append(b, `,"rule":{"family":`...)
	b = appendString(b, r.Family)
	b = appendStrField(b, "table", r.Table)
	b = appendStrField(b, "chain", r.Chain)
	if r.Handle != 0 {
		b = appendUintField(b, "handle", r.Handle)
	}
	if r.Text != "" {
		b = appendStrField(b, "text", r.Text)
	}
	if r.Iptables != "" {
		b = appendStrField(b, "iptables", r.Iptables)
	}
	b = appendStrField(b, "verdict", r.Verdict)
	if r.Policy {
		b = append(b, `,"policy":true`...)
	}
	return append(b, '}')
}

func appendStrField(b []byte, name, v string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

func appendUintField(b []byte, name string, v uint64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendUint(b, v, 10)
}

func appendIntField(b []byte, name string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// jsonSafe says which ASCII bytes encoding/json writes as they are.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendString quotes s as encoding/json does (with its HTML escaping).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
