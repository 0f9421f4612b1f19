// Package nftrace names the netfilter rule that dropped a packet. It uses
// nf_tables tracing, which changes no verdict: a table of hoptrace's own,
// created with the owner flag (NFT_TABLE_F_OWNER, Linux 5.12+) so that the
// kernel removes it when hoptrace's netlink socket closes (SIGKILL
// included), holds base chains at the earliest priority of the prerouting
// and output hooks whose only rules set `meta nftrace set 1` on the
// selected packets. The kernel then reports, on the NFNLGRP_NFTRACE
// netlink group, every rule that gives such a packet a verdict and every
// chain policy applied to it, with the packet's headers. A drop
// (kfree_skb NETFILTER_DROP) seen by hoptrace's tracer is joined to the
// last drop verdict reported for a packet with the same headers.
//
// The kernel's trace id (NFTA_TRACE_ID) is a keyed siphash of the skb
// address, the skb hash and the input interface (net/netfilter/
// nf_tables_trace.c, nft_trace_init): it groups the events of one packet
// but cannot be matched to the skb address hoptrace's tracer reports, so
// the join is on headers and time.
package nftrace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// tableFlagOwner is NFT_TABLE_F_OWNER (Linux 5.12+): the table belongs to
// the netlink socket that created it and goes away with it.
const tableFlagOwner = 0x2

// TablePrefix starts the name of every table hoptrace creates.
const TablePrefix = "hoptrace"

// ErrUnavailable is wrapped by errors that mean rule naming cannot work on
// this machine (no nf_tables, a kernel without the owner flag, no
// privileges).
var ErrUnavailable = errors.New("rule naming unavailable")

// Mode says which packets are marked for tracing.
type Mode int

const (
	// ModeAddrs marks packets from or to the addresses given to SetAddrs.
	ModeAddrs Mode = iota
	// ModeAll marks every packet (a trace without a selection).
	ModeAll
	// ModeProbes marks only packets added with Probe.
	ModeProbes
)

// Options configure a Tracer.
type Options struct {
	Mode Mode
	// Bridge adds a bridge-family table too, for bridged packets that do
	// not cross the IP hooks (br_netfilter not loaded). Open decides when
	// left at BridgeAuto.
	Bridge BridgeChoice
}

// BridgeChoice says whether a bridge-family table is created.
type BridgeChoice int

const (
	BridgeAuto BridgeChoice = iota
	BridgeOn
	BridgeOff
)

// Tracer owns hoptrace's trace table and listens to the trace events.
type Tracer struct {
	mode   Mode
	conn   *nftables.Conn
	tables []*famTable
	events *netlink.Conn
	store  *store
	texts  *ruleTexts

	nl    sync.Mutex // one request at a time on the table's socket
	addrs map[netip.Addr]bool

	mu    sync.Mutex
	probe uint64 // tag counter

	done chan struct{}
	lost uint64 // overflows of the trace socket
}

// famTable is one table of hoptrace's with its chains and sets.
type famTable struct {
	table  *nftables.Table
	chains []*nftables.Chain
	set4   *nftables.Set
	set6   *nftables.Set
}

// Open creates hoptrace's trace table and starts listening.
func Open(opts Options) (*Tracer, error) {
	t := &Tracer{mode: opts.Mode, store: newStore(), texts: newRuleTexts(), addrs: map[netip.Addr]bool{}, done: make(chan struct{})}
	var raw *netlink.Conn
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		raw = c
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("%w: open nf_tables netlink socket: %v", ErrUnavailable, err)
	}
	t.conn = conn
	ok := false
	defer func() {
		if !ok {
			t.Close()
		}
	}()

	// Listen before the chains exist: nothing marked is missed.
	ev, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: open trace socket: %v", ErrUnavailable, err)
	}
	t.events = ev
	if err := ev.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		return nil, fmt.Errorf("%w: join the nf_tables trace group: %v", ErrUnavailable, err)
	}
	_ = ev.SetReadBuffer(8 << 20)
	go t.listen(ev)

	families := []nftables.TableFamily{nftables.TableFamilyINet}
	bridge := opts.Bridge == BridgeOn || (opts.Bridge == BridgeAuto && !BrNetfilter())
	if bridge {
		families = append(families, nftables.TableFamilyBridge)
	}
	name := fmt.Sprintf("%s_%d", TablePrefix, os.Getpid())
	for _, fam := range families {
		ft := &famTable{table: &nftables.Table{Name: name, Family: fam}}
		if err := createOwnedTable(raw, ft.table); err != nil {
			return nil, err
		}
		t.tables = append(t.tables, ft)
	}
	for _, ft := range t.tables {
		if err := t.build(ft); err != nil {
			return nil, err
		}
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("create trace chains: %w", err)
	}
	ok = true
	return t, nil
}

