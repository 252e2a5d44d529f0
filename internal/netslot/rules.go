package netslot

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/egress"
)

// Egress rules of a slot (see doc.go, "Egress rules"): the slot table's
// egress chain is the policy in nft, its dns chain sends the guest's DNS
// to the slot's resolver while the rules name domains, and the sets
// "allowed" and "denied" hold the addresses that resolver answered.

// learnedSet is one of the slot's sets of resolver-learned addresses;
// elements carry their own timeout (the DNS record's TTL, bounded).
func learnedSet(t *nftables.Table, name string) *nftables.Set {
	return &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIPAddr, HasTimeout: true}
}

// addLearnedSets queues the creation of both sets (a no-op for sets that
// exist).
func addLearnedSets(cc *nftables.Conn, t *nftables.Table) {
	for _, name := range []string{setAllowed, setDenied} {
		_ = cc.AddSet(learnedSet(t, name), nil) // only fails for anonymous sets
	}
}

// learned is the content to give the learned sets: address → remaining
// lifetime.
type learned struct {
	allowed, denied map[netip.Addr]time.Duration
}

// queueRules queues the replacement of the egress and dns chains of the
// slot table t by policy p, and, when l is not nil, of the learned sets'
// content by l. dnsAddr is Config.DNS (accepted before the rules while
// the slot's resolver is not in use).
func (pl plan) queueRules(cc *nftables.Conn, t *nftables.Table, dnsAddr netip.Addr, p egress.Policy, l *learned) {
	eq := expr.CmpOpEq
	tap := ifname(tapName)
	eg := &nftables.Chain{Name: chainEgress, Table: t}
	dns := &nftables.Chain{Name: chainDNS, Table: t}
	cc.FlushChain(eg)
	cc.FlushChain(dns)
	add := func(c *nftables.Chain, exprs []expr.Any) {
		cc.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: exprs})
	}
	deny := &expr.Verdict{Kind: expr.VerdictGoto, Chain: chainDeny}
	tcp, udp := byte(unix.IPPROTO_TCP), byte(unix.IPPROTO_UDP)

	if p.HasNames() {
		// Every DNS query of the guest, whatever server it names, is
		// answered by the slot's resolver; DNS over TLS is refused.
		for _, proto := range []byte{udp, tcp} {
			add(dns, rule(iif(eq, tap), l4proto(proto), dport(53), natToPort(pl.gateway, 53)))
		}
		// HTTP and HTTPS go through the peeker, which checks the name
		// in the connection (peek.go).
		add(dns, rule(iif(eq, tap), l4proto(tcp), dport(80), natToPort(pl.gateway, peekHTTPPort)))
		add(dns, rule(iif(eq, tap), l4proto(tcp), dport(443), natToPort(pl.gateway, peekTLSPort)))
		add(eg, rule(l4proto(tcp), dport(853), deny))
		// QUIC (HTTP/3) carries its name where the peeker cannot read it:
		// refused, clients fall back to TCP.
		add(eg, rule(l4proto(udp), dport(443), deny))
	} else if dnsAddr.IsValid() && !closed(p) {
		for _, proto := range []byte{udp, tcp} {
			add(eg, rule(ipAddr(ipDaddrOff, eq, dnsAddr), l4proto(proto), dport(53), accept()))
		}
	}
	for _, n := range egress.AlwaysDenied {
		add(eg, rule(ipInNet(ipDaddrOff, eq, n), deny))
	}
	for _, n := range p.AllowNets {
		add(eg, rule(ipInNet(ipDaddrOff, eq, n), accept()))
	}
	for _, n := range p.DenyNets {
		add(eg, rule(ipInNet(ipDaddrOff, eq, n), deny))
	}
	allowed, denied := learnedSet(t, setAllowed), learnedSet(t, setDenied)
	if p.DenyByDefault {
		add(eg, rule(ipInSet(allowed), accept()))
		add(eg, rule(deny))
	} else {
		add(eg, rule(ipInSet(denied), deny))
		add(eg, rule(accept()))
	}
	if l != nil {
		for set, m := range map[*nftables.Set]map[netip.Addr]time.Duration{allowed: l.allowed, denied: l.denied} {
			cc.FlushSet(set)
			var els []nftables.SetElement
			for a, ttl := range m {
				els = append(els, nftables.SetElement{Key: a.AsSlice(), Timeout: ttl})
			}
			if len(els) > 0 {
				_ = cc.SetAddElements(set, els) // only fails for anonymous sets
			}
		}
	}
}

