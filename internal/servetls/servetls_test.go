package servetls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name   string
		domain string
		urls   []string
		want   []string
	}{
		{"domain with a port, API URL on it", "capsule.test:8443", []string{"https://api.capsule.test:8443"},
			[]string{"*.capsule.test", "capsule.test", "api.capsule.test", "localhost", "127.0.0.1", "::1"}},
		{"API elsewhere", "sbx.example.com", []string{"https://capsule.example.com/"},
			[]string{"*.sbx.example.com", "sbx.example.com", "capsule.example.com", "localhost", "127.0.0.1", "::1"}},
		{"localhost", "localhost", []string{"http://localhost:8080"}, []string{"*.localhost", "localhost", "127.0.0.1", "::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Names(tc.domain, tc.urls...); !slices.Equal(got, tc.want) {
				t.Fatalf("Names(%q, %q) = %q, want %q", tc.domain, tc.urls, got, tc.want)
			}
		})
	}
}

// TestDevCA: the CA is created once (key 0600), loaded again unchanged,
// and its serving certificates verify for the sandbox hosts, the domain,
// the API host and loopback against its root alone; a half-present CA and
// a key of another CA are refused.
func TestDevCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ca, err := LoadOrCreateDevCA(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	var leaf *x509.Certificate
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"files and modes", func(t *testing.T) {
			for file, mode := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
				fi, err := os.Stat(filepath.Join(dir, file))
				if err != nil || fi.Mode().Perm() != mode {
					t.Fatalf("%s: %v, %v; want mode %v", file, fi.Mode(), err, mode)
				}
			}
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("the CA directory: %v, %v", fi.Mode(), err)
			}
			b, _ := os.ReadFile(ca.CertPath)
			if string(b) != string(ca.RootPEM()) || !strings.HasPrefix(string(b), "-----BEGIN CERTIFICATE-----") {
				t.Fatalf("root file %q", b)
			}
		}},
		{"loaded again, the same CA", func(t *testing.T) {
			again, err := LoadOrCreateDevCA(dir, clock)
			if err != nil || string(again.RootPEM()) != string(ca.RootPEM()) {
				t.Fatalf("reload: %v (same root: %v)", err, err == nil && string(again.RootPEM()) == string(ca.RootPEM()))
			}
		}},
		{"a serving certificate verifies for every name", func(t *testing.T) {
			cert, err := ca.Issue(Names("capsule.test:8443", "https://api.capsule.test"), now)
			if err != nil {
				t.Fatal(err)
			}
			leaf = cert.Leaf
			for _, host := range []string{"49983-0123456789abcdef0123456789abcdef.capsule.test", "3000-x.capsule.test", "capsule.test",
				"api.capsule.test", "localhost", "127.0.0.1", "::1"} {
				if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: ca.Pool(), CurrentTime: now,
					Intermediates: x509.NewCertPool()}); err != nil {
					t.Errorf("%s: %v", host, err)
				}
			}
			for _, host := range []string{"a.b.capsule.test", "capsule.other", "evil.test"} {
				if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: ca.Pool(), CurrentTime: now}); err == nil {
					t.Errorf("%s verifies", host)
				}
			}
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "capsule.test", CurrentTime: now}); err == nil {
				t.Error("verifies without the development root")
			}
		}},
		{"the certificate files a server can load", func(t *testing.T) {
			cert, err := ca.Issue(Names("capsule.test"), now)
			if err != nil {
				t.Fatal(err)
			}
			certFile, keyFile := writePair(t, cert)
			if _, err := FromFiles(certFile, keyFile, "capsule.test:443"); err != nil {
				t.Fatalf("FromFiles: %v", err)
			}
			if _, err := FromFiles(certFile, keyFile, "other.test"); err == nil || !strings.Contains(err.Error(), "does not cover") {
				t.Fatalf("FromFiles for another domain: %v", err)
			}
			other, _ := ca.Issue([]string{"capsule.test"}, now)
			_, otherKey := writePair(t, other)
			if _, err := FromFiles(certFile, otherKey, "capsule.test"); err == nil {
				t.Fatal("FromFiles with another certificate's key succeeded")
			}
		}},
		{"a CA with half its files is refused", func(t *testing.T) {
			half := t.TempDir()
			b, _ := os.ReadFile(ca.CertPath)
			if err := os.WriteFile(filepath.Join(half, CACertFile), b, 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadOrCreateDevCA(half, clock); err == nil || !strings.Contains(err.Error(), "both") {
				t.Fatalf("half a CA: %v", err)
			}
		}},
		{"a key of another CA is refused", func(t *testing.T) {
			otherDir := t.TempDir()
			if _, err := LoadOrCreateDevCA(otherDir, clock); err != nil {
				t.Fatal(err)
			}
			mixed := t.TempDir()
			b, _ := os.ReadFile(ca.CertPath)
			k, _ := os.ReadFile(filepath.Join(otherDir, CAKeyFile))
			_ = os.WriteFile(filepath.Join(mixed, CACertFile), b, 0o644)
			_ = os.WriteFile(filepath.Join(mixed, CAKeyFile), k, 0o600)
			if _, err := LoadOrCreateDevCA(mixed, clock); err == nil || !strings.Contains(err.Error(), "does not match") {
				t.Fatalf("mismatched key: %v", err)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

// writePair writes cert's chain and key as PEM files.
func writePair(t *testing.T, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