// createOwnedTable sends NFT_MSG_NEWTABLE with NFT_TABLE_F_OWNER on the
// connection's own socket (the library does not set table flags): the
// table lives as long as that socket.
func createOwnedTable(c *netlink.Conn, tb *nftables.Table) error {
	if c == nil {
		return fmt.Errorf("%w: no nf_tables socket", ErrUnavailable)
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TABLE_NAME, tb.Name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, tableFlagOwner)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	batch := func(typ uint16) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
			Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
		}
	}
	msgs := []netlink.Message{
		batch(unix.NFNL_MSG_BATCH_BEGIN),
		{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
			},
			Data: append([]byte{byte(tb.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
		},
		batch(unix.NFNL_MSG_BATCH_END),
	}
	sent, err := c.SendMessages(msgs)
	if err != nil {
		return fmt.Errorf("%w: create table: %v", ErrUnavailable, err)
	}
	want := sent[1].Header.Sequence
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for {
		replies, err := c.Receive()
		if err != nil {
			return tableError(tb, err)
		}
		for _, m := range replies {
			if m.Header.Sequence == want && m.Header.Type == netlink.Error {
				return nil // an ack; errors come back from Receive
			}
		}
	}
}

func tableError(tb *nftables.Table, err error) error {
	fam := FamilyName(uint8(tb.Family))
	switch {
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%w: the kernel refuses owned tables (NFT_TABLE_F_OWNER needs Linux 5.12+): %v", ErrUnavailable, err)
	case errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: nf_tables family %s is not available in this kernel: %v", ErrUnavailable, fam, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: creating an nftables table needs CAP_NET_ADMIN: %v", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: create table %s %s: %v", ErrUnavailable, fam, tb.Name, err)
}

// build adds the chains (and for ModeAddrs the address sets and their rules).
func (t *Tracer) build(ft *famTable) error {
	prio := nftables.ChainPriorityRef(math.MinInt32)
	accept := nftables.ChainPolicyAccept
	for _, hook := range []struct {
		name string
		num  *nftables.ChainHook
	}{{"prerouting", nftables.ChainHookPrerouting}, {"output", nftables.ChainHookOutput}} {
		ch := t.conn.AddChain(&nftables.Chain{
			Name: hook.name, Table: ft.table, Hooknum: hook.num, Priority: prio,
			Type: nftables.ChainTypeFilter, Policy: &accept,
		})
		ft.chains = append(ft.chains, ch)
	}
	switch t.mode {
	case ModeAll:
		for _, ch := range ft.chains {
			t.conn.AddRule(&nftables.Rule{Table: ft.table, Chain: ch, Exprs: setTrace()})
		}
	case ModeAddrs:
		ft.set4 = &nftables.Set{Table: ft.table, Name: "sel4", KeyType: nftables.TypeIPAddr}
		ft.set6 = &nftables.Set{Table: ft.table, Name: "sel6", KeyType: nftables.TypeIP6Addr}
		for _, s := range []*nftables.Set{ft.set4, ft.set6} {
			if err := t.conn.AddSet(s, nil); err != nil {
				return fmt.Errorf("add set %s: %w", s.Name, err)
			}
		}
		fam := ft.table.Family
		for _, ch := range ft.chains {
			for _, m := range []struct {
				v6     bool
				offset uint32
			}{{false, 12}, {false, 16}, {true, 8}, {true, 24}} {
				set, n := ft.set4, uint32(4)
				if m.v6 {
					set, n = ft.set6, 16
				}
				ex := append(isIP(fam, m.v6),
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.offset, Len: n},
					&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
				)
				t.conn.AddRule(&nftables.Rule{Table: ft.table, Chain: ch, Exprs: append(ex, setTrace()...)})
			}
		}
	}
	return nil
}

// isIP matches IPv4 (or IPv6) packets: meta nfproto in the inet family,
// the ethertype (meta protocol) in the bridge family.
func isIP(fam nftables.TableFamily, v6 bool) []expr.Any {
	if fam == nftables.TableFamilyBridge {
		proto := []byte{0x08, 0x00}
		if v6 {
			proto = []byte{0x86, 0xdd}
		}
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: proto},
		}
	}
	nfproto := byte(unix.NFPROTO_IPV4)
	if v6 {
		nfproto = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
	}
}

