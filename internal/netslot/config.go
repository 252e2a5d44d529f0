package netslot

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Config describes a Pool. The zero value of every field selects the
// default documented on it; Pool uses a copy with the defaults filled in.
type Config struct {
	// Name prefixes the slot namespaces (<Name>-<index>, bind-mounted in
	// /run/netns), names the nftables table in the host namespace and in
	// every slot namespace, and names the pool's lock file. Lowercase
	// letters, digits and '-'; at most 32 characters. Default "capsule".
	Name string
	// VethPrefix prefixes the host ends of the slot veth pairs
	// (<VethPrefix><index>). Every host interface whose name is VethPrefix
	// followed by digits belongs to the pool: it is deleted at start and
	// matched by the host rules. Default "cvh".
	VethPrefix string

	// HostCIDR holds the per-slot host addresses: slot i is reached by the
	// host at HostCIDR's first address + i. Default 10.11.0.0/16.
	HostCIDR netip.Prefix
	// LinkCIDR holds the per-slot veth /31s: slot i uses the pair starting
	// at LinkCIDR's first address + 2*i, the even address on the host end,
	// the odd one in the slot namespace. Default 10.12.0.0/16.
	LinkCIDR netip.Prefix
	// GuestNet is the guest's network, the same in every slot: the guest
	// is its first host address, the gateway (the TAP) its second.
	// At most a /30. Default 169.254.0.20/30 (guest 169.254.0.21, gateway
	// 169.254.0.22).
	GuestNet netip.Prefix
	// MaxSlots bounds the number of slots (indices 1..MaxSlots). Default
	// 1024, and never more than HostCIDR and LinkCIDR can address.
	MaxSlots int

	// DNS, when valid, is the resolver announced to guests in
	// KernelIPParam. DNS traffic is ordinary egress: a guest without egress
	// has no DNS. When DNS is an address of the host itself, the host input
	// rules accept new connections to its port 53 from the slots.
	DNS netip.Addr
	// DNSUpstream are the servers a slot's resolver asks (in turn) while
	// the slot's egress rules name domains (SetRules); it asks them from
	// the host's namespace. nil selects the IPv4 nameservers of the host's
	// /etc/resolv.conf (port 53).
	DNSUpstream []netip.AddrPort
	// EgressDefault is the egress state of a new or released slot.
	// Default false: no egress until SetEgress(ctx, true).
	EgressDefault bool
	// DenyEgress are destinations that no guest reaches even with egress
	// on (DNS to Config.DNS excepted). nil selects DefaultDenyEgress: the
	// private and link-local ranges, so guests reach neither the cloud
	// metadata service nor the host's LAN (other hosts, the control
	// plane, databases). An empty non-nil slice denies nothing.
	DenyEgress []netip.Prefix

	// LockDir holds the pool's lock file (<LockDir>/<Name>.netslot.lock),
	// which makes a Pool the only owner of its names on the host.
	// Default /run/lock.
	LockDir string
	// Logger receives the pool's logs. Default slog.Default().
	Logger *slog.Logger
	// KeepSlots makes NewPool keep the complete slots that a previous
	// pool of the same name left (their VMs may have outlived an agent
	// restart) instead of removing them: the owner takes them back with
	// Claim, and DropUnclaimed then removes the ones nobody claimed.
	// Half-made slots are removed either way.
	KeepSlots bool
}

// Defaults.
var (
	DefaultHostCIDR = netip.MustParsePrefix("10.11.0.0/16")
	DefaultLinkCIDR = netip.MustParsePrefix("10.12.0.0/16")
	DefaultGuestNet = netip.MustParsePrefix("169.254.0.20/30")
	// DefaultDenyEgress: RFC 1918 private networks, RFC 6598 shared
	// address space (carrier-grade NAT) and RFC 3927 link-local.
	DefaultDenyEgress = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("169.254.0.0/16"),
	}
)

const (
	defaultName       = "capsule"
	defaultVethPrefix = "cvh"
	defaultMaxSlots   = 1024
	defaultLockDir    = "/run/lock"

	// Names inside every slot namespace.
	tapName  = "tap0"  // the VM's TAP, holding the gateway address
	vethName = "veth0" // the slot end of the veth pair
	// guestIfName is the guest's interface in the ip= parameter.
	guestIfName = "eth0"
	// ifNameMax is IFNAMSIZ without the terminating NUL.
	ifNameMax = 15
)

var (
	nameRE   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)
)

// withDefaults returns c with defaults filled in, validated.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = defaultName
	}
	if c.VethPrefix == "" {
		c.VethPrefix = defaultVethPrefix
	}
	if !c.HostCIDR.IsValid() {
		c.HostCIDR = DefaultHostCIDR
	}
	if !c.LinkCIDR.IsValid() {
		c.LinkCIDR = DefaultLinkCIDR
	}
	if !c.GuestNet.IsValid() {
		c.GuestNet = DefaultGuestNet
	}
	if c.MaxSlots == 0 {
		// As many as the CIDRs address, up to the default.
		c.MaxSlots = defaultMaxSlots
		// (Invalid CIDRs are reported by the validation below.)
		if c.HostCIDR.Addr().Is4() && c.LinkCIDR.Addr().Is4() {
			hostCap, linkCap := int64(size(c.HostCIDR))-2, int64(size(c.LinkCIDR))/2-1
			for _, n := range []int64{hostCap, linkCap} {
				if n > 0 && n < int64(c.MaxSlots) {
					c.MaxSlots = int(n)
				}
			}
		}
	}
	if c.DenyEgress == nil {
		c.DenyEgress = slices.Clone(DefaultDenyEgress)
	}
	if c.DNSUpstream == nil {
		c.DNSUpstream = hostResolvers("/etc/resolv.conf")
	}
	if c.LockDir == "" {
		c.LockDir = defaultLockDir
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.HostCIDR = c.HostCIDR.Masked()
	c.LinkCIDR = c.LinkCIDR.Masked()
	c.GuestNet = c.GuestNet.Masked()
	return c, c.validate()
}

