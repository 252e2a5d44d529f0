package proxy

import (
	"context"
	"net/http/httptest"
	"testing"
)

func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		name, host, hdrID, hdrPort string
		id                         string
		port                       int
		bad                        string
	}{
		{"host form", "8080-abc123.capsule.test", "", "", "abc123", 8080, ""},
		{"host form with port and extra parts", "49983-abc123-client.capsule.test:8080", "", "", "abc123", 49983, ""},
		{"upper-case host", "8080-ABC123.Capsule.Test", "", "", "abc123", 8080, ""},
		{"headers on localhost", "localhost:8080", "abc123", "49983", "abc123", 49983, ""},
		{"headers on an IP", "127.0.0.1:8080", "abc123", "3000", "abc123", 3000, ""},
		{"headers on an IPv6 literal", "[::1]:8080", "abc123", "3000", "abc123", 3000, ""},
		{"headers on sandbox.domain", "sandbox.capsule.test", "abc123", "3000", "abc123", 3000, ""},
		{"headers ignored on a sandbox host", "8080-abc123.capsule.test", "zzz", "1", "abc123", 8080, ""},
		{"one header missing", "localhost", "abc123", "", "", 0, "missing header"},
		{"bad header port", "localhost", "abc123", "http", "", 0, "Invalid sandbox port"},
		{"header port out of range", "localhost", "abc123", "70000", "", 0, "Invalid sandbox port"},
		{"bad header ID", "localhost", "ABC_1", "80", "", 0, "Invalid sandbox ID"},
		{"no dot", "localhost", "", "", "", 0, "Invalid host"},
		{"no dash", "abc.capsule.test", "", "", "", 0, "Invalid host"},
		{"bad port", "x-abc.capsule.test", "", "", "", 0, "Invalid sandbox port"},
		{"bad ID", "80-a_b.capsule.test", "", "", "", 0, "Invalid sandbox ID"},
		{"empty ID", "80-.capsule.test", "", "", "", 0, "Invalid sandbox ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Host = tc.host
			if tc.hdrID != "" {
				r.Header.Set(HeaderSandboxID, tc.hdrID)
			}
			if tc.hdrPort != "" {
				r.Header.Set(HeaderSandboxPort, tc.hdrPort)
			}
			id, port, bad := target(r)
			if id != tc.id || port != tc.port || bad != tc.bad {
				t.Fatalf("got (%q, %d, %q), want (%q, %d, %q)", id, port, bad, tc.id, tc.port, tc.bad)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	h, err := New(Config{Domain: "capsule.test", Resolver: nilResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host, hdrID string
		want        bool
	}{
		{"8080-abc.capsule.test", "", true},
		{"8080-abc.capsule.test:8080", "", true},
		{"localhost:8080", "", false},
		{"localhost:8080", "abc", true},
		{"api.capsule.test", "", false},
		{"a.8080-abc.capsule.test", "", false},
		{"8080-abc.other.test", "", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = tc.host
		if tc.hdrID != "" {
			r.Header.Set(HeaderSandboxID, tc.hdrID)
		}
		if got := h.Matches(r); got != tc.want {
			t.Errorf("Matches(%q, id %q) = %v, want %v", tc.host, tc.hdrID, got, tc.want)
		}
	}
}

// nilResolver knows no sandbox (routing tests never resolve).
type nilResolver struct{}

func (nilResolver) Resolve(context.Context, string) (Route, error)     { return Route{}, ErrNotFound }
func (nilResolver) Wake(context.Context, string) (Route, error)        { return Route{}, ErrNotFound }
func (nilResolver) APIKeyTeam(context.Context, string) (string, error) { return "", ErrNotFound }
func (nilResolver) Touch(context.Context, string)                      {}
func (nilResolver) RunningSandboxes(context.Context) ([]string, error) { return nil, nil }
func (nilResolver) EnvdToken(string) string                            { return "" }

// Signed file URLs carry no routing: the proxy takes them on any host.
func TestMatchesSignedFileURLs(t *testing.T) {
	h, err := New(Config{Domain: "capsule.test", Resolver: nilResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, host, target string
		want                 bool
	}{
		{"GET", "localhost:8080", "/files?path=x&signature=v1_abc", true},
		{"POST", "my-server.example.com", "/files?signature=v1_abc", true},
		{"GET", "10.0.0.1", "/files?path=x", false},
		{"GET", "localhost", "/files?signature=v2_abc", false},
		{"PUT", "localhost", "/files?signature=v1_abc", false},
		{"GET", "localhost", "/v1/sandboxes?signature=v1_abc", false},
	} {
		r := httptest.NewRequest(tc.method, tc.target, nil)
		r.Host = tc.host
		if got := h.Matches(r); got != tc.want {
			t.Errorf("%s %s%s: Matches = %v, want %v", tc.method, tc.host, tc.target, got, tc.want)
		}
	}
}
