// Package egress is a sandbox's outbound network policy: the E2B
// `network` rules (allowOut, denyOut, allow_internet_access) in the form
// that both sides store and exchange (Rules), and their parsed, checked
// form (Policy) with the matching rules that the host enforces.
//
// It is pure (no I/O, nothing of Capsule's) so that the control plane
// validates a request with exactly the code the host agent enforces it
// with, and neither side pulls in the other.
//
// # Precedence
//
// E2B's rules, made exact:
//
//   - The default for destinations that no list names is "allow" unless
//     AllowInternet is false or DenyOut holds 0.0.0.0/0 (E2B's
//     ALL_TRAFFIC): then it is "deny".
//   - Addresses: an AllowOut CIDR or IP beats a DenyOut one (E2B: "allowed
//     addresses always take precedence"); a DenyOut CIDR beats an address
//     that was learned by resolving an allowed name (so a denied range
//     stays denied whatever name points into it).
//   - Names (exact "api.example.com" or wildcard "*.example.com", which
//     matches every name below example.com but not example.com itself):
//     a name matching DenyOut is refused even when AllowOut matches it too
//     (this carves exceptions out of wildcards); with the "deny" default a
//     name resolves only when AllowOut matches it; with the "allow"
//     default every name not denied resolves, so AllowOut names are
//     refused there as meaningless (as E2B does: domains need
//     ALL_TRAFFIC denied).
//   - Whatever the rules say, private and special ranges (RFC 1918,
//     loopback, link-local with the cloud metadata address, carrier-grade
//     NAT, this-network, multicast and reserved) and the host itself stay
//     unreachable: AlwaysDenied, enforced by the host before any rule.
//
// A name is allowed to a guest only through the platform's resolver: the
// addresses it answers for an allowed name are what the guest may reach
// (for the record's TTL), so connecting by raw IP to a name's address
// works only when the guest could have resolved it.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Rules is the policy as users write it, stored by the control plane and
// sent to the host agent. The zero value denies everything (AllowInternet
// false); Open is unrestricted egress.
type Rules struct {
	// AllowInternet is E2B's allow_internet_access: false makes "deny"
	// the default.
	AllowInternet bool `json:"allow_internet"`
	// AllowOut and DenyOut hold IPv4 addresses, CIDRs and domain names
	// (exact, or "*." followed by a domain).
	AllowOut []string `json:"allow_out,omitempty"`
	DenyOut  []string `json:"deny_out,omitempty"`
}

// Open is unrestricted egress (what a sandbox without rules has when
// internet access is on).
func Open() Rules { return Rules{AllowInternet: true} }

// Closed is no egress at all.
func Closed() Rules { return Rules{} }

// IsOpen reports whether r restricts nothing.
func (r Rules) IsOpen() bool { return r.AllowInternet && len(r.AllowOut) == 0 && len(r.DenyOut) == 0 }

// Equal reports whether r and o are the same rules, entry by entry.
func (r Rules) Equal(o Rules) bool {
	return r.AllowInternet == o.AllowInternet && slices.Equal(r.AllowOut, o.AllowOut) && slices.Equal(r.DenyOut, o.DenyOut)
}

// Limits.
const (
	// MaxEntries bounds each of AllowOut and DenyOut.
	MaxEntries = 256
	// maxNameLen is DNS's limit on a name's text form.
	maxNameLen = 253
)

// AllTraffic is E2B's ALL_TRAFFIC.
const AllTraffic = "0.0.0.0/0"

// AlwaysDenied are the destinations no rule opens: "this network",
// RFC 1918, carrier-grade NAT (RFC 6598), loopback, link-local (with the
// cloud metadata service 169.254.169.254), and multicast, reserved and
// broadcast (224/3). The host's own addresses are closed by the host
// table (package netslot) whatever the rules.
var AlwaysDenied = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// Name is a parsed domain entry.
type Name struct {
	// Domain is lowercase, without a trailing dot.
	Domain string
	// Wildcard: the entry was "*.Domain" and matches names strictly below
	// Domain.
	Wildcard bool
}

func (n Name) String() string {
	if n.Wildcard {
		return "*." + n.Domain
	}
	return n.Domain
}

// Match reports whether the name q (any case, trailing dot allowed)
// matches n.
func (n Name) Match(q string) bool {
	q = Canonical(q)
	if n.Wildcard {
		return strings.HasSuffix(q, "."+n.Domain)
	}
	return q == n.Domain
}

// Canonical lowercases a name and removes its trailing dot.
func Canonical(q string) string { return strings.TrimSuffix(strings.ToLower(q), ".") }

// Policy is parsed Rules.
type Policy struct {
	// DenyByDefault: destinations that no list names are denied.
	DenyByDefault bool
	// AllowNets and DenyNets are masked and sorted, without duplicates.
	AllowNets, DenyNets []netip.Prefix
	// AllowNames and DenyNames are sorted, without duplicates.
	AllowNames, DenyNames []Name
}

