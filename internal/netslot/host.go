package netslot

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lockPool takes the pool's exclusive lock file. The kernel drops the
// lock when the process dies, so a crashed agent's pool never blocks the
// next one; while held, nothing else owns the pool's names.
func lockPool(c Config) (*os.File, error) {
	if err := os.MkdirAll(c.LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	path := filepath.Join(c.LockDir, c.Name+".netslot.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked", ErrLocked, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// checkHostRanges fails when HostCIDR or LinkCIDR overlaps a route (in any
// routing table, default routes aside) or an address of the host, except
// on the interfaces of own (kept slots). Run it after the stale slots are
// gone: their routes are ours.
func checkHostRanges(c Config, own map[int]bool) error {
	ranges := []struct {
		name string
		p    netip.Prefix
	}{{"HostCIDR", c.HostCIDR}, {"LinkCIDR", c.LinkCIDR}}
	var errs []error
	clash := func(what string, p netip.Prefix) {
		for _, r := range ranges {
			if r.p.Overlaps(p) {
				errs = append(errs, fmt.Errorf("%s %s overlaps the host's %s %s", r.name, r.p, what, p))
			}
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || own[r.LinkIndex] {
			continue
		}
		p, ok := prefixOf(r.Dst.IP, r.Dst.Mask)
		if !ok || p.Bits() == 0 {
			continue
		}
		clash(fmt.Sprintf("route (table %d)", r.Table), p)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if own[a.LinkIndex] {
			continue
		}
		if p, ok := prefixOf(a.IP, a.Mask); ok {
			clash("address", p)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("address ranges clash with the host's networking (configure other ranges): %w", errors.Join(errs...))
	}
	return nil
}

func prefixOf(ip net.IP, mask net.IPMask) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || !a.Unmap().Is4() {
		return netip.Prefix{}, false
	}
	ones, bits := mask.Size()
	if bits == 128 {
		ones -= 96
	}
	if bits == 0 || ones < 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// enableForwarding turns on IPv4 forwarding in the host namespace. It is
// never turned off again: other software may rely on it by then.
func enableForwarding() (changed bool, err error) {
	v, err := readSysctl("net/ipv4/ip_forward")
	if err != nil {
		return false, err
	}
	if v == "1" {
		return false, nil
	}
	return true, writeSysctl("net/ipv4/ip_forward", "1")
}

// hostLinks returns the indices of host interfaces named
// <VethPrefix><index>.
func hostLinks(c Config) ([]int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list host interfaces: %w", err)
	}
	var idx []int
	for _, l := range links {
		if i := parseIndex(l.Attrs().Name, c.VethPrefix); i > 0 {
			idx = append(idx, i)
		}
	}
	return idx, nil
}
