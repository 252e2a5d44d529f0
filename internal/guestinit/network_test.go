package guestinit

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNetns creates a fresh network namespace and returns a netlink handle
// into it. The calling goroutine's thread goes back to the original
// namespace at once; the new namespace lives only as long as its file
// descriptor and disappears at cleanup.
func testNetns(t *testing.T) *netlink.Handle {
	t.Helper()
	requireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New() // also switches this thread into it
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// This thread is stuck in the new namespace: do not let the
		// runtime reuse it (it exits with the goroutine, still locked).
		runtime.LockOSThread()
		ns.Close()
		t.Fatalf("restore netns: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	return h
}

// addLink creates a link called name in h's namespace: a dummy where the
// kernel has the dummy driver, else one end of a veth pair.
func addLink(h *netlink.Handle, name string) error {
	err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
	if err == nil {
		return nil
	}
	verr := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"})
	if verr != nil {
		return fmt.Errorf("dummy: %w; veth: %w", err, verr)
	}
	return nil
}

func mustAddLink(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	if err := addLink(h, name); err != nil {
		t.Fatalf("add link %s: %v", name, err)
	}
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

func checkNet(t *testing.T, h *netlink.Handle, dev, wantAddr, wantGw string, onlink bool) {
	t.Helper()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo is down")
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s is down", dev)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != wantAddr {
		t.Errorf("%s addresses %v, want only %s", dev, addrs, wantAddr)
	}
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var defaults []netlink.Route
	for _, r := range routes {
		if isDefault(r) {
			defaults = append(defaults, r)
		}
	}
	if wantGw == "" {
		if len(defaults) != 0 {
			t.Errorf("unexpected default routes %v", defaults)
		}
		return
	}
	if len(defaults) != 1 || defaults[0].Gw.String() != wantGw {
		t.Fatalf("default routes %v, want one via %s", defaults, wantGw)
	}
	if got := defaults[0].Flags&int(netlink.FLAG_ONLINK) != 0; got != onlink {
		t.Errorf("onlink = %v, want %v", got, onlink)
	}
}

func TestConfigureNetwork(t *testing.T) {
	h := testNetns(t)
	mustAddLink(t, h, "eth0")
	cfg, err := ParseIPConfig("169.254.0.21::169.254.0.22:255.255.255.252:sb-1:eth0:off:1.1.1.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 2; i++ { // the second run must change nothing and not fail
		if err := ConfigureNetwork(ctx, quietLog(), h, cfg, time.Second); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		checkNet(t, h, "eth0", "169.254.0.21/30", "169.254.0.22", false)
	}
	// Loopback got its address when it came up.
	lo, _ := h.LinkByName("lo")
	if addrs, _ := h.AddrList(lo, netlink.FAMILY_V4); len(addrs) == 0 || addrs[0].IP.String() != "127.0.0.1" {
		t.Errorf("lo addresses %v", addrs)
	}
}

func TestConfigureNetworkOnlinkGateway(t *testing.T) {
	h := testNetns(t)
	mustAddLink(t, h, "eth1")
	cfg, err := ParseIPConfig("10.11.12.13::192.0.2.1:32::eth1")
	if err != nil {
		t.Fatal(err)
	}
	if err := ConfigureNetwork(context.Background(), quietLog(), h, cfg, time.Second); err != nil {
		t.Fatal(err)
	}
	checkNet(t, h, "eth1", "10.11.12.13/32", "192.0.2.1", true)
}

func TestConfigureNetworkNoGateway(t *testing.T) {
	h := testNetns(t)
	mustAddLink(t, h, "eth0")
	cfg, err := ParseIPConfig("10.0.0.2:::24")
	if err != nil {
		t.Fatal(err)
	}
	if err := ConfigureNetwork(context.Background(), quietLog(), h, cfg, time.Second); err != nil {
		t.Fatal(err)
	}
	checkNet(t, h, "eth0", "10.0.0.2/24", "", false)
}

func TestConfigureNetworkWaitsForDevice(t *testing.T) {
	h := testNetns(t)
	cfg, _ := ParseIPConfig("10.0.0.2:::24")
	go func() {
		time.Sleep(100 * time.Millisecond)
		if err := addLink(h, "eth0"); err != nil {
			t.Error(err)
		}
	}()
	if err := ConfigureNetwork(context.Background(), quietLog(), h, cfg, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	checkNet(t, h, "eth0", "10.0.0.2/24", "", false)
}

func TestConfigureNetworkErrors(t *testing.T) {
	h := testNetns(t)
	ctx := context.Background()

	// nil: only lo.
	if err := ConfigureNetwork(ctx, quietLog(), h, nil, 0); err != nil {
		t.Fatalf("nil config: %v", err)
	}
	dhcp, _ := ParseIPConfig("dhcp")
	if err := ConfigureNetwork(ctx, quietLog(), h, dhcp, 0); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("dhcp: %v", err)
	}
	missing, _ := ParseIPConfig("10.0.0.2:::24::eth9")
	start := time.Now()
	if err := ConfigureNetwork(ctx, quietLog(), h, missing, 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), "did not appear") {
		t.Errorf("missing device: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("device wait ignored its bound")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := ConfigureNetwork(cctx, quietLog(), h, missing, time.Minute); err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("canceled context: %v", err)
	}
}
