package netslot

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAddressPlan(t *testing.T) {
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		index                    int
		netns, veth              string
		host, linkHost, linkSlot string
	}{
		{1, "capsule-1", "cvh1", "10.11.0.1", "10.12.0.2", "10.12.0.3"},
		{255, "capsule-255", "cvh255", "10.11.0.255", "10.12.1.254", "10.12.1.255"},
		{256, "capsule-256", "cvh256", "10.11.1.0", "10.12.2.0", "10.12.2.1"},
		{1024, "capsule-1024", "cvh1024", "10.11.4.0", "10.12.8.0", "10.12.8.1"},
	} {
		pl := cfg.plan(c.index)
		got := []string{pl.netns, pl.hostVeth, pl.hostAddr.String(), pl.linkHost.String(), pl.linkSlot.String()}
		want := []string{c.netns, c.veth, c.host, c.linkHost, c.linkSlot}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("slot %d: %v, want %v", c.index, got, want)
		}
		if pl.guest.String() != "169.254.0.21" || pl.gateway.String() != "169.254.0.22" || pl.bits != 30 {
			t.Errorf("slot %d: guest %s gateway %s /%d", c.index, pl.guest, pl.gateway, pl.bits)
		}
	}
}

func TestKernelIPParamAndMACs(t *testing.T) {
	for _, c := range []struct {
		dns  string
		want string
	}{
		{"", "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"},
		{"1.1.1.1", "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off:1.1.1.1"},
	} {
		cfg := Config{}
		if c.dns != "" {
			cfg.DNS = netip.MustParseAddr(c.dns)
		}
		cfg, err := cfg.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		s := newSlot(&Pool{cfg: cfg}, cfg.plan(7))
		if got := s.KernelIPParam(); got != c.want {
			t.Errorf("KernelIPParam = %q, want %q", got, c.want)
		}
		if s.MAC != "06:00:a9:fe:00:15" {
			t.Errorf("MAC = %s", s.MAC)
		}
	}
	if got := macFor(netip.MustParseAddr("169.254.0.22")).String(); got != "06:00:a9:fe:00:16" {
		t.Errorf("gateway MAC = %s", got)
	}
}

func TestConfigValidation(t *testing.T) {
	p := netip.MustParsePrefix
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"bad name", Config{Name: "Cap sule"}, "Name"},
		{"bad prefix", Config{VethPrefix: "c-v"}, "VethPrefix"},
		{"names too long", Config{VethPrefix: "averylongpfx", MaxSlots: 1000}, "interface names"},
		{"host range too small", Config{HostCIDR: p("10.11.0.0/24"), MaxSlots: 300}, "HostCIDR"},
		{"link range too small", Config{LinkCIDR: p("10.12.0.0/24"), MaxSlots: 200}, "LinkCIDR"},
		{"overlap", Config{HostCIDR: p("10.11.0.0/16"), LinkCIDR: p("10.11.128.0/17"), MaxSlots: 100}, "overlap"},
		{"guest net too small", Config{GuestNet: p("169.254.0.20/31")}, "GuestNet"},
		{"ipv6", Config{HostCIDR: p("fd00::/64")}, "IPv4"},
		{"dns v6", Config{DNS: netip.MustParseAddr("::1")}, "DNS"},
	} {
		_, err := c.cfg.withDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %s", c.name, err, c.want)
		}
	}
	cfg, err := Config{DenyEgress: []netip.Prefix{}}.withDefaults()
	if err != nil || len(cfg.DenyEgress) != 0 {
		t.Errorf("empty DenyEgress: %v %v", cfg.DenyEgress, err)
	}
	cfg, err = Config{}.withDefaults()
	if err != nil || len(cfg.DenyEgress) != len(DefaultDenyEgress) {
		t.Errorf("default DenyEgress: %v %v", cfg.DenyEgress, err)
	}
}

func TestParseIndex(t *testing.T) {
	for name, want := range map[string]int{
		"capsule-1": 1, "capsule-42": 42, "capsule-": 0, "capsule-01": 0,
		"capsule-x": 0, "capsule-1a": 0, "capsulex-1": 0, "capsule": 0,
	} {
		if got := parseIndex(name, "capsule-"); got != want {
			t.Errorf("parseIndex(%q) = %d, want %d", name, got, want)
		}
	}
}

// An unset MaxSlots is as many as the CIDRs address, up to the default.
func TestConfigDefaultMaxSlotsFitsTheCIDRs(t *testing.T) {
	for _, tc := range []struct {
		host, link string
		want       int
	}{
		{"198.18.114.0/24", "198.18.115.0/24", 127},
		{"198.18.114.0/26", "198.18.128.0/20", 62},
		{"10.11.0.0/16", "10.12.0.0/16", 1024},
	} {
		c, err := Config{Name: "t", HostCIDR: netip.MustParsePrefix(tc.host), LinkCIDR: netip.MustParsePrefix(tc.link)}.withDefaults()
		if err != nil {
			t.Fatalf("%s %s: %v", tc.host, tc.link, err)
		}
		if c.MaxSlots != tc.want {
			t.Errorf("%s %s: MaxSlots %d, want %d", tc.host, tc.link, c.MaxSlots, tc.want)
		}
	}
}
