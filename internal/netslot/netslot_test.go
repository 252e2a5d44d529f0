package netslot

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/testenv"
)

const guestPort = 7000

func TestHostReachesGuestAndEgressToggles(t *testing.T) {
	p := newTestPool(t, nil)
	in := startInternet(t)
	serve(t, in.path, netip.AddrPortFrom(inetAddr, 80).String(), "internet")

	a := acquire(t, p)
	ga := startGuest(t, a)
	serve(t, ga.path, netip.AddrPortFrom(a.GuestAddr, guestPort).String(), "guest-a")
	toGuest := netip.AddrPortFrom(a.HostAddr, guestPort)
	toInternet := netip.AddrPortFrom(inetAddr, 80)

	// Host -> HostAddr reaches the guest, which sees the host's end of
	// the slot's veth as the source.
	ident, remote := mustReach(t, "", toGuest)
	if ident != "guest-a" {
		t.Fatalf("host -> %s answered by %q", toGuest, ident)
	}
	t.Logf("host -> %s reached %s, which saw %s", toGuest, ident, remote)

	// Egress is off by default.
	if a.Egress() {
		t.Fatal("new slot has egress on")
	}
	mustNotReach(t, ga.path, toInternet)

	// A host connection opened before egress changes keeps working.
	hc, err := dial("", toGuest, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if _, _, err := hc.hello(); err != nil {
		t.Fatal(err)
	}

	if err := a.SetEgress(context.Background(), true); err != nil {
		t.Fatalf("SetEgress(true): %v", err)
	}
	ident, remote = mustReach(t, ga.path, toInternet)
	if ident != "internet" {
		t.Fatalf("guest -> internet answered by %q", ident)
	}
	// Masqueraded twice: to HostAddr in the slot, to the host's address
	// towards the internet on the host.
	if ap, err := netip.ParseAddrPort(remote); err != nil || ap.Addr() != inetHostAddr {
		t.Errorf("internet saw the guest as %s, want %s", remote, inetHostAddr)
	}
	// A guest connection open while egress is turned off is cut.
	gc, err := dial(ga.path, toInternet, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	if _, _, err := gc.hello(); err != nil {
		t.Fatal(err)
	}
	if err := hc.echo("before", 5*time.Second); err != nil {
		t.Fatalf("host connection: %v", err)
	}

	if err := a.SetEgress(context.Background(), false); err != nil {
		t.Fatalf("SetEgress(false): %v", err)
	}
	mustNotReach(t, ga.path, toInternet)
	if err := gc.echo("after egress off", time.Second); err == nil {
		t.Error("guest connection opened with egress on still works after egress off")
	} else {
		t.Logf("guest connection after egress off: %v", err)
	}
	if err := hc.echo("after egress off", 5*time.Second); err != nil {
		t.Errorf("host connection opened before egress off: %v", err)
	}
	if ident, _ := mustReach(t, "", toGuest); ident != "guest-a" {
		t.Errorf("host -> guest after egress off answered by %q", ident)
	}
}

func TestIsolation(t *testing.T) {
	p := newTestPool(t, func(c *Config) { c.EgressDefault = true })
	in := startInternet(t)
	serve(t, in.path, netip.AddrPortFrom(inetAddr, 80).String(), "internet")

	a, b := acquire(t, p), acquire(t, p)
	ga, gb := startGuest(t, a), startGuest(t, b)
	serve(t, ga.path, netip.AddrPortFrom(a.GuestAddr, guestPort).String(), "guest-a")
	serve(t, gb.path, netip.AddrPortFrom(b.GuestAddr, guestPort).String(), "guest-b")
	if a.GuestAddr != b.GuestAddr || a.Gateway != b.Gateway || a.MAC != b.MAC || a.HostAddr == b.HostAddr {
		t.Fatalf("slots %+v and %+v: want the same guest side, different host addresses", a, b)
	}

	// Both guests are up, each behind its own host address, and both
	// have egress: what follows is blocked by isolation, not by egress.
	for _, c := range []struct {
		s     *Slot
		ident string
	}{{a, "guest-a"}, {b, "guest-b"}} {
		if ident, _ := mustReach(t, "", netip.AddrPortFrom(c.s.HostAddr, guestPort)); ident != c.ident {
			t.Fatalf("host -> %s answered by %q, want %q", c.s.HostAddr, ident, c.ident)
		}
	}
	mustReach(t, ga.path, netip.AddrPortFrom(inetAddr, 80))
	mustReach(t, gb.path, netip.AddrPortFrom(inetAddr, 80))

	// Slot to slot: B's host address and both ends of its veth, and A's
	// own host address (hairpin through the host).
	pb, pa := p.cfg.plan(b.Index), p.cfg.plan(a.Index)
	for _, addr := range []netip.Addr{b.HostAddr, pb.linkHost, pb.linkSlot, a.HostAddr} {
		mustNotReach(t, ga.path, netip.AddrPortFrom(addr, guestPort))
	}

	// Guest to host: a listener on every host address, reachable from
	// the host itself and from the internet, but not from a guest.
	ln := netip.AddrPortFrom(netip.IPv4Unspecified(), 7001)
	serve(t, "", ln.String(), "host")
	mustReach(t, "", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ln.Port()))
	mustReach(t, in.path, netip.AddrPortFrom(inetHostAddr, ln.Port()))
	targets := []netip.Addr{pa.linkHost, pb.linkHost, inetHostAddr, pa.linkSlot, a.Gateway}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && !ip.Unmap().IsLoopback() {
			targets = append(targets, ip.Unmap())
		}
	}
	slices.SortFunc(targets, netip.Addr.Compare)
	for _, addr := range slices.Compact(targets) {
		mustNotReach(t, ga.path, netip.AddrPortFrom(addr, ln.Port()))
	}

	// Anti-spoofing: a guest sending from another source address gets
	// nowhere, even with egress on (the packet would not be translated).
	spoofed := netip.MustParseAddr("198.19.1.7") // routed nowhere
	err = inNetNS(ga.path, func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(spoofed, 32)}); err != nil {
			return err
		}
		d := net.Dialer{Timeout: 700 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.IP(spoofed.AsSlice())}}
		c, err := d.Dial("tcp4", netip.AddrPortFrom(inetAddr, 80).String())
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		t.Logf("guest -> internet from spoofed %s blocked: %v", spoofed, err)
		return nil
	})
	if err != nil {
		t.Errorf("spoofed source: %v", err)
	}
}

