package guestinit

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// CapsulePrefix is the prefix of the kernel command line keys that the host
// passes to the guest (capsule.sandbox_id=…, capsule.template_id=…).
const CapsulePrefix = "capsule."

// BootParams is what guestinit reads from the kernel command line.
type BootParams struct {
	// Args holds every key=value parameter (a bare word maps to ""); when a
	// key repeats, the last value wins, as with most kernel parameters.
	// Words after a "--" separator are init's argv, not parameters, and are
	// not included.
	Args map[string]string
	// Capsule holds the capsule.* parameters without their prefix
	// (capsule.sandbox_id=x gives Capsule["sandbox_id"] == "x").
	Capsule map[string]string
	// IP is the parsed ip= parameter; nil when absent or ip=off/none.
	IP *IPConfig
	// DNS is the capsule.dns= override (comma separated addresses); when
	// non-empty it replaces IP.DNS in /etc/resolv.conf.
	DNS []netip.Addr
	// Hostname is capsule.hostname= if set, else the ip= hostname field.
	Hostname string

	// Root, RootFSType, RootFlags and ReadOnly come from root=,
	// rootfstype=, rootflags= and ro/rw; Init from init=. The initramfs
	// stage uses them to find and mount the real root.
	Root, RootFSType, RootFlags string
	ReadOnly                    bool
	Init                        string
}

// IPConfig is the kernel's nfsroot-style static network configuration:
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// Any field may be empty. The whole value may also be just an autoconf
// method (ip=dhcp, ip=on, ...). Only static configuration is applied by
// guestinit; see Static.
type IPConfig struct {
	// Client is the guest address with its prefix length. The length comes
	// from the netmask field (dotted quad or a bare prefix length); when
	// that is empty it is the classful default, as the kernel does.
	Client  netip.Prefix
	Server  netip.Addr
	Gateway netip.Addr
	// Hostname is the ip= hostname field.
	Hostname string
	// Device is the interface to configure; "eth0" when empty.
	Device string
	// Autoconf is the autoconf field lowercased ("", "off", "none",
	// "on", "any", "dhcp", "bootp", "rarp", "both").
	Autoconf string
	// DNS holds dns0 and dns1 when set.
	DNS []netip.Addr
}

// Static reports whether the configuration is a static address that
// guestinit can apply (a client address and no autoconfiguration method).
func (c *IPConfig) Static() bool {
	if c == nil || !c.Client.IsValid() {
		return false
	}
	switch c.Autoconf {
	case "", "off", "none":
		return true
	}
	return false
}

// DefaultDevice is the interface used when ip= names none.
const DefaultDevice = "eth0"

// ParseCmdline parses a kernel command line (the contents of /proc/cmdline).
// It never fails as a whole: a malformed ip= or capsule.dns= parameter is
// reported in the returned error (wrapping ErrBadParam) and left out of the
// result, while every other parameter is still returned.
func ParseCmdline(cmdline string) (*BootParams, error) {
	bp := &BootParams{Args: map[string]string{}, Capsule: map[string]string{}}
	for _, w := range splitCmdline(cmdline) {
		if w == "--" {
			break
		}
		k, v, _ := strings.Cut(w, "=")
		if k == "" {
			continue
		}
		bp.Args[k] = v
		switch k { // the later of ro and rw wins, as in the kernel
		case "ro":
			bp.ReadOnly = true
		case "rw":
			bp.ReadOnly = false
		}
	}
	var errs []error
	for k, v := range bp.Args {
		switch {
		case k == "root":
			bp.Root = v
		case k == "rootfstype":
			bp.RootFSType = v
		case k == "rootflags":
			bp.RootFlags = v
		case k == "init":
			bp.Init = v
		case k == "ip":
			ip, err := ParseIPConfig(v)
			if err != nil {
				errs = append(errs, err)
				break
			}
			bp.IP = ip
		case strings.HasPrefix(k, CapsulePrefix) && len(k) > len(CapsulePrefix):
			bp.Capsule[k[len(CapsulePrefix):]] = v
		}
	}
	if v := bp.Capsule["dns"]; v != "" {
		dns, err := parseAddrList(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: capsule.dns=%q: %w", ErrBadParam, v, err))
		} else {
			bp.DNS = dns
		}
	}
	bp.Hostname = bp.Capsule["hostname"]
	if bp.Hostname != "" {
		if err := validHostname(bp.Hostname); err != nil {
			errs = append(errs, fmt.Errorf("%w: capsule.hostname=%q: %w", ErrBadParam, bp.Hostname, err))
			bp.Hostname = ""
		}
	}
	if bp.Hostname == "" && bp.IP != nil {
		bp.Hostname = bp.IP.Hostname
	}
	return bp, errors.Join(errs...)
}

// ErrBadParam marks a malformed kernel command line parameter.
var ErrBadParam = errors.New("malformed kernel parameter")

