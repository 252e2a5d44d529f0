package netslot

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/egress"
)

// Chain names. The host table and every slot table are called
// Config.Name; doc.go shows both rulesets in nft syntax.
const (
	chainInput       = "input"
	chainForward     = "forward"
	chainPrerouting  = "prerouting"
	chainPostrouting = "postrouting"
	chainOutput      = "output" // host only: who may open connections to slots
	chainEgress      = "egress" // slot only: the egress rules (rules.go)
	chainDNS         = "dns"    // slot only: guest DNS to the slot's resolver (rules.go)
	chainDeny        = "deny"   // slot only: how a denied packet is refused

	// The slot's sets of addresses learned by its resolver (rules.go).
	setAllowed = "allowed"
	setDenied  = "denied"
)

var (
	policyAccept = nftables.ChainPolicyAccept
	policyDrop   = nftables.ChainPolicyDrop
)

// ruleset accumulates one table's batch on a connection.
type ruleset struct {
	cc *nftables.Conn
	t  *nftables.Table
}

func newRuleset(cc *nftables.Conn, name string) *ruleset {
	return &ruleset{cc: cc, t: cc.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: name})}
}

func (r *ruleset) base(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority, policy *nftables.ChainPolicy) *nftables.Chain {
	return r.cc.AddChain(&nftables.Chain{Name: name, Table: r.t, Type: typ, Hooknum: hook, Priority: prio, Policy: policy})
}

func (r *ruleset) add(c *nftables.Chain, exprs []expr.Any) {
	r.cc.AddRule(&nftables.Rule{Table: r.t, Chain: c, Exprs: exprs})
}

// addHostTable queues the host table (in the host namespace).
func (c Config) addHostTable(cc *nftables.Conn) {
	r := newRuleset(cc, c.Name)
	slots := ifprefix(c.VethPrefix)
	eq, ne := expr.CmpOpEq, expr.CmpOpNeq

	// Slots never open connections to the host, except to the resolver.
	in := r.base(chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter, &policyAccept)
	r.add(in, rule(iif(eq, slots), ctEstablished(), accept()))
	for _, rl := range c.dnsRules(slots) {
		r.add(in, rl)
	}
	r.add(in, rule(iif(eq, slots), drop()))

	fwd := r.base(chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter, &policyAccept)
	r.add(fwd, rule(iif(eq, slots), oif(eq, slots), drop()))                      // slot to slot
	r.add(fwd, rule(oif(eq, slots), ctEstablished(), accept()))                   // replies to guests
	r.add(fwd, rule(oif(eq, slots), drop()))                                      // nothing else enters a slot
	r.add(fwd, rule(iif(eq, slots), ipInNet(ipSaddrOff, ne, c.HostCIDR), drop())) // anti-spoofing
	for _, rl := range c.dnsRules(slots) {
		r.add(fwd, rl)
	}
	// The pool's own ranges (unassigned host addresses would otherwise be
	// routed out of the host), then the configured denials.
	for _, p := range append([]netip.Prefix{c.HostCIDR, c.LinkCIDR}, c.DenyEgress...) {
		r.add(fwd, rule(iif(eq, slots), ipInNet(ipDaddrOff, eq, p), drop()))
	}
	r.add(fwd, rule(iif(eq, slots), accept()))

	post := r.base(chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, &policyAccept)
	r.add(post, rule(oif(ne, slots), ipInNet(ipSaddrOff, eq, c.HostCIDR), masquerade()))

	// Only the agent's user opens connections to the slots' addresses:
	// packets of every other local socket are rejected on their way out
	// (a TCP connect fails at once with ECONNREFUSED). Replies pass (a
	// resolver on the host, running as its own user, answers guests), and
	// so do packets without a socket (the kernel's own), which meta skuid
	// does not match.
	out := r.base(chainOutput, nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter, &policyAccept)
	r.add(out, rule(ctEstablished(), accept()))
	for _, p := range []netip.Prefix{c.HostCIDR, c.LinkCIDR} {
		others := rule(ipInNet(ipDaddrOff, eq, p), skuid(ne, c.agentUID()))
		r.add(out, rule(others, l4proto(unix.IPPROTO_TCP), rejectReset()))
		r.add(out, rule(others, rejectAdmin()))
	}
}

