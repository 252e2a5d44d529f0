package netslot

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/capsulehq/capsule/internal/egress"
)

// Slot is one sandbox's network: a namespace holding the VM's TAP and one
// end of a veth pair to the host. Its fields are fixed for its lifetime
// and must not be modified.
type Slot struct {
	// Index identifies the slot in the pool (1..MaxSlots).
	Index int
	// Name is the namespace's name, <Config.Name>-<Index>.
	Name string
	// NetNSPath is the namespace's bind mount, /run/netns/<Name>.
	NetNSPath string
	// HostVeth is the host end of the veth pair, <Config.VethPrefix><Index>.
	HostVeth string
	// HostAddr is how the host reaches the guest: connections from the
	// host to HostAddr are translated to GuestAddr.
	HostAddr netip.Addr
	// GuestAddr, Gateway and Prefix configure the guest's eth0; they are
	// the same in every slot, so snapshots are portable between slots.
	GuestAddr netip.Addr
	Gateway   netip.Addr
	Prefix    int
	// MAC is the guest's MAC address, the same in every slot (it is part
	// of a snapshot's device state). Pass it to the VMM.
	MAC string

	pool *Pool
	plan plan

	mu      sync.Mutex    // serializes egress changes
	egress  bool          // guarded by mu: the rules let something out
	rules   egress.Rules  // guarded by mu
	policy  egress.Policy // guarded by mu: rules, parsed
	applied bool          // guarded by mu: the table holds rules (false for a kept slot until its first SetRules)
	kept    bool          // left by a previous pool and claimed
	res     *resolver     // guarded by mu: the slot's DNS resolver while the rules name domains
	state   slotState     // guarded by pool.mu
}

type slotState int

const (
	stateCreating slotState = iota
	stateInUse
	stateFree      // released, ready for reuse
	stateBusy      // being reset or destroyed
	stateBroken    // a reset or destroy failed; Destroy or Close retry
	stateDestroyed // gone
	stateKept      // left by a previous pool (Config.KeepSlots), not yet claimed
)

func newSlot(p *Pool, pl plan) *Slot {
	return &Slot{
		Index:     pl.index,
		Name:      pl.netns,
		NetNSPath: netnsPath(pl.netns),
		HostVeth:  pl.hostVeth,
		HostAddr:  pl.hostAddr,
		GuestAddr: pl.guest,
		Gateway:   pl.gateway,
		Prefix:    pl.bits,
		MAC:       macFor(pl.guest).String(),
		pool:      p,
		plan:      pl,
		egress:    p.cfg.EgressDefault,
		rules:     rulesOf(p.cfg.EgressDefault),
		policy:    policyOf(p.cfg.EgressDefault),
		applied:   true,
	}
}

func netnsPath(name string) string { return netnsDir + "/" + name }

// OpenTap opens the slot's TAP device (IFF_TAP|IFF_NO_PI) and returns the
// descriptor to hand to the VMM, e.g. as QEMU's -netdev tap,fd=N. The TAP
// is persistent: it exists whether or not it is open, so a restored VM
// reopens it the same way. It is single-queue: only one descriptor can be
// attached at a time (a second OpenTap fails with EBUSY until the first
// is closed). The caller owns the file.
func (s *Slot) OpenTap() (*os.File, error) {
	var f *os.File
	err := inNetNS(s.NetNSPath, func() error {
		var err error
		f, err = openTap(tapName)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("slot %d: %w", s.Index, err)
	}
	return f, nil
}

// Egress reports whether the slot's rules let the guest reach anything
// beyond its gateway.
func (s *Slot) Egress() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.egress
}

// SetEgress allows (on: egress.Open) or forbids (off: egress.Closed)
// connections from the guest to anything beyond its gateway, replacing
// the slot's rules (SetRules). It takes effect at once: turning egress
// off also drops the connections the guest had opened. Connections the
// host opened to the guest are never affected.
func (s *Slot) SetEgress(ctx context.Context, on bool) error {
	return s.SetRules(ctx, rulesOf(on))
}

// KernelIPParam is the guest kernel's ip= parameter for eth0:
// ip=<guest>::<gateway>:<netmask>::eth0:off[:<dns>].
func (s *Slot) KernelIPParam() string {
	p := fmt.Sprintf("ip=%s::%s:%s::%s:off", s.GuestAddr, s.Gateway, netmask(s.Prefix), guestIfName)
	if dns := s.pool.cfg.DNS; dns.IsValid() {
		p += ":" + dns.String()
	}
	return p
}

// String names the slot in logs.
func (s *Slot) String() string {
	return fmt.Sprintf("slot %d (%s, host %s)", s.Index, s.Name, s.HostAddr)
}

// Errors.
var (
	// ErrExhausted is returned by Acquire when MaxSlots slots exist.
	ErrExhausted = errors.New("netslot: all slots in use")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("netslot: pool closed")
	// ErrNotInUse is returned for a slot that is not acquired from this
	// pool (released, destroyed or foreign).
	ErrNotInUse = errors.New("netslot: slot not in use")
	// ErrTapBusy is returned by Release while a VM still holds the TAP.
	ErrTapBusy = errors.New("netslot: tap still attached (is the VM still running?)")
	// ErrInvalidRules is returned by SetRules for rules that do not parse.
	ErrInvalidRules = errors.New("netslot: invalid egress rules")
	// ErrLocked is returned by NewPool when another live pool, in this
	// process or another, owns the same Config.Name.
	ErrLocked = errors.New("netslot: pool name in use by another pool")
)
