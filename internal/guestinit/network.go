package guestinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// ConfigureNetwork applies a static ip= configuration through the netlink
// handle h (whose network namespace it changes): it brings lo up, waits up
// to wait for cfg.Device to appear (a virtio-net driver may still be
// probing), brings it up, sets the client address and, when a gateway is
// given, installs the default route through it (on-link when the gateway
// is outside the client subnet). It is idempotent: running it again on a
// configured namespace changes nothing. A nil cfg configures only lo.
func ConfigureNetwork(ctx context.Context, log *slog.Logger, h *netlink.Handle, cfg *IPConfig, wait time.Duration) error {
	if log == nil {
		log = slog.Default()
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if cfg == nil {
		return nil
	}
	if !cfg.Static() {
		return fmt.Errorf("ip= autoconf %q without a static client address is not supported", cfg.Autoconf)
	}
	dev := cfg.Device
	if dev == "" {
		dev = DefaultDevice
	}
	link, err := waitLink(ctx, h, dev, wait)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", dev, err)
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(cfg.Client)}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("set address %s on %s: %w", cfg.Client, dev, err)
	}
	log.Info("network configured", "device", dev, "address", cfg.Client.String())
	if !cfg.Gateway.IsValid() {
		return nil
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Gw:        net.IP(cfg.Gateway.AsSlice()),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if !cfg.Client.Masked().Contains(cfg.Gateway) {
		route.Flags = int(netlink.FLAG_ONLINK)
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s dev %s: %w", cfg.Gateway, dev, err)
	}
	log.Info("default route set", "gateway", cfg.Gateway.String(), "device", dev)
	return nil
}

// waitLink polls for the named link until it exists, wait elapses or ctx is
// done.
func waitLink(ctx context.Context, h *netlink.Handle, name string, wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		link, err := h.LinkByName(name)
		if err == nil {
			return link, nil
		}
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("find %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("network device %s did not appear within %s: %w", name, wait, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}
