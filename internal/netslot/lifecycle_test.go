package netslot

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/capsulehq/capsule/internal/testenv"
)

// crash drops the pool as a killed agent would: the kernel releases the
// lock, nothing is cleaned.
func (p *Pool) crash() { p.lock.Close() }

func TestCrashLeftoversAreCleaned(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	old, err := NewPool(ctx, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	var slots []*Slot
	for range 3 {
		slots = append(slots, acquire(t, old))
	}
	// A VM of the crashed agent still holds its TAP.
	vm, err := slots[1].OpenTap()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()

	if _, err := NewPool(ctx, testConfig(t)); !errors.Is(err, ErrLocked) {
		t.Fatalf("second live pool: %v, want ErrLocked", err)
	}
	old.crash()

	p := newTestPool(t, nil)
	left := leftovers(t)
	if len(left) != 1 || !strings.HasPrefix(left[0], "nftables table") {
		t.Errorf("after restart: %v, want only the new host table", left)
	}
	if _, err := vm.Write(make([]byte, 64)); err == nil {
		t.Error("the stale slot's TAP still accepts frames")
	}
	// The new pool starts from index 1 again and works.
	s := acquire(t, p)
	if s.Index != 1 {
		t.Errorf("first slot after restart has index %d", s.Index)
	}
	g := startGuest(t, s)
	serve(t, g.path, netip.AddrPortFrom(s.GuestAddr, guestPort).String(), "after-crash")
	if ident, _ := mustReach(t, "", netip.AddrPortFrom(s.HostAddr, guestPort)); ident != "after-crash" {
		t.Errorf("answered by %q", ident)
	}
}

func TestCreateRollsBack(t *testing.T) {
	p := newTestPool(t, nil)
	injected := errors.New("injected failure")
	for _, step := range []string{"netns", "inside", "veth", "host", "slot"} {
		failpoint = func(s string) error {
			if s == step {
				return injected
			}
			return nil
		}
		_, err := p.Acquire(context.Background())
		failpoint = nil
		if !errors.Is(err, injected) {
			t.Fatalf("fail after %s: Acquire: %v, want the injected error", step, err)
		}
		if left := leftovers(t); len(left) != 1 {
			t.Errorf("fail after %s: left %v", step, left)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with a canceled context: %v", err)
	}
	if left := leftovers(t); len(left) != 1 {
		t.Errorf("canceled: left %v", left)
	}
	if s := acquire(t, p); s.Index != 1 {
		t.Errorf("after rollbacks the first slot has index %d", s.Index)
	}
}

func TestRangesClashingWithHostRoutesAreRefused(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/24"), // local table: lo
		inetNet,                               // a route the test adds
	} {
		if bad == inetNet {
			startInternet(t)
		}
		cfg := testConfig(t)
		cfg.LinkCIDR = bad
		cfg.MaxSlots = 1
		p, err := NewPool(ctx, cfg)
		if err == nil {
			p.Close(ctx)
			t.Fatalf("LinkCIDR %s accepted", bad)
		}
		if !strings.Contains(err.Error(), "overlaps") {
			t.Errorf("LinkCIDR %s: %v", bad, err)
		}
		t.Logf("LinkCIDR %s: %v", bad, err)
	}
	if hostTableExists(t) {
		t.Error("a refused pool left its host table")
	}
	after, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) < len(routes) {
		t.Errorf("routes: %d before, %d after", len(routes), len(after))
	}
	newTestPool(t, nil) // the lock was released
}

// TestCrashKeptSlotsAreClaimed: with KeepSlots, a pool that restarts after
// a crash keeps the slots it finds (their VMs may still run): a claimed
// slot keeps its guest reachable on the same host address, a new slot
// takes a free index, and DropUnclaimed removes the slots nobody took.
func TestCrashKeptSlotsAreClaimed(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	old, err := NewPool(ctx, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	live, dead := acquire(t, old), acquire(t, old)
	g := startGuest(t, live)
	serve(t, g.path, netip.AddrPortFrom(live.GuestAddr, guestPort).String(), "survivor")
	old.crash()

	p := newTestPool(t, func(c *Config) { c.KeepSlots = true })
	t.Run("claimed slot keeps its guest reachable", func(t *testing.T) {
		s, err := p.Claim(live.Index)
		if err != nil {
			t.Fatal(err)
		}
		if s.HostAddr != live.HostAddr {
			t.Fatalf("claimed slot's host address %s, was %s", s.HostAddr, live.HostAddr)
		}
		if ident, _ := mustReach(t, "", netip.AddrPortFrom(s.HostAddr, guestPort)); ident != "survivor" {
			t.Fatalf("answered by %q", ident)
		}
		if _, err := p.Claim(live.Index); !errors.Is(err, ErrNotInUse) {
			t.Fatalf("second claim: %v, want ErrNotInUse", err)
		}
	})
	t.Run("new slots take free indexes", func(t *testing.T) {
		s := acquire(t, p)
		if s.Index == live.Index || s.Index == dead.Index {
			t.Fatalf("new slot took kept index %d", s.Index)
		}
		if err := p.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unclaimed slots are dropped", func(t *testing.T) {
		if err := p.DropUnclaimed(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(netnsPath(dead.Name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("unclaimed slot's namespace: %v", err)
		}
		if _, err := os.Stat(netnsPath(live.Name)); err != nil {
			t.Fatalf("claimed slot's namespace: %v", err)
		}
		if _, err := p.Claim(dead.Index); !errors.Is(err, ErrNotInUse) {
			t.Fatalf("claim of a dropped slot: %v", err)
		}
	})
}