// splitCmdline splits the command line into words the way the kernel's
// parameter parser does: words are separated by whitespace, and double
// quotes (which are removed) protect whitespace. An unterminated quote runs
// to the end of the line.
func splitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inWord, inQuote := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == 0):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// ParseIPConfig parses the value of an ip= kernel parameter. It returns
// (nil, nil) for "off" and "none", which disable network configuration.
func ParseIPConfig(v string) (*IPConfig, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: ip=%q: %s", ErrBadParam, v, fmt.Sprintf(format, a...))
	}
	switch strings.ToLower(v) {
	case "off", "none":
		return nil, nil
	case "on", "any", "dhcp", "bootp", "rarp", "both":
		return &IPConfig{Device: DefaultDevice, Autoconf: strings.ToLower(v)}, nil
	case "":
		return nil, bad("empty value")
	}
	f := strings.Split(v, ":")
	if len(f) > 10 {
		return nil, bad("%d fields, at most 10 allowed", len(f))
	}
	for len(f) < 10 {
		f = append(f, "")
	}
	c := &IPConfig{Hostname: f[4], Device: f[5], Autoconf: strings.ToLower(f[6])}
	var client netip.Addr
	if f[0] != "" {
		a, err := parseIPv4(f[0])
		if err != nil {
			return nil, bad("client address: %v", err)
		}
		if !a.IsGlobalUnicast() && !a.IsLinkLocalUnicast() {
			return nil, bad("client address %s is not a unicast address", a)
		}
		client = a
	}
	if f[1] != "" {
		a, err := parseIPv4(f[1])
		if err != nil {
			return nil, bad("server address: %v", err)
		}
		c.Server = a
	}
	if f[2] != "" {
		a, err := parseIPv4(f[2])
		if err != nil {
			return nil, bad("gateway address: %v", err)
		}
		if !client.IsValid() {
			return nil, bad("a gateway needs a client address")
		}
		if a == client {
			return nil, bad("gateway %s is the client address", a)
		}
		c.Gateway = a
	}
	bits := -1
	if f[3] != "" {
		if !client.IsValid() {
			return nil, bad("a netmask needs a client address")
		}
		b, err := parseNetmask(f[3])
		if err != nil {
			return nil, bad("netmask: %v", err)
		}
		bits = b
	}
	if client.IsValid() {
		if bits < 0 {
			b, err := classfulBits(client)
			if err != nil {
				return nil, bad("%v", err)
			}
			bits = b
		}
		c.Client = netip.PrefixFrom(client, bits)
	}
	if c.Hostname != "" {
		if err := validHostname(c.Hostname); err != nil {
			return nil, bad("hostname: %v", err)
		}
	}
	if c.Device == "" {
		c.Device = DefaultDevice
	} else if err := validIfName(c.Device); err != nil {
		return nil, bad("device: %v", err)
	}
	switch c.Autoconf {
	case "", "off", "none", "on", "any", "dhcp", "bootp", "rarp", "both":
	default:
		return nil, bad("unknown autoconf method %q", f[6])
	}
	for i, s := range f[7:9] {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, bad("dns%d: %q is not an IP address", i, s)
		}
		if a.IsUnspecified() {
			continue
		}
		c.DNS = append(c.DNS, a.Unmap())
	}
	if f[9] != "" {
		// ntp0: validated for typos, otherwise unused.
		if _, err := parseIPv4(f[9]); err != nil {
			return nil, bad("ntp0: %v", err)
		}
	}
	return c, nil
}

func parseIPv4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return a, nil
}

// parseNetmask accepts a dotted quad with contiguous ones (255.255.255.0)
// or a prefix length (24, or /24).
func parseNetmask(s string) (int, error) {
	if d := strings.TrimPrefix(s, "/"); d != "" && strings.Trim(d, "0123456789") == "" {
		n, err := strconv.Atoi(d)
		if err != nil || n > 32 {
			return 0, fmt.Errorf("prefix length %q out of range 0-32", s)
		}
		return n, nil
	}
	a, err := parseIPv4(s)
	if err != nil {
		return 0, err
	}
	m := a.As4()
	v := uint32(m[0])<<24 | uint32(m[1])<<16 | uint32(m[2])<<8 | uint32(m[3])
	ones := 0
	for ones < 32 && v&(1<<(31-ones)) != 0 {
		ones++
	}
	if ones < 32 && v<<ones != 0 {
		return 0, fmt.Errorf("%q is not a contiguous netmask", s)
	}
	return ones, nil
}

// classfulBits is the pre-CIDR netmask of a, which the kernel uses when ip=
// gives no netmask.
func classfulBits(a netip.Addr) (int, error) {
	b := a.As4()[0]
	switch {
	case b < 128:
		return 8, nil
	case b < 192:
		return 16, nil
	case b < 224:
		return 24, nil
	}
	return 0, fmt.Errorf("no classful netmask for %s; give one", a)
}

func parseAddrList(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil || a.Zone() != "" || a.IsUnspecified() {
			return nil, fmt.Errorf("%q is not a usable IP address", p)
		}
		out = append(out, a.Unmap())
	}
	if len(out) == 0 {
		return nil, errors.New("no address")
	}
	return out, nil
}

// validHostname accepts what sethostname(2) and resolvers accept: 1 to 64
// bytes of letters, digits, '-' and '.', with no empty label.
func validHostname(h string) error {
	if len(h) == 0 || len(h) > 64 {
		return fmt.Errorf("length %d not in 1-64", len(h))
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	return nil
}

// validIfName accepts a Linux interface name (IFNAMSIZ-1 bytes, no '/',
// ':' or whitespace).
func validIfName(n string) error {
	if len(n) == 0 || len(n) > 15 {
		return fmt.Errorf("interface name %q: length not in 1-15", n)
	}
	if n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n") {
		return fmt.Errorf("interface name %q is invalid", n)
	}
	return nil
}
