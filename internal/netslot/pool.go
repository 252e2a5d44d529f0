package netslot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Pool owns the network slots of one host: the host nftables table, the
// slot namespaces and their interfaces. At most one Pool per Config.Name
// exists on a host at a time (a lock file enforces it). Its methods are
// safe for concurrent use.
type Pool struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File

	mu     sync.Mutex
	closed bool
	slots  map[int]*Slot // by index; nil while being created
	free   []*Slot       // released, reusable (LIFO)
	ops    sync.WaitGroup
}

// NewPool prepares the host for slots: it takes the pool's lock, removes
// what a previous pool of the same name left behind (namespaces
// <Name>-<n>, host interfaces <VethPrefix><n>, the nftables table <Name>),
// checks that the address ranges are free on the host, installs the host
// nftables table and enables IPv4 forwarding. Slots are created on demand
// by Acquire.
func NewPool(ctx context.Context, cfg Config) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("netslot config: %w", err)
	}
	lock, err := lockPool(cfg)
	if err != nil {
		return nil, err
	}
	p := &Pool{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "netslot", "pool", cfg.Name),
		lock:  lock,
		slots: make(map[int]*Slot),
	}
	if err := p.init(ctx); err != nil {
		lock.Close()
		return nil, err
	}
	p.log.Info("network slot pool ready", "host_cidr", cfg.HostCIDR, "link_cidr", cfg.LinkCIDR,
		"guest_net", cfg.GuestNet, "max_slots", cfg.MaxSlots, "egress_default", cfg.EgressDefault)
	return p, nil
}