// dnsRules: iifname "<slots>*" ip daddr <DNS> udp|tcp dport 53 accept
func (c Config) dnsRules(slots []byte) [][]expr.Any {
	if !c.DNS.IsValid() {
		return nil
	}
	var out [][]expr.Any
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		out = append(out, rule(iif(expr.CmpOpEq, slots), ipAddr(ipDaddrOff, expr.CmpOpEq, c.DNS), l4proto(proto), dport(53), accept()))
	}
	return out
}

// addSlotTable queues the table of one slot namespace.
// Its egress and dns chains hold the rules of policy p.
func (pl plan) addSlotTable(cc *nftables.Conn, name string, dnsAddr netip.Addr, p egress.Policy) {
	r := newRuleset(cc, name)
	veth, tap := ifname(vethName), ifname(tapName)
	eq, ne := expr.CmpOpEq, expr.CmpOpNeq

	// Only connections the host opens (from its end of the veth) are
	// translated to the guest: a packet of the outside world that arrives
	// after the guest's flows were forgotten (a rules change) must not
	// open a flow to the guest that its replies would then follow past
	// the egress rules.
	r.cc.AddChain(&nftables.Chain{Name: chainDNS, Table: r.t})
	pre := r.base(chainPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest, &policyAccept)
	r.add(pre, rule(iif(eq, tap), jump(chainDNS)))
	r.add(pre, rule(iif(eq, veth), ipAddr(ipSaddrOff, eq, pl.linkHost), ipAddr(ipDaddrOff, eq, pl.hostAddr), natTo(expr.NATTypeDestNAT, pl.guest)))

	post := r.base(chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, &policyAccept)
	r.add(post, rule(oif(eq, veth), ipAddr(ipSaddrOff, eq, pl.guest), natTo(expr.NATTypeSourceNAT, pl.hostAddr)))
	// The peeker's connections (opened in the namespace) leave as the guest's.
	r.add(post, rule(oif(eq, veth), ipAddr(ipSaddrOff, eq, pl.linkSlot), natTo(expr.NATTypeSourceNAT, pl.hostAddr)))

	in := r.base(chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter, &policyDrop)
	r.add(in, rule(ctEstablished(), accept()))
	r.add(in, rule(iif(eq, ifname("lo")), accept()))
	r.add(in, rule(icmpEchoRequest(), accept())) // the guest may ping its gateway
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		// The slot's resolver (listening only while the rules name domains).
		r.add(in, rule(iif(eq, tap), ipAddr(ipDaddrOff, eq, pl.gateway), l4proto(proto), dport(53), accept()))
	}
	for _, port := range []uint16{peekHTTPPort, peekTLSPort} {
		r.add(in, rule(iif(eq, tap), ipAddr(ipDaddrOff, eq, pl.gateway), l4proto(unix.IPPROTO_TCP), dport(port), accept()))
	}

	addLearnedSets(cc, r.t)
	deny := r.cc.AddChain(&nftables.Chain{Name: chainDeny, Table: r.t})
	r.add(deny, rule(l4proto(unix.IPPROTO_TCP), rejectReset())) // also cuts an open connection
	r.add(deny, rule(rejectAdmin()))
	r.cc.AddChain(&nftables.Chain{Name: chainEgress, Table: r.t})
	pl.queueRules(cc, r.t, dnsAddr, p, nil)

	fwd := r.base(chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter, &policyDrop)
	r.add(fwd, rule(ctEstablished(), accept()))
	r.add(fwd, rule(iif(eq, veth), oif(eq, tap), ctDNAT(), accept())) // host to guest
	r.add(fwd, rule(iif(eq, tap), ipAddr(ipSaddrOff, ne, pl.guest), drop()))
	r.add(fwd, rule(iif(eq, tap), oif(eq, veth), jump(chainEgress)))
	r.add(fwd, rule(iif(eq, tap), rejectAdmin()))
}

// deleteTable deletes the IPv4 table name in cc's namespace if it exists.
func deleteTable(cc *nftables.Conn, name string) (bool, error) {
	tables, err := cc.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			cc.DelTable(t)
			if err := cc.Flush(); err != nil {
				return false, fmt.Errorf("delete nftables table %s: %w", name, err)
			}
			return true, nil
		}
	}
	return false, nil
}