// egressOpen reports whether the egress chain of slot s ends in accept
// (the "allow" default).
func egressOpen(t *testing.T, s *Slot) bool {
	t.Helper()
	var last []expr.Any
	err := inNetNS(s.NetNSPath, func() error {
		cc, err := nftables.New()
		if err != nil {
			return err
		}
		tb := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: s.pool.cfg.Name}
		rules, err := cc.GetRules(tb, &nftables.Chain{Name: chainEgress, Table: tb})
		if len(rules) > 0 {
			last = rules[len(rules)-1].Exprs
		}
		return err
	})
	if err != nil {
		t.Fatalf("rules of %s: %v", chainEgress, err)
	}
	if len(last) != 1 {
		return false
	}
	v, ok := last[0].(*expr.Verdict)
	return ok && v.Kind == expr.VerdictAccept
}

func TestAcquireReleaseReuse(t *testing.T) {
	p := newTestPool(t, nil)
	ctx := context.Background()
	s := acquire(t, p)
	if err := s.SetEgress(ctx, true); err != nil {
		t.Fatal(err)
	}
	if !egressOpen(t, s) {
		t.Fatal("egress on, but the egress chain does not end in accept")
	}
	vm, err := s.OpenTap()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Release(ctx, s); !errors.Is(err, ErrTapBusy) {
		t.Fatalf("Release with the TAP open: %v, want ErrTapBusy", err)
	}
	vm.Close()
	if err := p.Release(ctx, s); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := p.Release(ctx, s); !errors.Is(err, ErrNotInUse) {
		t.Errorf("second Release: %v, want ErrNotInUse", err)
	}
	if err := s.SetEgress(ctx, true); !errors.Is(err, ErrNotInUse) {
		t.Errorf("SetEgress on a released slot: %v, want ErrNotInUse", err)
	}
	again := acquire(t, p)
	if again != s {
		t.Fatalf("Acquire after Release made slot %d, want slot %d reused", again.Index, s.Index)
	}
	if again.Egress() || egressOpen(t, again) {
		t.Error("reused slot kept egress on")
	}
	// The TAP survived (persistent) and the reused slot works end to end.
	g := startGuest(t, again)
	serve(t, g.path, netip.AddrPortFrom(again.GuestAddr, guestPort).String(), "reused")
	if ident, _ := mustReach(t, "", netip.AddrPortFrom(again.HostAddr, guestPort)); ident != "reused" {
		t.Errorf("reused slot answered by %q", ident)
	}
	second := acquire(t, p)
	if second.Index == again.Index {
		t.Fatal("two slots in use share an index")
	}
}