// setTrace is `meta nftrace set 1`.
func setTrace() []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: []byte{1}},
		&expr.Meta{Key: expr.MetaKeyNFTRACE, SourceRegister: true, Register: 1},
	}
}

// SetAddrs makes the selection's address sets equal to addrs (ModeAddrs).
func (t *Tracer) SetAddrs(addrs []netip.Addr) error {
	if t.mode != ModeAddrs {
		return nil
	}
	t.nl.Lock()
	defer t.nl.Unlock()
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a.Unmap()] = true
	}
	var add4, add6, del4, del6 []nftables.SetElement
	for a := range want {
		if !t.addrs[a] {
			if a.Is4() {
				add4 = append(add4, nftables.SetElement{Key: a.AsSlice()})
			} else {
				add6 = append(add6, nftables.SetElement{Key: a.AsSlice()})
			}
		}
	}
	for a := range t.addrs {
		if !want[a] {
			if a.Is4() {
				del4 = append(del4, nftables.SetElement{Key: a.AsSlice()})
			} else {
				del6 = append(del6, nftables.SetElement{Key: a.AsSlice()})
			}
		}
	}
	if len(add4)+len(add6)+len(del4)+len(del6) == 0 {
		return nil
	}
	for _, ft := range t.tables {
		for _, op := range []struct {
			set   *nftables.Set
			elems []nftables.SetElement
			add   bool
		}{{ft.set4, add4, true}, {ft.set6, add6, true}, {ft.set4, del4, false}, {ft.set6, del6, false}} {
			if len(op.elems) == 0 {
				continue
			}
			var err error
			if op.add {
				err = t.conn.SetAddElements(op.set, op.elems)
			} else {
				err = t.conn.SetDeleteElements(op.set, op.elems)
			}
			if err != nil {
				return fmt.Errorf("update trace set %s: %w", op.set.Name, err)
			}
		}
	}
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("update trace sets: %w", err)
	}
	t.addrs = want
	return nil
}

// ProbeMatch describes probe packets to mark (ModeProbes): IPv4 from Src
// to Dst, protocol icmp (echo requests with ICMPID), udp or tcp (to Port).
type ProbeMatch struct {
	Src, Dst netip.Addr
	Proto    string
	Port     uint16
	ICMPID   uint16
}

// Probe marks the probe packets m describes until the returned function
// is called.
func (t *Tracer) Probe(m ProbeMatch) (func(), error) {
	if !m.Src.Is4() || !m.Dst.Is4() {
		return nil, fmt.Errorf("probe match needs IPv4 addresses, not %s > %s", m.Src, m.Dst)
	}
	var l4 []expr.Any
	var proto byte
	switch m.Proto {
	case "icmp":
		proto = unix.IPPROTO_ICMP
		id := []byte{byte(m.ICMPID >> 8), byte(m.ICMPID)}
		l4 = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 4, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: id},
		}
	case "udp", "tcp":
		proto = unix.IPPROTO_UDP
		if m.Proto == "tcp" {
			proto = unix.IPPROTO_TCP
		}
		l4 = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(m.Port >> 8), byte(m.Port)}},
		}
	default:
		return nil, fmt.Errorf("probe match: unknown protocol %q", m.Proto)
	}
	t.mu.Lock()
	t.probe++
	tag := []byte(fmt.Sprintf("hoptrace-probe-%d", t.probe))
	t.mu.Unlock()
	t.nl.Lock()
	defer t.nl.Unlock()
	for _, ft := range t.tables {
		rex := append(isIP(ft.table.Family, false),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m.Src.AsSlice()},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m.Dst.AsSlice()},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		)
		rex = append(append(rex, l4...), setTrace()...)
		for _, ch := range ft.chains {
			t.conn.AddRule(&nftables.Rule{Table: ft.table, Chain: ch, Exprs: rex, UserData: tag})
		}
	}
	if err := t.conn.Flush(); err != nil {
		return nil, fmt.Errorf("add probe trace rule: %w", err)
	}
	return func() { t.removeTagged(tag) }, nil
}

