package agentreg_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hostapi"
)

// testCA plays the platform's internal CA with crypto/x509. It stays so on
// purpose: these tests need certificates internal/pki never issues (other
// names, server-only or no extended key usage, lifetimes of seconds for
// the renewal, a second CA for the rotation), and pki's CA exists only in
// PostgreSQL (pki.Load). internal/deptest would not object (`go list
// -deps` without -test ignores test imports); the real pki against a real
// agent is TestRegisteredAgentEndToEnd in cmd/capsule.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pem    string
	serial atomic.Int64
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	ca.serial.Store(100)
	return ca
}

// sign issues a certificate for pub.
func (ca *testCA) sign(pub any, cn string, usage []x509.ExtKeyUsage, ips []net.IP, from, until time.Time) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: from, NotAfter: until, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, IPAddresses: ips,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
}

// signCSR issues the agent's server certificate for a PEM CSR, valid
// from..until, for 127.0.0.1.
func (ca *testCA) signCSR(csrPEM string, from, until time.Time) (string, error) {
	blk, _ := pem.Decode([]byte(csrPEM))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return "", errors.New("no CSR")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return "", err
	}
	if err := csr.CheckSignature(); err != nil {
		return "", err
	}
	der, err := ca.sign(csr.PublicKey, "capsule-host", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		[]net.IP{net.IPv4(127, 0, 0, 1)}, from, until)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}

// clientCert issues a TLS client certificate with a fresh key.
func (ca *testCA) clientCert(t testing.TB, cn string, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, err := ca.sign(&key.PublicKey, cn, usage, nil, now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// controlPlaneCert is the control plane's client certificate.
func (ca *testCA) controlPlaneCert(t testing.TB) tls.Certificate {
	return ca.clientCert(t, hostapi.ControlPlaneCommonName, x509.ExtKeyUsageClientAuth)
}

func newDiscardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