// Parse checks r and returns its policy. Its errors name the entry and
// what is wrong with it, for a 400.
func Parse(r Rules) (Policy, error) {
	var errs []error
	if len(r.AllowOut) > MaxEntries {
		errs = append(errs, fmt.Errorf("allowOut: %d entries, at most %d", len(r.AllowOut), MaxEntries))
	}
	if len(r.DenyOut) > MaxEntries {
		errs = append(errs, fmt.Errorf("denyOut: %d entries, at most %d", len(r.DenyOut), MaxEntries))
	}
	if len(errs) > 0 {
		return Policy{}, errors.Join(errs...)
	}
	p := Policy{DenyByDefault: !r.AllowInternet}
	for i, e := range r.AllowOut {
		n, name, err := parseEntry(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("allowOut[%d] %q: %w", i, e, err))
			continue
		}
		if n.IsValid() {
			p.AllowNets = append(p.AllowNets, n)
		} else {
			p.AllowNames = append(p.AllowNames, name)
		}
	}
	for i, e := range r.DenyOut {
		n, name, err := parseEntry(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("denyOut[%d] %q: %w", i, e, err))
			continue
		}
		if n.IsValid() {
			if n.Bits() == 0 {
				p.DenyByDefault = true // ALL_TRAFFIC
				continue
			}
			p.DenyNets = append(p.DenyNets, n)
		} else {
			p.DenyNames = append(p.DenyNames, name)
		}
	}
	if len(errs) > 0 {
		return Policy{}, errors.Join(errs...)
	}
	if !p.DenyByDefault && len(p.AllowNames) > 0 {
		return Policy{}, fmt.Errorf("allowOut: domain names (%s) restrict nothing while all other traffic is allowed: add %q to denyOut or set allow_internet_access to false", p.AllowNames[0], AllTraffic)
	}
	p.AllowNets = sortPrefixes(p.AllowNets)
	p.DenyNets = sortPrefixes(p.DenyNets)
	p.AllowNames = sortNames(p.AllowNames)
	p.DenyNames = sortNames(p.DenyNames)
	return p, nil
}

// parseEntry returns a prefix (valid) for an address or CIDR entry, else
// a name.
func parseEntry(e string) (netip.Prefix, Name, error) {
	s := strings.TrimSpace(e)
	if s == "" {
		return netip.Prefix{}, Name{}, errors.New("empty entry")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, Name{}, fmt.Errorf("not a CIDR: %v", err)
		}
		if !p.Addr().Is4() {
			return netip.Prefix{}, Name{}, errors.New("IPv6 is not supported (sandboxes have no IPv6)")
		}
		return p.Masked(), Name{}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if !a.Is4() {
			return netip.Prefix{}, Name{}, errors.New("IPv6 is not supported (sandboxes have no IPv6)")
		}
		return netip.PrefixFrom(a, 32), Name{}, nil
	}
	if strings.ContainsAny(s, ":") {
		return netip.Prefix{}, Name{}, errors.New("not an IPv4 address, CIDR or domain name (no ports or schemes)")
	}
	n := Name{}
	d := s
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		n.Wildcard = true
		d = rest
	}
	d = Canonical(d)
	if err := checkDomain(d); err != nil {
		return netip.Prefix{}, Name{}, err
	}
	n.Domain = d
	return netip.Prefix{}, n, nil
}

// checkDomain accepts a DNS name of letters, digits, '-' and '_' in labels
// of 1 to 63 characters that neither start nor end with '-', with at
// least two labels and a non-numeric last label.
func checkDomain(d string) error {
	if d == "" {
		return errors.New("empty domain name")
	}
	if len(d) > maxNameLen {
		return fmt.Errorf("domain name longer than %d characters", maxNameLen)
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return errors.New("a domain name needs at least two labels (wildcards: only a leading \"*.\")")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return errors.New("domain labels must be 1 to 63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("label %q: only letters, digits, '-' and '_' (a wildcard only as a leading \"*.\")", l)
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		return errors.New("not an IPv4 address, CIDR or domain name")
	}
	return nil
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps)
}

func sortNames(ns []Name) []Name {
	slices.SortFunc(ns, func(a, b Name) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(ns)
}

// HasNames reports whether the policy names domains: the guest's DNS then
// goes to the platform's resolver.
func (p Policy) HasNames() bool { return len(p.AllowNames) > 0 || len(p.DenyNames) > 0 }

// NameAllowed reports whether the platform's resolver answers for q.
func (p Policy) NameAllowed(q string) bool {
	for _, n := range p.DenyNames {
		if n.Match(q) {
			return false
		}
	}
	if !p.DenyByDefault {
		return true
	}
	for _, n := range p.AllowNames {
		if n.Match(q) {
			return true
		}
	}
	return false
}

// NameDenied reports whether q matches DenyOut: its addresses are then
// denied too (with the "allow" default, where they would be reachable).
func (p Policy) NameDenied(q string) bool {
	for _, n := range p.DenyNames {
		if n.Match(q) {
			return true
		}
	}
	return false
}

// Verdict is the decision for a destination address.
type Verdict int

const (
	Deny Verdict = iota
	Allow
)

// AddrVerdict decides for a destination address, given whether it was
// learned by resolving an allowed name (allowedName, which matters with
// the "deny" default) or a denied one (deniedName, with the "allow"
// default). It is the reference for the host's rules, in the same
// order.
func (p Policy) AddrVerdict(a netip.Addr, allowedName, deniedName bool) Verdict {
	for _, n := range AlwaysDenied {
		if n.Contains(a) {
			return Deny
		}
	}
	for _, n := range p.AllowNets {
		if n.Contains(a) {
			return Allow
		}
	}
	for _, n := range p.DenyNets {
		if n.Contains(a) {
			return Deny
		}
	}
	if p.DenyByDefault {
		// Only what the resolver answered for an allowed name. (An address
		// shared by an allowed and a denied name stays open: only the
		// name in the connection tells them apart.)
		if allowedName {
			return Allow
		}
		return Deny
	}
	if deniedName {
		return Deny
	}
	return Allow
}
