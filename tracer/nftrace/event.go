package nftrace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Trace event types (enum nft_trace_types).
const (
	traceTypePolicy = 1
	traceTypeReturn = 2
	traceTypeRule   = 3
)

// Netfilter verdict codes as nf_tables reports them (NF_* and NFT_*).
const (
	verdictDrop     = 0
	verdictAccept   = 1
	verdictStolen   = 2
	verdictQueue    = 3
	verdictRepeat   = 4
	verdictContinue = -1
	verdictBreak    = -2
	verdictJump     = -3
	verdictGoto     = -4
	verdictReturn   = -5
)

// traceMsgType is the netlink message type of a trace event.
const traceMsgType = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_TRACE)

// Event is one nf_tables trace event: a rule that issued a verdict, a
// chain's policy, or a return from a chain, for one packet.
type Event struct {
	Family uint8 // NFPROTO_* of the table
	Table  string
	Chain  string
	Handle uint64 // rule handle, 0 for a policy
	Type   uint32
	// Verdict is the rule's verdict (NF_DROP, NF_ACCEPT, NFT_JUMP, ...) or,
	// for a policy event, the policy.
	Verdict     int32
	JumpTarget  string
	ID          uint32 // the kernel's trace id: the same for one packet in one hook
	IIf, OIf    uint32
	Mark        uint32
	NFProto     uint32
	HasHeaders  bool
	Key         Key
	NetworkHdr  []byte
	TransportHd []byte
}

// Key identifies a packet by the headers that do not change along its
// path: addresses, protocol, IP id (IPv6: flow label), ports or ICMP
// type/id/seq, and the TCP sequence number.
type Key struct {
	Src, Dst     netip.Addr
	Proto        uint8
	IPID         uint16
	Sport, Dport uint16 // ICMP: id and sequence
	ICMPType     uint8
	TCPSeq       uint32
}

func (k Key) String() string {
	return fmt.Sprintf("%s>%s proto=%d id=%d %d>%d type=%d seq=%d", k.Src, k.Dst, k.Proto, k.IPID, k.Sport, k.Dport, k.ICMPType, k.TCPSeq)
}

// decodeEvent decodes an NFT_MSG_TRACE message body (nfgenmsg, attributes).
func decodeEvent(data []byte) (Event, error) {
	var ev Event
	if len(data) < 4 {
		return ev, errors.New("trace message too short")
	}
	ev.Family = data[0]
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return ev, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_TABLE:
			ev.Table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			ev.Chain = ad.String()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.Handle = ad.Uint64()
		case unix.NFTA_TRACE_TYPE:
			ev.Type = ad.Uint32()
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				nad.ByteOrder = binary.BigEndian
				for nad.Next() {
					switch nad.Type() {
					case unix.NFTA_VERDICT_CODE:
						ev.Verdict = int32(nad.Uint32())
					case unix.NFTA_VERDICT_CHAIN:
						ev.JumpTarget = nad.String()
					}
				}
				return nil
			})
		case unix.NFTA_TRACE_ID:
			ev.ID = ad.Uint32()
		case unix.NFTA_TRACE_NETWORK_HEADER:
			ev.NetworkHdr = append([]byte(nil), ad.Bytes()...)
		case unix.NFTA_TRACE_TRANSPORT_HEADER:
			ev.TransportHd = append([]byte(nil), ad.Bytes()...)
		case unix.NFTA_TRACE_IIF:
			ev.IIf = ad.Uint32()
		case unix.NFTA_TRACE_OIF:
			ev.OIf = ad.Uint32()
		case unix.NFTA_TRACE_MARK:
			ev.Mark = ad.Uint32()
		case unix.NFTA_TRACE_NFPROTO:
			ev.NFProto = ad.Uint32()
		case unix.NFTA_TRACE_POLICY:
			ev.Verdict = int32(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return ev, fmt.Errorf("decode trace event: %w", err)
	}
	if len(ev.NetworkHdr) > 0 {
		ev.Key, ev.HasHeaders = headerKey(ev.NetworkHdr, ev.TransportHd)
	}
	return ev, nil
}

// headerKey builds the packet key from the network and transport headers
// a trace event carries.
func headerKey(nh, th []byte) (Key, bool) {
	var k Key
	if len(nh) < 1 {
		return k, false
	}
	switch nh[0] >> 4 {
	case 4:
		if len(nh) < 20 {
			return k, false
		}
		k.Src = netip.AddrFrom4([4]byte(nh[12:16]))
		k.Dst = netip.AddrFrom4([4]byte(nh[16:20]))
		k.Proto = nh[9]
		k.IPID = binary.BigEndian.Uint16(nh[4:6])
	case 6:
		if len(nh) < 40 {
			return k, false
		}
		k.Src = netip.AddrFrom16([16]byte(nh[8:24]))
		k.Dst = netip.AddrFrom16([16]byte(nh[24:40]))
		k.Proto = nh[6]
		k.IPID = binary.BigEndian.Uint16(nh[2:4])
	default:
		return k, false
	}
	switch k.Proto {
	case unix.IPPROTO_TCP:
		if len(th) >= 8 {
			k.Sport = binary.BigEndian.Uint16(th[0:2])
			k.Dport = binary.BigEndian.Uint16(th[2:4])
			k.TCPSeq = binary.BigEndian.Uint32(th[4:8])
		}
	case unix.IPPROTO_UDP:
		if len(th) >= 4 {
			k.Sport = binary.BigEndian.Uint16(th[0:2])
			k.Dport = binary.BigEndian.Uint16(th[2:4])
		}
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		if len(th) >= 8 {
			k.ICMPType = th[0]
			if echo(k.Proto, k.ICMPType) {
				k.Sport = binary.BigEndian.Uint16(th[4:6])
				k.Dport = binary.BigEndian.Uint16(th[6:8])
			}
		}
	}
	return k, true
}

// echo reports ICMP echo requests and replies, whose id and sequence are
// part of the key.
func echo(proto, typ uint8) bool {
	if proto == unix.IPPROTO_ICMP {
		return typ == 0 || typ == 8
	}
	return typ == 128 || typ == 129
}

// VerdictName renders a verdict as nft prints it.
func VerdictName(v int32) string {
	switch v {
	case verdictDrop:
		return "drop"
	case verdictAccept:
		return "accept"
	case verdictStolen:
		return "stolen"
	case verdictQueue:
		return "queue"
	case verdictRepeat:
		return "repeat"
	case verdictContinue:
		return "continue"
	case verdictBreak:
		return "break"
	case verdictJump:
		return "jump"
	case verdictGoto:
		return "goto"
	case verdictReturn:
		return "return"
	}
	if v >= 0 {
		return VerdictName(v & 0xff)
	}
	return fmt.Sprintf("verdict %d", v)
}

// isDrop reports a drop verdict (NF_DROP, possibly with an errno in the
// upper bits).
func isDrop(v int32) bool { return v >= 0 && v&0xff == verdictDrop }

// FamilyName names an NFPROTO_* family as nft does.
func FamilyName(f uint8) string {
	switch f {
	case unix.NFPROTO_INET:
		return "inet"
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	case unix.NFPROTO_ARP:
		return "arp"
	case unix.NFPROTO_BRIDGE:
		return "bridge"
	case unix.NFPROTO_NETDEV:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}