// removeTagged deletes the rules carrying tag (their handles are learnt by
// listing the chains).
func (t *Tracer) removeTagged(tag []byte) {
	t.nl.Lock()
	defer t.nl.Unlock()
	n := 0
	for _, ft := range t.tables {
		for _, ch := range ft.chains {
			rules, err := t.conn.GetRules(ft.table, ch)
			if err != nil {
				continue
			}
			for _, r := range rules {
				if string(r.UserData) == string(tag) {
					r.Table, r.Chain = ft.table, ch
					if t.conn.DelRule(r) == nil {
						n++
					}
				}
			}
		}
	}
	if n > 0 {
		_ = t.conn.Flush()
	}
}

// listen reads trace events until the socket is closed.
func (t *Tracer) listen(sock *netlink.Conn) {
	defer close(t.done)
	groups := map[uint32]groupState{}
	lastPrune := time.Now()
	for {
		_ = sock.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		msgs, err := sock.Receive()
		now := time.Now()
		if now.Sub(lastPrune) > time.Second {
			lastPrune = now
			t.store.prune(monotonicNow())
			for id, g := range groups {
				if now.Sub(g.seen) > 5*time.Second {
					delete(groups, id)
				}
			}
		}
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				continue
			case errors.Is(err, unix.ENOBUFS):
				t.mu.Lock()
				t.lost++
				t.mu.Unlock()
				continue
			}
			if t.closed() {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ts := monotonicNow()
		for _, m := range msgs {
			if m.Header.Type != traceMsgType {
				continue
			}
			ev, err := decodeEvent(m.Data)
			if err != nil {
				continue
			}
			g := groups[ev.ID]
			if ev.HasHeaders {
				g.key, g.ok = ev.Key, true
			}
			g.seen = now
			groups[ev.ID] = g
			if !g.ok || t.ours(ev) {
				continue
			}
			t.store.add(g.key, ts, ev)
		}
	}
}

type groupState struct {
	key  Key
	ok   bool
	seen time.Time
}

func (t *Tracer) closed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.events == nil
}

// ours reports events of hoptrace's own tables.
func (t *Tracer) ours(ev Event) bool {
	return strings.HasPrefix(ev.Table, TablePrefix+"_")
}

// Lost is the number of times the kernel could not deliver trace messages
// (ENOBUFS: a full socket buffer; the count of messages is not known).
func (t *Tracer) Lost() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lost
}

// TableNames returns the names (family and name) of hoptrace's tables.
func (t *Tracer) TableNames() []string {
	var s []string
	for _, ft := range t.tables {
		s = append(s, FamilyName(uint8(ft.table.Family))+" "+ft.table.Name)
	}
	return s
}

// Close removes hoptrace's tables (by closing the socket that owns them)
// and stops listening.
func (t *Tracer) Close() error {
	var err error
	if t.conn != nil {
		err = t.conn.CloseLasting()
		t.conn = nil
	}
	t.mu.Lock()
	ev := t.events
	t.events = nil
	t.mu.Unlock()
	if ev != nil {
		ev.Close()
		select {
		case <-t.done:
		case <-time.After(2 * time.Second):
		}
	}
	return err
}

// monotonicNow is CLOCK_MONOTONIC, the clock of the tracer's events.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// BrNetfilter reports whether bridged IPv4 packets cross the IP hooks
// (br_netfilter loaded with bridge-nf-call-iptables on).
func BrNetfilter() bool {
	b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
