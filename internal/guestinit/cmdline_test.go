package guestinit

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestParseIPConfig(t *testing.T) {
	tests := []struct {
		in   string
		want *IPConfig
		err  string // substring of the error; "" means success
	}{
		{in: "off"},
		{in: "none"},
		{in: "NONE"},
		{in: "dhcp", want: &IPConfig{Device: "eth0", Autoconf: "dhcp"}},
		{in: "on", want: &IPConfig{Device: "eth0", Autoconf: "on"}},
		{
			in: "169.254.0.21::169.254.0.22:255.255.255.252:sb-1:eth0:off:1.1.1.1:8.8.8.8",
			want: &IPConfig{
				Client: pfx("169.254.0.21/30"), Gateway: addr("169.254.0.22"), Hostname: "sb-1",
				Device: "eth0", Autoconf: "off", DNS: []netip.Addr{addr("1.1.1.1"), addr("8.8.8.8")},
			},
		},
		{
			in:   "10.0.2.15:10.0.2.2:10.0.2.2:24::ens3",
			want: &IPConfig{Client: pfx("10.0.2.15/24"), Server: addr("10.0.2.2"), Gateway: addr("10.0.2.2"), Device: "ens3"},
		},
		{in: "10.0.2.15::::::", want: &IPConfig{Client: pfx("10.0.2.15/8"), Device: "eth0"}},                                        // classful A
		{in: "172.16.1.2", want: &IPConfig{Client: pfx("172.16.1.2/16"), Device: "eth0"}},                                           // classful B, one field
		{in: "192.168.7.9:::::", want: &IPConfig{Client: pfx("192.168.7.9/24"), Device: "eth0"}},                                    // classful C
		{in: "192.168.7.9:::/28", want: &IPConfig{Client: pfx("192.168.7.9/28"), Device: "eth0"}},                                   // "/28"
		{in: "192.168.7.9:::0.0.0.0", want: &IPConfig{Client: pfx("192.168.7.9/0"), Device: "eth0"}},                                // /0 is contiguous
		{in: "192.168.7.9:::32", want: &IPConfig{Client: pfx("192.168.7.9/32"), Device: "eth0"}},                                    // host route
		{in: "192.168.7.9::10.0.0.1:32", want: &IPConfig{Client: pfx("192.168.7.9/32"), Gateway: addr("10.0.0.1"), Device: "eth0"}}, // off-subnet gw
		{in: "10.1.1.1:::8::eth1:none:::", want: &IPConfig{Client: pfx("10.1.1.1/8"), Device: "eth1", Autoconf: "none"}},            // trailing empties
		{in: "10.1.1.1:::8:::OFF", want: &IPConfig{Client: pfx("10.1.1.1/8"), Device: "eth0", Autoconf: "off"}},                     // case
		{in: "10.1.1.1:::8:::::2001:db8::1", err: "fields"},                                                                         // v6 dns splits into fields
		{in: ":::::eth0:dhcp", want: &IPConfig{Device: "eth0", Autoconf: "dhcp"}},                                                   // no client
		{in: "10.1.1.1:::8:::off:0.0.0.0:9.9.9.9", want: &IPConfig{Client: pfx("10.1.1.1/8"), Device: "eth0", Autoconf: "off", DNS: []netip.Addr{addr("9.9.9.9")}}},
		{in: "10.1.1.1:::8:::off:::1.2.3.4", want: &IPConfig{Client: pfx("10.1.1.1/8"), Device: "eth0", Autoconf: "off"}}, // ntp0 validated, unused

		// Malformed.
		{in: "", err: "empty"},
		{in: "10.1.1", err: "client address"},
		{in: "10.1.1.1.1", err: "client address"},
		{in: "fe80::1", err: "client address"}, // no colons allowed in a field anyway
		{in: "2001:db8::1::::", err: "client address"},
		{in: "0.0.0.0::::::", err: "not a unicast"},
		{in: "127.0.0.1::::::", err: "not a unicast"},
		{in: "224.0.0.1::::::", err: "not a unicast"},
		{in: "255.255.255.255", err: "not a unicast"},
		{in: "10.1.1.1:x", err: "server address"},
		{in: "10.1.1.1::10.1.1.x", err: "gateway address"},
		{in: "::10.1.1.1:24", err: "needs a client"},
		{in: ":::24", err: "needs a client"},
		{in: "10.1.1.1::10.1.1.1:24", err: "is the client address"},
		{in: "10.1.1.1:::33", err: "out of range"},
		{in: "10.1.1.1:::-1", err: "netmask"},
		{in: "10.1.1.1:::/", err: "netmask"},
		{in: "10.1.1.1:::255.0.255.0", err: "contiguous"},
		{in: "10.1.1.1:::255.255.255.1", err: "contiguous"},
		{in: "10.1.1.1:::ffff::", err: "netmask"},
		{in: "10.1.1.1:::999999999999999999999", err: "out of range"},
		{in: "240.1.1.1", err: "classful"},
		{in: "10.1.1.1::::bad_host", err: "hostname"},
		{in: "10.1.1.1::::-host", err: "hostname"},
		{in: "10.1.1.1::::a..b", err: "hostname"},
		{in: "10.1.1.1::::" + strings.Repeat("a", 65), err: "hostname"},
		{in: "10.1.1.1:::::averyveryverylongifname", err: "device"},
		{in: "10.1.1.1:::::et/h0", err: "device"},
		{in: "10.1.1.1::::::static", err: "autoconf"},
		{in: "10.1.1.1:::::::1.1.1", err: "dns0"},
		{in: "10.1.1.1::::::::dns", err: "dns1"},
		{in: "10.1.1.1:::::::::ntp", err: "ntp0"},
		{in: "10.1.1.1:::::::::1.2.3.4:extra", err: "fields"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseIPConfig(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseIPConfig(%q) = %+v, %v; want error containing %q", tc.in, got, err, tc.err)
				}
				if !errors.Is(err, ErrBadParam) {
					t.Fatalf("error %v does not wrap ErrBadParam", err)
				}
				if got != nil {
					t.Fatalf("got %+v with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseIPConfig(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseIPConfig(%q)\n got %+v\nwant %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestIPConfigStatic(t *testing.T) {
	for _, tc := range []struct {
		c    *IPConfig
		want bool
	}{
		{nil, false},
		{&IPConfig{Autoconf: "dhcp"}, false},
		{&IPConfig{Client: pfx("10.0.0.2/24")}, true},
		{&IPConfig{Client: pfx("10.0.0.2/24"), Autoconf: "off"}, true},
		{&IPConfig{Client: pfx("10.0.0.2/24"), Autoconf: "none"}, true},
		{&IPConfig{Client: pfx("10.0.0.2/24"), Autoconf: "dhcp"}, false},
	} {
		if got := tc.c.Static(); got != tc.want {
			t.Errorf("%+v.Static() = %v, want %v", tc.c, got, tc.want)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  \n", nil},
		{"a b\tc\n", []string{"a", "b", "c"}},
		{`x="a b" y`, []string{"x=a b", "y"}},
		{`"x=a b" y`, []string{"x=a b", "y"}},
		{`x="" y`, []string{"x=", "y"}},
		{`x="unterminated y z`, []string{"x=unterminated y z"}},
		{"a\x00b", []string{"a", "b"}},
	} {
		if got := splitCmdline(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitCmdline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	cl := `BOOT_IMAGE=/vmlinuz console=ttyS0 reboot=k panic=1 root=/dev/vda rootfstype=ext4 ro rw ` +
		`ip=169.254.0.21::169.254.0.22:30:sb-abc:eth0:off:1.1.1.1 ` +
		`capsule.sandbox_id=sb-abc capsule.template_id=tpl-1 capsule.template_id=tpl-2 ` +
		`capsule.note="hello world" capsule. =nokey quiet init=/sbin/other -- capsule.after=1 single`
	bp, err := ParseCmdline(cl + "\n")
	if err != nil {
		t.Fatal(err)
	}
	wantCapsule := map[string]string{"sandbox_id": "sb-abc", "template_id": "tpl-2", "note": "hello world"}
	if !reflect.DeepEqual(bp.Capsule, wantCapsule) {
		t.Errorf("Capsule = %v, want %v", bp.Capsule, wantCapsule)
	}
	if bp.Root != "/dev/vda" || bp.RootFSType != "ext4" || bp.ReadOnly || bp.Init != "/sbin/other" {
		t.Errorf("root params: %+v", bp)
	}
	if _, ok := bp.Args["quiet"]; !ok || bp.Args["console"] != "ttyS0" {
		t.Errorf("Args = %v", bp.Args)
	}
	if _, ok := bp.Args["single"]; ok {
		t.Error("words after -- were parsed as parameters")
	}
	if bp.IP == nil || bp.IP.Client != pfx("169.254.0.21/30") || bp.IP.Gateway != addr("169.254.0.22") {
		t.Fatalf("IP = %+v", bp.IP)
	}
	if bp.Hostname != "sb-abc" {
		t.Errorf("Hostname = %q", bp.Hostname)
	}
	if bp.DNS != nil {
		t.Errorf("DNS override = %v without capsule.dns", bp.DNS)
	}

	// rw then ro: the later wins.
	if bp, _ := ParseCmdline("rw ro"); !bp.ReadOnly {
		t.Error("rw ro: want read-only")
	}
	// Overrides.
	bp, err = ParseCmdline("ip=10.0.0.2:::24:iphost capsule.dns=9.9.9.9,2620:fe::fe capsule.hostname=over")
	if err != nil {
		t.Fatal(err)
	}
	if bp.Hostname != "over" || !reflect.DeepEqual(bp.DNS, []netip.Addr{addr("9.9.9.9"), addr("2620:fe::fe")}) {
		t.Errorf("overrides: hostname %q dns %v", bp.Hostname, bp.DNS)
	}
}

func TestParseCmdlineErrorsKeepTheRest(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"ip=10.0.0.300 capsule.sandbox_id=x", "ip="},
		{"capsule.dns=1.1.1 capsule.sandbox_id=x", "capsule.dns"},
		{"capsule.dns=0.0.0.0 capsule.sandbox_id=x", "capsule.dns"},
		{"capsule.dns=, capsule.sandbox_id=x", "capsule.dns"},
		{"capsule.hostname=bad_name capsule.sandbox_id=x", "capsule.hostname"},
	} {
		bp, err := ParseCmdline(tc.in)
		if err == nil || !errors.Is(err, ErrBadParam) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseCmdline(%q): err = %v, want one about %s", tc.in, err, tc.err)
		}
		if bp == nil || bp.Capsule["sandbox_id"] != "x" {
			t.Errorf("ParseCmdline(%q) lost the other parameters: %+v", tc.in, bp)
			continue
		}
		if bp.IP != nil || bp.DNS != nil || bp.Hostname != "" {
			t.Errorf("ParseCmdline(%q) kept a malformed value: %+v", tc.in, bp)
		}
	}
	// An empty capsule.dns= is no override, not an error.
	if _, err := ParseCmdline("capsule.dns="); err != nil {
		t.Errorf("capsule.dns=: %v", err)
	}
}

func TestSystemParam(t *testing.T) {
	var s *System
	if s.Param("sandbox_id") != "" {
		t.Error("nil System has params")
	}
	bp, _ := ParseCmdline("capsule.sandbox_id=sb-1")
	s = &System{Boot: bp}
	if got := s.Param("sandbox_id"); got != "sb-1" {
		t.Errorf("Param = %q", got)
	}
}
