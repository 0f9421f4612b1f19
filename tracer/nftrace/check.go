package nftrace

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// Status says whether rule naming can work on this machine.
type Status struct {
	// NFTables: the kernel answers nf_tables requests.
	NFTables       bool
	NFTablesDetail string
	// Owner: the kernel accepts a table owned by its socket (5.12+); checked
	// by creating one, which the kernel removes at once with the socket.
	Owner       bool
	OwnerDetail string
	// Backend is what `iptables -V` reports: "nf_tables", "legacy", or ""
	// when iptables is not installed.
	Backend string
	// LegacyTables are iptables-legacy tables loaded in the kernel
	// (/proc/net/ip_tables_names): drops in them cannot be named.
	LegacyTables []string
	// NftBinary: `nft` is installed, so rule texts can be printed.
	NftBinary bool
}

// Check probes nf_tables, the owner flag and the iptables backend. It
// leaves nothing behind.
func Check() Status {
	var s Status
	_, err := exec.LookPath("nft")
	s.NftBinary = err == nil
	s.Backend = iptablesBackend()
	s.LegacyTables = LegacyTables()

	conn, err := nftables.New()
	if err == nil {
		_, err = conn.ListTables()
	}
	switch {
	case err != nil:
		s.NFTablesDetail = fmt.Sprintf("nf_tables does not answer: %v", err)
		s.OwnerDetail = "not checked (no nf_tables)"
		return s
	default:
		s.NFTables = true
		s.NFTablesDetail = "the kernel answers nf_tables requests"
	}
	var raw *netlink.Conn
	lc, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error { raw = c; return nil }))
	if err != nil {
		s.OwnerDetail = err.Error()
		return s
	}
	defer lc.CloseLasting()
	err = createOwnedTable(raw, &nftables.Table{Name: fmt.Sprintf("%s_check_%d", TablePrefix, os.Getpid()), Family: nftables.TableFamilyINet})
	if err != nil {
		s.OwnerDetail = strings.TrimPrefix(err.Error(), ErrUnavailable.Error()+": ")
		return s
	}
	s.Owner = true
	s.OwnerDetail = "tables owned by hoptrace's socket (NFT_TABLE_F_OWNER) vanish when it exits"
	return s
}

// Available reports whether rule naming can work, and if not why.
func (s Status) Available() (bool, string) {
	switch {
	case !s.NFTables:
		return false, s.NFTablesDetail
	case !s.Owner:
		return false, s.OwnerDetail
	}
	return true, ""
}

func iptablesBackend() string {
	out, err := exec.Command("iptables", "-V").Output()
	if err != nil {
		return ""
	}
	switch v := string(out); {
	case strings.Contains(v, "nf_tables"):
		return "nf_tables"
	case strings.Contains(v, "legacy"):
		return "legacy"
	}
	return strings.TrimSpace(string(out))
}

// LegacyTables lists the iptables-legacy (x_tables) IPv4 and IPv6 tables
// the kernel holds.
func LegacyTables() []string {
	var names []string
	for _, f := range []struct{ path, prefix string }{{"/proc/net/ip_tables_names", "ip"}, {"/proc/net/ip6_tables_names", "ip6"}} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			continue
		}
		for _, n := range strings.Fields(string(b)) {
			names = append(names, f.prefix+" "+n)
		}
	}
	return names
}

// LegacyWarning says, when iptables-legacy tables are loaded, that drops in
// them keep only their drop reason; "" otherwise.
func LegacyWarning() string {
	if t := LegacyTables(); len(t) > 0 {
		return fmt.Sprintf("iptables-legacy tables are loaded (%s): drops in them are not nf_tables rules and keep only their drop reason", strings.Join(t, ", "))
	}
	return ""
}
