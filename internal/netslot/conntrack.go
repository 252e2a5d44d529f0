package netslot

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Conntrack cleanup is best effort: a kernel without conntrack netlink
// support still isolates slots (the rules do), it only keeps stale flows
// until they time out. Failures are logged, not returned.

// forgetGuestFlows deletes the flows the guest opened, in the calling
// thread's namespace (a slot's). Flows the host opened to the guest have
// another original source and survive.
func forgetGuestFlows(log *slog.Logger, guest netip.Addr) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, net.IP(guest.AsSlice())); err != nil {
		log.Warn("conntrack filter", "err", err)
		return
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
		log.Warn("forget guest flows", "err", err)
	}
}

// flushFlows deletes every flow of the calling thread's namespace.
func flushFlows(log *slog.Logger) {
	if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		log.Warn("flush slot flows", "err", err)
	}
}

// forgetHostFlows deletes the host namespace's flows to and from a slot's
// host address (connections to the guest, masqueraded guest egress).
func forgetHostFlows(log *slog.Logger, hostAddr netip.Addr) {
	ip := net.IP(hostAddr.AsSlice())
	to, from := &netlink.ConntrackFilter{}, &netlink.ConntrackFilter{}
	if err := to.AddIP(netlink.ConntrackOrigDstIP, ip); err != nil {
		log.Warn("conntrack filter", "err", err)
		return
	}
	if err := from.AddIP(netlink.ConntrackOrigSrcIP, ip); err != nil {
		log.Warn("conntrack filter", "err", err)
		return
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, to, from); err != nil {
		log.Warn("forget host flows", "host_addr", hostAddr, "err", err)
	}
}