// TestGuestNeighbourIsPermanent: the slot's namespace holds the guest's
// MAC from the start (a restored guest is not announced), keeps it while
// VMMs come and go on the TAP, and a release puts it back when it is
// missing (a slot made by an older agent).
func TestGuestNeighbourIsPermanent(t *testing.T) {
	p := newTestPool(t, nil)
	ctx := context.Background()
	s := acquire(t, p)
	steps := []struct {
		name string
		do   func() error
		want bool
	}{
		{"new slot", func() error { return nil }, true},
		{"a VMM opened and closed the TAP", func() error {
			f, err := s.OpenTap()
			if err != nil {
				return err
			}
			return f.Close()
		}, true},
		{"removed by hand", func() error {
			return inNetNS(s.NetNSPath, func() error {
				tap, err := netlink.LinkByName(tapName)
				if err != nil {
					return err
				}
				return netlink.NeighDel(&netlink.Neigh{LinkIndex: tap.Attrs().Index, Family: netlink.FAMILY_V4, IP: net.IP(s.GuestAddr.AsSlice())})
			})
		}, false},
		{"released and acquired again", func() error {
			if err := p.Release(ctx, s); err != nil {
				return err
			}
			if again := acquire(t, p); again != s {
				t.Fatalf("slot %d not reused", s.Index)
			}
			return nil
		}, true},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		var found bool
		err := inNetNS(s.NetNSPath, func() error {
			tap, err := netlink.LinkByName(tapName)
			if err != nil {
				return err
			}
			ns, err := netlink.NeighList(tap.Attrs().Index, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, n := range ns {
				if n.IP.Equal(net.IP(s.GuestAddr.AsSlice())) {
					if n.State != netlink.NUD_PERMANENT || n.HardwareAddr.String() != s.MAC {
						t.Errorf("%s: neighbour %s is %s state %#x, want %s permanent", step.name, n.IP, n.HardwareAddr, n.State, s.MAC)
					}
					found = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if found != step.want {
			t.Errorf("%s: guest neighbour present %v, want %v", step.name, found, step.want)
		}
	}
}

func TestOpenTapPersistentAndExclusive(t *testing.T) {
	p := newTestPool(t, nil)
	s := acquire(t, p)
	f, err := s.OpenTap()
	if err != nil {
		t.Fatalf("OpenTap: %v", err)
	}
	if _, err := s.OpenTap(); !errors.Is(err, unix.EBUSY) {
		t.Errorf("second OpenTap while open: %v, want EBUSY", err)
	}
	f.Close()
	f, err = s.OpenTap() // as a restored VM would
	if err != nil {
		t.Fatalf("OpenTap after close: %v", err)
	}
	f.Close()
	if want := "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"; s.KernelIPParam() != want {
		t.Errorf("KernelIPParam = %q, want %q", s.KernelIPParam(), want)
	}
}

func TestDestroyIdempotentAndNoLeaks(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	p, err := NewPool(ctx, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	fds := openFDs(t)
	for i := range 50 {
		s, err := p.Acquire(ctx)
		if err != nil {
			t.Fatalf("cycle %d: Acquire: %v", i, err)
		}
		if i%5 == 0 { // some go through Release first
			if err := p.Release(ctx, s); err != nil {
				t.Fatalf("cycle %d: Release: %v", i, err)
			}
			if s2 := acquire(t, p); s2 != s {
				t.Fatalf("cycle %d: released slot not reused", i)
			}
		}
		if err := p.Destroy(ctx, s); err != nil {
			t.Fatalf("cycle %d: Destroy: %v", i, err)
		}
		if err := p.Destroy(ctx, s); err != nil {
			t.Fatalf("cycle %d: second Destroy: %v", i, err)
		}
	}
	if left := leftovers(t); len(left) != 1 { // the host table only
		t.Errorf("after 50 cycles: %v", left)
	}
	if n := openFDs(t); n > fds {
		t.Errorf("open descriptors: %d before, %d after", fds, n)
	}
	// Close also removes what is still acquired or released.
	acquire(t, p)
	if s := acquire(t, p); p.Release(ctx, s) != nil {
		t.Fatal("Release failed")
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("after Close: %v", left)
	}
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close: %v, want ErrClosed", err)
	}
}
