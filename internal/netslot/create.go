package netslot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// failpoint, when set (by tests), is called after each creation step and
// can fail it, to prove the rollback.
var failpoint func(step string) error

// rollback is a stack of undo functions.
type rollback []func() error

func (r *rollback) add(f func() error) { *r = append(*r, f) }

// run undoes in reverse order, continuing past failures.
func (r rollback) run() error {
	var errs []error
	for i := len(r) - 1; i >= 0; i-- {
		if err := r[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// createSlot builds slot pl. On failure everything it made is removed.
func (p *Pool) createSlot(ctx context.Context, pl plan) (err error) {
	var undo rollback
	defer func() {
		if err != nil {
			if uerr := undo.run(); uerr != nil {
				p.log.Error("slot rollback failed; the next pool start cleans it", "slot", pl.index, "err", uerr)
				err = errors.Join(err, fmt.Errorf("rollback: %w", uerr))
			}
			err = fmt.Errorf("create slot %d: %w", pl.index, err)
		}
	}()
	step := func(name string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if failpoint != nil {
			return failpoint(name)
		}
		return nil
	}

	// 1. The namespace. Deleting it also removes everything created
	// inside (TAP, veth end, routes, nftables table).
	path, err := createNetNS(pl.netns)
	if err != nil {
		return err
	}
	undo.add(func() error { return deleteNetNS(path) })
	if err := step("netns"); err != nil {
		return err
	}

	// 2. Inside: sysctls, lo, the persistent TAP with the gateway, rules.
	undo.add(func() error { return deleteTapIn(path) }) // a VM may hold the namespace
	if err := inNetNS(path, func() error { return p.setupInside(pl) }); err != nil {
		return err
	}
	if err := step("inside"); err != nil {
		return err
	}

	// 3. The veth pair, its slot end created directly in the namespace.
	nsfd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open namespace: %w", err)
	}
	defer unix.Close(nsfd)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: pl.hostVeth},
		PeerName:      vethName,
		PeerNamespace: netlink.NsFd(nsfd),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", pl.hostVeth, err)
	}
	undo.add(func() error { return deleteLink(pl.hostVeth) })
	if err := step("veth"); err != nil {
		return err
	}

	// 4. The host end: link address, up, route to HostAddr via the slot.
	if err := configureHostEnd(pl); err != nil {
		return err
	}
	if err := step("host"); err != nil {
		return err
	}

	// 5. The slot end: link address, up, default route to the host.
	if err := inNetNS(path, func() error { return configureSlotEnd(pl) }); err != nil {
		return err
	}
	return step("slot")
}

// setupInside runs in the new namespace.
func (p *Pool) setupInside(pl plan) error {
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	// IPv6 is neither routed nor filtered here: keep it off entirely.
	for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
		if err := writeSysctl(k, "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := createTap(tapName); err != nil {
		return err
	}
	tap, err := netlink.LinkByName(tapName)
	if err != nil {
		return fmt.Errorf("find %s: %w", tapName, err)
	}
	// The gateway's MAC is the same in every slot: a guest restored in
	// another slot keeps a valid ARP entry for it.
	if err := netlink.LinkSetHardwareAddr(tap, macFor(pl.gateway)); err != nil {
		return fmt.Errorf("set %s MAC: %w", tapName, err)
	}
	if err := netlink.AddrAdd(tap, &netlink.Addr{IPNet: ipNet(pl.gateway, pl.bits)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", pl.gateway, tapName, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fmt.Errorf("bring %s up: %w", tapName, err)
	}
	if err := setGuestNeigh(pl); err != nil {
		return err
	}
	cc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	pl.addSlotTable(cc, p.cfg.Name, p.cfg.DNS, policyOf(p.cfg.EgressDefault))
	if err := cc.Flush(); err != nil {
		return fmt.Errorf("install slot nftables table: %w", err)
	}
	return nil
}

// setGuestNeigh makes the guest's MAC a permanent neighbour entry on the
// slot's TAP (run inside the namespace). The guest's address and MAC are
// the same in every slot, so the namespace never has to resolve them: the
// first packet to a restored guest goes out at once, and the VMM need not
// announce the guest after a restore (see package qemu, Restore), which
// would wake the guest for work of its own. The entry survives the TAP
// losing its carrier when a VMM lets go of it; NeighSet replaces an entry
// that is there, so calling it again is harmless.
func setGuestNeigh(pl plan) error {
	tap, err := netlink.LinkByName(tapName)
	if err != nil {
		return fmt.Errorf("find %s: %w", tapName, err)
	}
	n := &netlink.Neigh{
		LinkIndex:    tap.Attrs().Index,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(pl.guest.AsSlice()),
		HardwareAddr: macFor(pl.guest),
	}
	if err := netlink.NeighSet(n); err != nil {
		return fmt.Errorf("neighbour %s on %s: %w", pl.guest, tapName, err)
	}
	return nil
}

func configureHostEnd(pl plan) error {
	link, err := netlink.LinkByName(pl.hostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", pl.hostVeth, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(pl.linkHost, 31)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", pl.linkHost, pl.hostVeth, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", pl.hostVeth, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(pl.hostAddr, 32),
		Gw:        net.IP(pl.linkSlot.AsSlice()),
	}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("route %s via %s dev %s: %w", pl.hostAddr, pl.linkSlot, pl.hostVeth, err)
	}
	return nil
}

// configureSlotEnd runs in the slot namespace.
func configureSlotEnd(pl plan) error {
	link, err := netlink.LinkByName(vethName)
	if err != nil {
		return fmt.Errorf("find %s: %w", vethName, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(pl.linkSlot, 31)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", pl.linkSlot, vethName, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", vethName, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(pl.linkHost.AsSlice())}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("default route via %s: %w", pl.linkHost, err)
	}
	return nil
}

// destroySlot removes slot pl's resources; what is already gone is
// skipped, so it is idempotent and also cleans half-made or stale slots.
func (p *Pool) destroySlot(pl plan) error {
	var errs []error
	// Deleting the host end deletes the pair, its addresses and route.
	if err := deleteLink(pl.hostVeth); err != nil {
		errs = append(errs, err)
	}
	path := netnsPath(pl.netns)
	if _, err := os.Stat(path); err == nil {
		// A VM still running would keep the namespace (and its TAP)
		// alive after the unmount: delete the TAP explicitly.
		if err := deleteTapIn(path); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNetNS(path); err != nil {
			errs = append(errs, err)
		}
	}
	forgetHostFlows(p.log, pl.hostAddr)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("destroy slot %d: %w", pl.index, err)
	}
	return nil
}

// deleteTapIn deletes the slot TAP in the namespace at path, if both
// exist. A namespace file that is not mounted (a crash between creating
// and mounting it) is skipped.
func deleteTapIn(path string) error {
	err := inNetNS(path, func() error { return deleteLink(tapName) })
	if errors.Is(err, unix.EINVAL) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// deleteLink deletes the named link in the calling thread's namespace; a
// missing link is not an error.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}
