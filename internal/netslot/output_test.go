package netslot

import (
	"net/netip"
	"strings"
	"testing"
)

// TestOnlyTheAgentUserReachesSlots performs the attack of a local
// unprivileged process on the host that connects to a guest at its slot's
// host address (bypassing the proxy and its checks): it must fail, while
// the agent's user (this test, root) still reaches the guest, and so does
// a process running as root.
func TestOnlyTheAgentUserReachesSlots(t *testing.T) {
	p := newTestPool(t, nil)
	s := acquire(t, p)
	g := startGuest(t, s)
	serve(t, g.path, netip.AddrPortFrom(s.GuestAddr, guestPort).String(), "guest")
	toGuest := netip.AddrPortFrom(s.HostAddr, guestPort)
	const nobody = 65534

	t.Run("the agent reaches the guest", func(t *testing.T) {
		if ident, _ := mustReach(t, "", toGuest); ident != "guest" {
			t.Fatalf("answered by %q, want guest", ident)
		}
	})
	t.Run("a root process reaches the guest", func(t *testing.T) {
		line, err := connectAs(t, 0, 0, toGuest)
		if err != nil || !strings.HasPrefix(line, "guest ") {
			t.Fatalf("root process: %q %v, want the guest's hello", line, err)
		}
	})
	t.Run("an unprivileged process cannot connect", func(t *testing.T) {
		for _, addr := range []netip.AddrPort{toGuest, netip.AddrPortFrom(s.HostAddr, 49983)} {
			line, err := connectAs(t, nobody, nobody, addr)
			if err == nil {
				t.Fatalf("uid %d -> %s: connected (%q), want refused", nobody, addr, line)
			}
			if !strings.Contains(err.Error(), "Connection refused") {
				t.Errorf("uid %d -> %s: %v, want connection refused (rejected on the way out)", nobody, addr, err)
			}
		}
	})
	t.Run("the agent still reaches the guest", func(t *testing.T) {
		if ident, _ := mustReach(t, "", toGuest); ident != "guest" {
			t.Fatalf("answered by %q, want guest", ident)
		}
	})
	t.Run("the rule goes with the pool", func(t *testing.T) {
		if err := p.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		if hostTableExists(t) {
			t.Fatal("the host table survived Close")
		}
	})
}
