package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules Rules
		want  string
	}{
		{"bad CIDR", Rules{DenyOut: []string{"10.0.0.0/33"}}, "denyOut[0]"},
		{"IPv6", Rules{AllowOut: []string{"2001:db8::/32"}}, "IPv6"},
		{"bad name", Rules{AllowOut: []string{"exa mple.com"}}, "allowOut[0]"},
		{"inner wildcard", Rules{AllowOut: []string{"a.*.com"}}, "allowOut[0]"},
		{"names with allow default", Rules{AllowInternet: true, AllowOut: []string{"example.com"}}, "0.0.0.0/0"},
		{"too many", Rules{DenyOut: strings.Split(strings.Repeat("1.1.1.1,", MaxEntries+1), ",")[:MaxEntries+1]}, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.rules)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		rules Rules
		// names: name → resolves
		names map[string]bool
		// addrs: address → verdict for an address no name was learned for
		addrs map[netip.Addr]Verdict
	}{
		{
			name:  "open",
			rules: Open(),
			names: map[string]bool{"example.com": true},
			addrs: map[netip.Addr]Verdict{a("1.1.1.1"): Allow, a("10.0.0.1"): Deny, a("169.254.169.254"): Deny, a("127.0.0.1"): Deny, a("100.64.0.1"): Deny},
		},
		{
			name:  "closed",
			rules: Closed(),
			names: map[string]bool{"example.com": false},
			addrs: map[netip.Addr]Verdict{a("1.1.1.1"): Deny},
		},
		{
			name:  "ALL_TRAFFIC denied with exceptions",
			rules: Rules{AllowInternet: true, AllowOut: []string{"*.Example.com.", "api.test.org", "8.8.8.0/24"}, DenyOut: []string{AllTraffic, "8.8.8.8", "secret.example.com"}},
			names: map[string]bool{"a.example.com": true, "A.B.EXAMPLE.COM.": true, "example.com": false, "secret.example.com": false, "api.test.org": true, "x.api.test.org": false},
			// allow beats deny for addresses
			addrs: map[netip.Addr]Verdict{a("8.8.8.8"): Allow, a("8.8.4.4"): Deny, a("1.1.1.1"): Deny},
		},
		{
			name:  "allow all but",
			rules: Rules{AllowInternet: true, DenyOut: []string{"1.1.1.0/24", "*.ads.test"}},
			names: map[string]bool{"x.ads.test": false, "ads.test": true, "example.com": true},
			addrs: map[netip.Addr]Verdict{a("1.1.1.1"): Deny, a("1.1.2.1"): Allow, a("192.168.1.1"): Deny},
		},
		{
			name:  "allowOut 0.0.0.0/0 still denies private ranges",
			rules: Rules{AllowOut: []string{AllTraffic}},
			addrs: map[netip.Addr]Verdict{a("1.1.1.1"): Allow, a("172.16.5.5"): Deny, a("224.0.0.1"): Deny, a("0.1.2.3"): Deny},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.rules)
			if err != nil {
				t.Fatal(err)
			}
			for n, want := range tc.names {
				if got := p.NameAllowed(n); got != want {
					t.Errorf("NameAllowed(%q) = %t, want %t", n, got, want)
				}
			}
			for ad, want := range tc.addrs {
				if got := p.AddrVerdict(ad, false, false); got != want {
					t.Errorf("AddrVerdict(%s) = %v, want %v", ad, got, want)
				}
			}
		})
	}
	t.Run("learned addresses", func(t *testing.T) {
		p, _ := Parse(Rules{AllowOut: []string{"example.com"}, DenyOut: []string{"9.9.9.0/24"}})
		if p.AddrVerdict(a("1.2.3.4"), true, false) != Allow || p.AddrVerdict(a("1.2.3.4"), false, false) != Deny {
			t.Error("an address learned for an allowed name must open, and only then")
		}
		if p.AddrVerdict(a("9.9.9.9"), true, false) != Deny {
			t.Error("a denied CIDR beats a learned address")
		}
		q, _ := Parse(Rules{AllowInternet: true, DenyOut: []string{"example.com"}})
		if q.AddrVerdict(a("1.2.3.4"), false, true) != Deny || q.AddrVerdict(a("1.2.3.5"), false, false) != Allow {
			t.Error("an address learned for a denied name must close with the allow default")
		}
	})
}
