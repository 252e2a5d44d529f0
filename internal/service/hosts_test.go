package service

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateHostAddress(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "": refused
	}{
		{"10.0.0.7:7443", "10.0.0.7:7443"},
		{"[2001:DB8::7]:7443", "[2001:db8::7]:7443"},
		{"Host-A.Example.com:1", "host-a.example.com:1"},
		{"localhost:65535", "localhost:65535"},
		{"10.0.0.7", ""},
		{"10.0.0.7:0", ""},
		{"10.0.0.7:65536", ""},
		{"10.0.0.7:07443", ""},
		{":7443", ""},
		{"0.0.0.0:7443", ""},
		{"[fe80::1%eth0]:7443", ""},
		{"https://10.0.0.7:7443", ""},
		{"host_a:7443", ""},
		{"-host:7443", ""},
		{"a..b:7443", ""},
		{strings.Repeat("a", 64) + ".example:7443", ""},
		{"10.0.0.7:7443/path", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := validateHostAddress(tc.in)
			if tc.want == "" {
				if err == nil || !errors.Is(err, ErrInvalid) {
					t.Fatalf("validateHostAddress(%q) = %q, %v; want ErrInvalid", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("validateHostAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestValidateHostNameAndTags(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"host-a", true}, {"h", true}, {"rack1.host-2", true},
		{"", false}, {"Host", false}, {"-a", false}, {"a-", false}, {"a_b", false}, {strings.Repeat("a", 254), false},
	} {
		if err := validateHostName(tc.name); (err == nil) != tc.ok {
			t.Errorf("validateHostName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	got, err := validateTags([]string{"zone=b", "gpu", "zone=b", "arch:amd64"})
	if err != nil || strings.Join(got, ",") != "arch:amd64,gpu,zone=b" {
		t.Fatalf("validateTags = %v, %v", got, err)
	}
	for _, bad := range [][]string{{""}, {"a b"}, {"-x"}, {strings.Repeat("t", 64)}, make([]string, 33)} {
		if _, err := validateTags(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("validateTags(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
