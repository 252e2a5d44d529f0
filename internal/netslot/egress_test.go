package netslot

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/capsulehq/capsule/internal/testenv"
)

// DNS to Config.DNS is allowed through DenyEgress and through the host
// input rules, but it is still egress: off means no DNS either.
func TestDNSAndDenyEgress(t *testing.T) {
	testenv.RequireRoot(t)
	t.Run("remote resolver in a denied range", func(t *testing.T) {
		p := newTestPool(t, func(c *Config) {
			c.DNS = inetAddr
			c.DenyEgress = []netip.Prefix{inetNet}
			c.EgressDefault = true
		})
		in := startInternet(t)
		serve(t, in.path, netip.AddrPortFrom(inetAddr, 53).String(), "resolver")
		serve(t, in.path, netip.AddrPortFrom(inetAddr, 80).String(), "web")
		s := acquire(t, p)
		g := startGuest(t, s)
		if ident, _ := mustReach(t, g.path, netip.AddrPortFrom(inetAddr, 53)); ident != "resolver" {
			t.Errorf("answered by %q", ident)
		}
		mustNotReach(t, g.path, netip.AddrPortFrom(inetAddr, 80))
		if err := s.SetEgress(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		mustNotReach(t, g.path, netip.AddrPortFrom(inetAddr, 53))
	})
	t.Run("resolver on the host", func(t *testing.T) {
		p := newTestPool(t, func(c *Config) {
			c.DNS = inetHostAddr
			c.EgressDefault = true
		})
		startInternet(t) // gives the host the address inetHostAddr
		serve(t, "", netip.AddrPortFrom(inetHostAddr, 53).String(), "host-resolver")
		serve(t, "", netip.AddrPortFrom(inetHostAddr, 7002).String(), "host-service")
		s := acquire(t, p)
		g := startGuest(t, s)
		if ident, _ := mustReach(t, g.path, netip.AddrPortFrom(inetHostAddr, 53)); ident != "host-resolver" {
			t.Errorf("answered by %q", ident)
		}
		mustNotReach(t, g.path, netip.AddrPortFrom(inetHostAddr, 7002))
		if err := s.SetEgress(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		mustNotReach(t, g.path, netip.AddrPortFrom(inetHostAddr, 53))
	})
}

func TestConcurrentAcquireAndExhaustion(t *testing.T) {
	const n = 6
	p := newTestPool(t, func(c *Config) { c.MaxSlots = n })
	ctx := context.Background()
	slots := make([]*Slot, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { slots[i], errs[i] = p.Acquire(ctx) })
	}
	wg.Wait()
	seen := map[int]bool{}
	for i, s := range slots {
		if errs[i] != nil {
			t.Fatalf("Acquire: %v", errs[i])
		}
		if seen[s.Index] {
			t.Fatalf("index %d handed out twice", s.Index)
		}
		seen[s.Index] = true
	}
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Acquire beyond MaxSlots: %v, want ErrExhausted", err)
	}
	for _, s := range slots {
		wg.Go(func() {
			if err := p.Destroy(ctx, s); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if left := leftovers(t); len(left) != 1 {
		t.Errorf("left %v", left)
	}
}
