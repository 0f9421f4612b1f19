package resolve

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// dumpTries bounds retries of a netlink dump that the kernel interrupted
// because the list changed while it was being read (busy hosts, containers
// starting); the last try's results are used as they are.
const dumpTries = 5

// LinkList lists links, retrying a dump interrupted by concurrent changes.
func LinkList(h *netlink.Handle) ([]netlink.Link, error) {
	var links []netlink.Link
	var err error
	for try := 0; try < dumpTries; try++ {
		links, err = h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
	}
	return links, nil
}

// AddrList lists a link's addresses, retrying interrupted dumps.
func AddrList(h *netlink.Handle, l netlink.Link, family int) ([]netlink.Addr, error) {
	var addrs []netlink.Addr
	var err error
	for try := 0; try < dumpTries; try++ {
		addrs, err = h.AddrList(l, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return addrs, err
		}
	}
	return addrs, nil
}
