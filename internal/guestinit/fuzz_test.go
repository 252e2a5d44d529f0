package guestinit

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseCmdline: a kernel command line never fails as a whole; what
// it yields is well-formed: a static ip= has a valid client prefix and
// interface name, the hostname is valid, DNS servers are usable.
func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"console=ttyS0 root=/dev/vda rw init=/sbin/init capsule.sandbox_id=abc ip=10.0.0.2::10.0.0.1:255.255.255.0:box:eth0:off capsule.dns=1.1.1.1,8.8.8.8",
		`quoted="a b" ro -- init args`, "ip=dhcp", "ip=off", "ip=:::::::", "ip=10.0.0.2:::/24::eth0:off:1.1.1.1:::",
		"ip=10.0.0.2::10.0.0.2:24", "ip=224.0.0.1", "ip=10.0.0.2:::255.0.255.0", "capsule.hostname=-bad capsule.dns=::ffff:1.2.3.4",
		"capsule.dns=fe80::1%eth0", "capsule.= =x \"", "ip=1.2.3.4:::::" + strings.Repeat("x", 20) + ":", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmdline string) {
		bp, err := ParseCmdline(cmdline)
		if bp == nil {
			t.Fatalf("ParseCmdline(%q) = nil, %v", cmdline, err)
		}
		if err != nil && !errors.Is(err, ErrBadParam) {
			t.Fatalf("ParseCmdline(%q): error %v does not wrap ErrBadParam", cmdline, err)
		}
		if bp.Hostname != "" && validHostname(bp.Hostname) != nil {
			t.Fatalf("ParseCmdline(%q): hostname %q", cmdline, bp.Hostname)
		}
		for _, a := range bp.DNS {
			if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("ParseCmdline(%q): DNS server %v", cmdline, a)
			}
		}
		for k := range bp.Capsule {
			if k == "" {
				t.Fatalf("ParseCmdline(%q): an empty capsule. key", cmdline)
			}
		}
		checkIPConfig(t, cmdline, bp.IP)
	})
}

// FuzzParseIPConfig: an ip= value that parses is usable as it stands.
func FuzzParseIPConfig(f *testing.F) {
	for _, s := range []string{
		"10.0.0.2::10.0.0.1:255.255.255.0:box:eth0:off:1.1.1.1:8.8.8.8:10.0.0.1", "10.0.0.2:::/32", "10.0.0.2:::0", "169.254.1.1",
		"192.168.1.1", "200.1.1.1", "240.0.0.1", "0.0.0.0", "::1", "10.0.0.2:::255.255.255.255", "10.0.0.2:::255.255.0.255",
		"10.0.0.2:::33", "10.0.0.2:::00000000000000000000024", ":10.0.0.1", "::10.0.0.1", "10.0.0.2:::::../x", "10.0.0.2::::::foo",
		"DHCP", "none", "", strings.Repeat(":", 10),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		c, err := ParseIPConfig(v)
		if err != nil {
			if c != nil || !errors.Is(err, ErrBadParam) {
				t.Fatalf("ParseIPConfig(%q) = %+v, %v", v, c, err)
			}
			return
		}
		checkIPConfig(t, v, c)
	})
}

func checkIPConfig(t *testing.T, in string, c *IPConfig) {
	t.Helper()
	if c == nil {
		return
	}
	if validIfName(c.Device) != nil {
		t.Fatalf("%q: device %q", in, c.Device)
	}
	if c.Hostname != "" && validHostname(c.Hostname) != nil {
		t.Fatalf("%q: hostname %q", in, c.Hostname)
	}
	if c.Client.IsValid() {
		a := c.Client.Addr()
		if !a.Is4() || c.Client.Bits() < 0 || c.Client.Bits() > 32 || (!a.IsGlobalUnicast() && !a.IsLinkLocalUnicast()) {
			t.Fatalf("%q: client %v", in, c.Client)
		}
		if c.Gateway.IsValid() && (c.Gateway == a || !c.Gateway.Is4()) {
			t.Fatalf("%q: gateway %v for client %v", in, c.Gateway, c.Client)
		}
	} else if c.Static() {
		t.Fatalf("%q: static without a client address", in)
	}
	for _, a := range c.DNS {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" {
			t.Fatalf("%q: DNS server %v", in, a)
		}
	}
}