func (p *Pool) init(ctx context.Context) error {
	if err := prepareNetNSDir(); err != nil {
		return err
	}
	if err := p.cleanStale(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkHostRanges(p.cfg, p.keptLinks()); err != nil {
		return err
	}
	cc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	p.cfg.addHostTable(cc)
	if err := cc.Flush(); err != nil {
		return fmt.Errorf("install host nftables table %s: %w", p.cfg.Name, err)
	}
	changed, err := enableForwarding()
	if err != nil {
		if _, derr := deleteTable(cc, p.cfg.Name); derr != nil {
			err = errors.Join(err, derr)
		}
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	if changed {
		p.log.Info("enabled IPv4 forwarding on the host (net.ipv4.ip_forward=1); it stays on")
	}
	return nil
}

// cleanStale removes every slot, host interface and table matching the
// pool's names. Holding the lock, the pool knows none of them is in use:
// they were left by a pool that died without Close.
func (p *Pool) cleanStale() error {
	nsIdx, err := listNetNS(p.cfg.Name)
	if err != nil {
		return err
	}
	linkIdx, err := hostLinks(p.cfg)
	if err != nil {
		return err
	}
	idx := slices.Compact(slices.Sorted(slices.Values(append(nsIdx, linkIdx...))))
	var errs []error
	var kept []int
	for _, i := range idx {
		if p.cfg.KeepSlots && i <= p.cfg.MaxSlots && slices.Contains(nsIdx, i) && slices.Contains(linkIdx, i) {
			s := newSlot(p, p.cfg.plan(i))
			s.state = stateKept
			s.kept, s.applied = true, false // its rules are what its table holds
			p.slots[i] = s
			kept = append(kept, i)
			continue
		}
		if err := p.destroySlot(p.cfg.plan(i)); err != nil {
			errs = append(errs, err)
		}
	}
	idx = slices.DeleteFunc(idx, func(i int) bool { return slices.Contains(kept, i) })
	if len(kept) > 0 {
		p.log.Info("kept the network slots of a previous pool for their sandboxes", "slots", kept)
	}
	cc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	deleted, err := deleteTable(cc, p.cfg.Name)
	if err != nil {
		errs = append(errs, err)
	}
	if len(idx) > 0 || deleted {
		p.log.Warn("removed stale network slots", "slots", idx, "table", deleted)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean stale slots: %w", err)
	}
	return nil
}

// keptLinks returns the host interface indexes of the kept slots (their
// addresses and routes are the pool's own, not a clash with the host).
func (p *Pool) keptLinks() map[int]bool {
	out := map[int]bool{}
	for _, s := range p.slots {
		if s != nil && s.state == stateKept {
			if l, err := netlink.LinkByName(s.HostVeth); err == nil {
				out[l.Attrs().Index] = true
			}
		}
	}
	return out
}

// Claim takes back slot index that NewPool kept (Config.KeepSlots) for
// the VM that still uses it; the slot is then acquired, as if by
// Acquire. Its egress is what it was; set it with SetEgress.
func (p *Pool) Claim(index int) (*Slot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	s := p.slots[index]
	if s == nil || s.state != stateKept {
		return nil, fmt.Errorf("claim slot %d: %w", index, ErrNotInUse)
	}
	s.state = stateInUse
	p.log.Info("slot claimed", "slot", index)
	return s, nil
}

// DropUnclaimed removes the kept slots that nobody claimed.
func (p *Pool) DropUnclaimed(_ context.Context) error {
	p.mu.Lock()
	var drop []*Slot
	for _, s := range p.slots {
		if s != nil && s.state == stateKept {
			s.state = stateBusy
			drop = append(drop, s)
		}
	}
	p.ops.Add(1)
	p.mu.Unlock()
	defer p.ops.Done()
	var errs []error
	for _, s := range drop {
		if err := p.destroy(s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Acquire returns a slot for a new sandbox: a released one when there is
// one, else a new one. The slot's egress is Config.EgressDefault.
func (p *Pool) Acquire(ctx context.Context) (*Slot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		s.state = stateInUse
		p.mu.Unlock()
		p.log.Debug("slot reused", "slot", s.Index)
		return s, nil
	}
	index := 0
	for i := 1; i <= p.cfg.MaxSlots; i++ {
		if _, taken := p.slots[i]; !taken {
			index = i
			break
		}
	}
	if index == 0 {
		p.mu.Unlock()
		return nil, ErrExhausted
	}
	p.slots[index] = nil // reserved
	p.ops.Add(1)
	p.mu.Unlock()
	defer p.ops.Done()

	pl := p.cfg.plan(index)
	err := p.createSlot(ctx, pl)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		delete(p.slots, index)
		return nil, err
	}
	s := newSlot(p, pl)
	s.state = stateInUse
	p.slots[index] = s
	p.log.Info("slot created", "slot", index, "netns", pl.netns, "host_addr", pl.hostAddr)
	return s, nil
}

// Release returns a slot for reuse after its sandbox stopped. The slot is
// reset: egress back to Config.EgressDefault and its connection tracking
// flushed; the TAP stays. While a VM still holds the TAP, Release fails
// with an error matching ErrTapBusy and the slot stays acquired. When the
// reset fails otherwise, the slot is destroyed instead.
func (p *Pool) Release(ctx context.Context, s *Slot) error {
	if err := p.begin(s, stateInUse); err != nil {
		return fmt.Errorf("release %v: %w", s, err)
	}
	defer p.ops.Done()
	if err := s.tapFree(); err != nil {
		p.mu.Lock()
		s.state = stateInUse
		p.mu.Unlock()
		return fmt.Errorf("release %v: %w", s, err)
	}
	err := s.reset(ctx)
	p.mu.Lock()
	if err == nil {
		s.state = stateFree
		p.free = append(p.free, s)
		p.mu.Unlock()
		p.log.Debug("slot released", "slot", s.Index)
		return nil
	}
	p.mu.Unlock()
	err = fmt.Errorf("release %v: reset: %w", s, err)
	if derr := p.destroy(s); derr != nil {
		err = errors.Join(err, derr)
	}
	return err
}

// tapFree fails with ErrTapBusy while a descriptor is attached to the
// slot's TAP. It attaches and detaches once to find out.
func (s *Slot) tapFree() error {
	f, err := s.OpenTap()
	if errors.Is(err, unix.EBUSY) {
		return ErrTapBusy
	}
	if err == nil {
		f.Close()
	}
	return nil // any other problem shows in reset
}

// reset restores a slot to its initial state.
func (s *Slot) reset(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.applyRules(rulesOf(s.pool.cfg.EgressDefault), policyOf(s.pool.cfg.EgressDefault)); err != nil {
		return err
	}
	log := s.pool.log.With("slot", s.Index)
	// A slot kept from an older agent may lack the guest's neighbour entry.
	pl := s.pool.cfg.plan(s.Index)
	if err := inNetNS(s.NetNSPath, func() error { flushFlows(log); return setGuestNeigh(pl) }); err != nil {
		return err
	}
	forgetHostFlows(log, s.HostAddr)
	return nil
}

// Destroy removes a slot entirely (namespace, TAP, veth, route, rules),
// whether acquired or released. The VM should have exited; a TAP still
// held open is deleted anyway. Destroying a destroyed slot does nothing.
func (p *Pool) Destroy(_ context.Context, s *Slot) error {
	p.mu.Lock()
	if s.pool != p || p.slots[s.Index] != s || s.state == stateBusy {
		// Foreign, already destroyed, or being destroyed by another call.
		p.mu.Unlock()
		return nil
	}
	s.state = stateBusy
	p.ops.Add(1)
	p.mu.Unlock()
	defer p.ops.Done()
	return p.destroy(s)
}

// destroy removes s; s must be marked busy by the caller.
func (p *Pool) destroy(s *Slot) error {
	p.mu.Lock()
	s.state = stateBusy
	p.free = slices.DeleteFunc(p.free, func(f *Slot) bool { return f == s })
	p.mu.Unlock()
	s.closeResolver()
	err := p.destroySlot(s.plan)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		s.state = stateBroken // kept: Destroy or Close retry
		return err
	}
	s.state = stateDestroyed
	delete(p.slots, s.Index)
	p.log.Info("slot destroyed", "slot", s.Index)
	return nil
}

// begin marks s busy for an operation if it is in state want.
func (p *Pool) begin(s *Slot, want slotState) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if s.pool != p || p.slots[s.Index] != s || s.state != want {
		return ErrNotInUse
	}
	s.state = stateBusy
	p.ops.Add(1)
	return nil
}

// live reports whether s is an existing slot of p (acquired, or being
// reset by Release).
func (p *Pool) live(s *Slot) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return s.pool == p && p.slots[s.Index] == s && (s.state == stateInUse || s.state == stateBusy)
}

// Close destroys every slot, acquired or not, and the host table, then
// gives up the pool's name. IPv4 forwarding stays on. It waits for the
// calls in progress; afterwards other calls fail with ErrClosed. Closing
// a closed pool does nothing.
func (p *Pool) Close(_ context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.ops.Wait()

	p.mu.Lock()
	var all []*Slot
	for _, s := range p.slots {
		if s != nil {
			all = append(all, s)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, s := range all {
		if err := p.destroy(s); err != nil {
			errs = append(errs, err)
		}
	}
	cc, err := nftables.New()
	if err == nil {
		_, err = deleteTable(cc, p.cfg.Name)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("delete host table: %w", err))
	}
	if err := p.lock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("release lock: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		p.log.Error("network slot pool closed with errors; the next pool start cleans the rest", "err", err)
		return fmt.Errorf("close pool: %w", err)
	}
	p.log.Info("network slot pool closed", "slots_destroyed", len(all))
	return nil
}

// Config returns the pool's configuration with defaults filled in.
func (p *Pool) Config() Config { return p.cfg }