func (c Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !nameRE.MatchString(c.Name) {
		bad("Name %q: want lowercase letters, digits and '-', starting with a letter, at most 32", c.Name)
	}
	if !prefixRE.MatchString(c.VethPrefix) {
		bad("VethPrefix %q: want lowercase letters and digits, starting with a letter", c.VethPrefix)
	}
	if c.MaxSlots < 1 {
		bad("MaxSlots %d: want at least 1", c.MaxSlots)
	}
	if n := len(c.VethPrefix) + len(strconv.Itoa(c.MaxSlots)); n > ifNameMax {
		bad("VethPrefix %q with %d slots makes %d-character interface names; the kernel allows %d", c.VethPrefix, c.MaxSlots, n, ifNameMax)
	}
	for _, p := range []struct {
		name string
		p    netip.Prefix
	}{{"HostCIDR", c.HostCIDR}, {"LinkCIDR", c.LinkCIDR}, {"GuestNet", c.GuestNet}} {
		if !p.p.Addr().Is4() {
			bad("%s %s: want an IPv4 prefix", p.name, p.p)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if c.GuestNet.Bits() > 30 {
		bad("GuestNet %s: want at most a /30 (guest, gateway)", c.GuestNet)
	}
	// Indices run 1..MaxSlots; the last host address stays unused.
	if n := size(c.HostCIDR) - 2; uint64(c.MaxSlots) > n {
		bad("HostCIDR %s addresses %d slots, MaxSlots is %d", c.HostCIDR, n, c.MaxSlots)
	}
	if n := size(c.LinkCIDR)/2 - 1; uint64(c.MaxSlots) > n {
		bad("LinkCIDR %s addresses %d slots, MaxSlots is %d", c.LinkCIDR, n, c.MaxSlots)
	}
	if c.HostCIDR.Overlaps(c.LinkCIDR) || c.HostCIDR.Overlaps(c.GuestNet) || c.LinkCIDR.Overlaps(c.GuestNet) {
		bad("HostCIDR %s, LinkCIDR %s and GuestNet %s must not overlap", c.HostCIDR, c.LinkCIDR, c.GuestNet)
	}
	if c.DNS.IsValid() && !c.DNS.Is4() {
		bad("DNS %s: want an IPv4 address", c.DNS)
	}
	for _, p := range c.DenyEgress {
		if !p.IsValid() || !p.Addr().Is4() {
			bad("DenyEgress %s: want an IPv4 prefix", p)
		}
	}
	return errors.Join(errs...)
}

// agentUID is the only user whose sockets may open connections to the
// slots (the host table's output chain): the user the pool runs as, that
// is the agent's (root, or a user holding CAP_NET_ADMIN).
func (c Config) agentUID() uint32 { return uint32(os.Geteuid()) }

// size is the number of addresses in p (IPv4).
func size(p netip.Prefix) uint64 { return 1 << (32 - p.Bits()) }

// addrAdd returns a + n (IPv4).
func addrAdd(a netip.Addr, n uint64) netip.Addr {
	b := a.As4()
	v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// plan is the address plan of one slot.
type plan struct {
	index    int
	netns    string     // namespace name
	hostVeth string     // host end of the veth pair
	hostAddr netip.Addr // how the host reaches the guest
	linkHost netip.Addr // host end of the veth /31
	linkSlot netip.Addr // slot end of the veth /31
	guest    netip.Addr
	gateway  netip.Addr
	bits     int // guest network prefix length
}

func (c Config) plan(index int) plan {
	return plan{
		index:    index,
		netns:    c.netnsName(index),
		hostVeth: c.VethPrefix + strconv.Itoa(index),
		hostAddr: addrAdd(c.HostCIDR.Addr(), uint64(index)),
		linkHost: addrAdd(c.LinkCIDR.Addr(), 2*uint64(index)),
		linkSlot: addrAdd(c.LinkCIDR.Addr(), 2*uint64(index)+1),
		guest:    addrAdd(c.GuestNet.Addr(), 1),
		gateway:  addrAdd(c.GuestNet.Addr(), 2),
		bits:     c.GuestNet.Bits(),
	}
}

func (c Config) netnsName(index int) string { return c.Name + "-" + strconv.Itoa(index) }

// parseIndex returns the index in name when name is prefix followed by a
// canonical decimal number (no sign, no leading zero), else 0.
func parseIndex(name, prefix string) int {
	if len(name) <= len(prefix) || name[:len(prefix)] != prefix {
		return 0
	}
	s := name[len(prefix):]
	if s[0] == '0' {
		return 0
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0
	}
	return n
}

// macFor is a locally administered unicast MAC derived from an IPv4
// address: 06:00:a.b.c.d. Guest and gateway MACs are the same in every
// slot, so a restored guest's ARP cache stays valid in any slot.
func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x06, 0x00, b[0], b[1], b[2], b[3]}
}

// netmask renders a prefix length as a dotted IPv4 netmask.
func netmask(bits int) string { return net.IP(net.CIDRMask(bits, 32)).String() }

// hostResolvers returns the IPv4 nameservers of a resolv.conf file (none
// when it cannot be read).
func hostResolvers(path string) []netip.AddrPort {
	b, err := os.ReadFile(path)
	if err != nil {
		return []netip.AddrPort{}
	}
	out := []netip.AddrPort{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() {
				out = append(out, netip.AddrPortFrom(a, 53))
			}
		}
	}
	return out
}
