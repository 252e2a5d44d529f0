// Package servetls is the HTTPS of capsule serve's listeners (the API and
// the sandbox traffic proxy): a certificate and key from files, or, for
// development, a local certificate authority kept in the data directory
// that issues the serving certificate itself.
//
// The E2B SDKs reach a sandbox at https://{port}-{id}.{domain} (port 443)
// outside their debug mode, and the control plane at https://api.{domain}
// unless told otherwise: a deployment needs a certificate for *.{domain}
// (and the API's host). A reverse proxy in front of serve can hold it
// (serve then runs plain HTTP behind it, with --trusted-proxies); or serve
// terminates TLS itself with --tls-cert/--tls-key, or with --tls-dev-ca on
// a development machine.
//
// The development CA is an ECDSA P-256 root, created once and kept in
// DIR/dev-ca.crt (its certificate, 0644: what clients trust, e.g. as
// NODE_EXTRA_CA_CERTS) and DIR/dev-ca.key (its key, 0600, written
// atomically). At every start it issues a fresh serving certificate
// (90 days) for the names Names lists; the root stays, so clients keep
// trusting it across restarts. It is for development only: anyone who
// reads its key can impersonate any site to the clients that trust it, so
// Capsule never adds it to a system store (a client is pointed at its
// root file), and its key is readable by root only.
package servetls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names of the development CA in its directory.
const (
	CACertFile = "dev-ca.crt"
	CAKeyFile  = "dev-ca.key"
)

// Lifetimes.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 90 * 24 * time.Hour
)

// Names returns the names a serving certificate of domain needs:
// *.domain (the sandbox hosts {port}-{id}.domain and api.domain), the
// domain itself, the hosts of apiURLs (the API's public URL), and the
// loopback names (localhost, 127.0.0.1, ::1). A port on domain or a URL is
// left out; duplicates are dropped.
func Names(domain string, apiURLs ...string) []string {
	var out []string
	add := func(n string) {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if d := stripPort(domain); d != "" {
		add("*." + d)
		add(d)
	}
	for _, raw := range apiURLs {
		if u, err := url.Parse(raw); err == nil && u.Hostname() != "" {
			add(u.Hostname())
		}
	}
	add("localhost")
	add("127.0.0.1")
	add("::1")
	return out
}

func stripPort(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// FromFiles loads a certificate chain and its key (PEM files) and checks
// that the certificate covers the sandbox hosts of domain (any
// {port}-{id}.domain), so that a wrong certificate fails at start rather
// than in every client.
func FromFiles(certFile, keyFile, domain string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls: load %s and %s: %w", certFile, keyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("tls: %s: %w", certFile, err)
		}
	}
	if d := stripPort(domain); d != "" {
		if err := leaf.VerifyHostname("49983-sandbox." + d); err != nil {
			return tls.Certificate{}, fmt.Errorf("tls: %s does not cover the sandbox hosts *.%s: %w", certFile, d, err)
		}
	}
	return cert, nil
}

// ServerConfig is the TLS configuration of a listener serving cert.
func ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
}

// DevCA is the development certificate authority.
type DevCA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	// CertPath is the file holding the root certificate (PEM).
	CertPath string
}

// LoadOrCreateDevCA loads the development CA from dir, creating it (and
// dir, 0700) when it has none. now is the clock (time.Now when nil).
func LoadOrCreateDevCA(dir string, now func() time.Time) (*DevCA, error) {
	if now == nil {
		now = time.Now
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		return parseCA(certPEM, keyPEM, certPath)
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
	case cerr != nil && !errors.Is(cerr, os.ErrNotExist):
		return nil, fmt.Errorf("tls: development CA: %w", cerr)
	case kerr != nil && !errors.Is(kerr, os.ErrNotExist):
		return nil, fmt.Errorf("tls: development CA: %w", kerr)
	default:
		return nil, fmt.Errorf("tls: development CA: %s and %s must both exist or neither (remove the other to start a new CA)", certPath, keyPath)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls: development CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := now()
	tpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Capsule development CA", Organization: []string{"Capsule (development only)"}},
		NotBefore:             t.Add(-time.Hour),
		NotAfter:              t.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("tls: development CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The key first: a certificate without its key is refused above, a
	// key without its certificate too, and neither is half written.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("tls: development CA: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("tls: development CA: %w", err)
	}
	return parseCA(certPEM, keyPEM, certPath)
}

func parseCA(certPEM, keyPEM []byte, certPath string) (*DevCA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("tls: development CA: %s or its key is not PEM", certPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tls: development CA: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tls: development CA key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("tls: development CA: %s is not a CA with a signing key", certPath)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("tls: development CA: the key does not match %s", certPath)
	}
	return &DevCA{cert: cert, certPEM: certPEM, key: key, CertPath: certPath}, nil
}

// RootPEM is the CA's certificate in PEM: what clients trust.
func (ca *DevCA) RootPEM() []byte { return slices.Clone(ca.certPEM) }

// Pool is a certificate pool holding only the CA.
func (ca *DevCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issue signs a serving certificate for names (DNS names, wildcards and IP
// addresses) with a new key, valid from now for 90 days.
func (ca *DevCA) Issue(names []string, now time.Time) (tls.Certificate, error) {
	if len(names) == 0 {
		return tls.Certificate{}, errors.New("tls: a certificate needs at least one name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return tls.Certificate{}, err
	}
	tpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tpl.IPAddresses = append(tpl.IPAddresses, ip)
		} else {
			tpl.DNSNames = append(tpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls: issue a serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// writeFileAtomic writes data to path through a synced temporary file
// renamed over it, and syncs the directory.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