// closed reports whether p lets nothing out (no DNS either).
func closed(p egress.Policy) bool {
	return p.DenyByDefault && len(p.AllowNets) == 0 && len(p.AllowNames) == 0
}

// ipInSet: ip daddr @<set>
func ipInSet(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipDaddrOff, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

// natToPort: dnat to <a>:<port> (after an l4proto match)
func natToPort(a netip.Addr, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a.AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
	}
}

func policyOf(on bool) egress.Policy {
	if on {
		return egress.Policy{}
	}
	return egress.Policy{DenyByDefault: true}
}

func rulesOf(on bool) egress.Rules {
	if on {
		return egress.Open()
	}
	return egress.Closed()
}

// Rules returns the slot's egress rules.
func (s *Slot) Rules() egress.Rules {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rules
}

// SetRules replaces the slot's egress rules (package egress says what
// they mean). It takes effect at once, for open connections too: the
// guest's connection tracking is forgotten, so the next packet of every
// flow the guest had opened is checked against the new rules, and a TCP
// connection they deny is reset. Setting the rules a slot already has
// changes nothing (this is how a restarted agent re-applies the rules of a
// slot it claimed back without cutting anything). Connections the host
// opened to the guest are never affected. Rules that do not parse are an
// error wrapping ErrInvalidRules, and change nothing.
func (s *Slot) SetRules(ctx context.Context, r egress.Rules) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := egress.Parse(r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRules, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pool.live(s) {
		return fmt.Errorf("slot %d: %w", s.Index, ErrNotInUse)
	}
	if s.applied && s.rules.Equal(r) {
		return nil
	}
	if err := s.applyRules(r, p); err != nil {
		return err
	}
	s.pool.log.Debug("slot egress rules", "slot", s.Index, "allow_internet", r.AllowInternet,
		"allow_out", len(r.AllowOut), "deny_out", len(r.DenyOut))
	return nil
}

// applyRules installs r (parsed: p); s.mu must be held.
func (s *Slot) applyRules(r egress.Rules, p egress.Policy) error {
	// The resolver runs while the rules name domains; it keeps what it
	// learned across changes (an address stays allowed for the rest of
	// its TTL if the new rules still allow one of its names).
	res := s.res
	if p.HasNames() && res == nil {
		var err error
		if res, err = startResolver(s); err != nil {
			return fmt.Errorf("slot %d: start resolver: %w", s.Index, err)
		}
	}
	keep := s.kept && !s.applied // re-applying after a Claim: the sets are the truth
	var l *learned
	if res != nil {
		// Held until the sets are replaced: no answer of the resolver
		// falls between the content computed here and the new sets.
		res.mu.Lock()
		res.policy = p
		l = res.learnedLocked()
	} else {
		l = &learned{}
	}
	if keep {
		l = nil
	}
	err := inNetNS(s.NetNSPath, func() error {
		cc, err := nftables.New()
		if err != nil {
			return err
		}
		t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: s.pool.cfg.Name}
		addLearnedSets(cc, t)
		s.plan.queueRules(cc, t, s.pool.cfg.DNS, p, l)
		if err := cc.Flush(); err != nil {
			return err
		}
		if s.applied && !keep {
			forgetGuestFlows(s.pool.log, s.plan.guest)
		}
		return nil
	})
	if res != nil {
		if err != nil {
			res.policy = s.policy // still the old rules
		} else {
			res.closeDisallowedLocked()
		}
		res.mu.Unlock()
	}
	if err != nil {
		if res != nil && res != s.res {
			res.close()
		}
		return fmt.Errorf("slot %d: set egress rules: %w", s.Index, err)
	}
	if !p.HasNames() && res != nil {
		res.close()
		res = nil
	}
	s.res = res
	s.rules, s.policy, s.applied = r, p, true
	s.egress = !closed(p)
	return nil
}

// closeResolver stops the slot's resolver, if any.
func (s *Slot) closeResolver() {
	s.mu.Lock()
	res := s.res
	s.res = nil
	s.mu.Unlock()
	if res != nil {
		res.close()
	}
}
