package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Lifetimes of the certificates.
const (
	CATTL         = 10 * 365 * 24 * time.Hour
	HostCertTTL   = 30 * 24 * time.Hour
	ClientCertTTL = 30 * 24 * time.Hour
	// backdate is how far before "now" a certificate becomes valid, for
	// peers whose clocks run a little behind.
	backdate = 5 * time.Minute
)

// ClientCommonName is the subject CN of the control plane's client
// certificate; agents may check it.
const ClientCommonName = "capsule-control-plane"

// keyPurpose names the field-cipher key that seals the CA's private key.
const keyPurpose = "pki-ca-key"

// ErrInvalidCSR: the certificate request is malformed, badly signed or of
// an unsupported key type.
var ErrInvalidCSR = errors.New("pki: invalid certificate request")

// ErrInvalidAddress: the declared address is not HOST:PORT.
var ErrInvalidAddress = errors.New("pki: invalid host address")

// Options configure Load.
type Options struct {
	// Now is the clock of issuance and rotation (time.Now when nil).
	Now func() time.Time
}

// CA is the loaded internal CA. It is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM string
	key     *ecdsa.PrivateKey
	pool    *x509.CertPool
	now     func() time.Time
}

// Load returns the platform's CA, creating it when the database has none.
// secret is the server secret (auth.ValidateSecret): the CA's key is
// sealed under a key derived from it.
func Load(ctx context.Context, q *db.Queries, secret []byte, opts Options) (*CA, error) {
	cipher, err := auth.NewFieldCipher(keyPurpose, secret)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	row, err := q.GetInternalCA(ctx)
	if errors.Is(err, store.ErrNotFound) {
		certPEM, sealed, cerr := newCA(cipher, now())
		if cerr != nil {
			return nil, cerr
		}
		// Another replica may have inserted its own in the meantime: the
		// row that won is read back either way.
		if _, ierr := q.InsertInternalCA(ctx, db.InsertInternalCAParams{CertPem: certPEM, KeySealed: sealed}); ierr != nil {
			return nil, fmt.Errorf("pki: store the CA: %w", ierr)
		}
		row, err = q.GetInternalCA(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: read the CA: %w", err)
	}
	return open(row, cipher, now)
}

// newCA makes a CA certificate and its sealed key.
func newCA(cipher *auth.FieldCipher, now time.Time) (certPEM string, sealed []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, fmt.Errorf("pki: CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return "", nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Capsule internal CA", Organization: []string{"Capsule"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return "", nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", nil, fmt.Errorf("pki: CA key: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), cipher.Encrypt(keyDER, keyAD(der)), nil
}

// keyAD binds the sealed key to its certificate.
func keyAD(certDER []byte) []byte {
	sum := sha256.Sum256(certDER)
	return []byte("internal_ca.key_sealed:" + hex.EncodeToString(sum[:]))
}

// open unseals a stored CA.
func open(row db.InternalCa, cipher *auth.FieldCipher, now func() time.Time) (*CA, error) {
	block, _ := pem.Decode([]byte(row.CertPem))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("pki: the stored CA certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: the stored CA certificate: %w", err)
	}
	keyDER, err := cipher.Decrypt(row.KeySealed, keyAD(block.Bytes))
	if err != nil {
		return nil, fmt.Errorf("pki: unseal the CA key (was the server secret changed?): %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("pki: the CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("pki: the CA key does not match its certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, certPEM: row.CertPem, key: key, pool: pool, now: now}, nil
}

// Certificate is the CA's certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM is the CA's certificate in PEM (what agents trust).
func (ca *CA) CertPEM() string { return ca.certPEM }

// Pool is a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// Issued is a certificate the CA signed.
type Issued struct {
	// PEM is the certificate followed by the CA's (the chain a server
	// presents).
	PEM      string
	Cert     *x509.Certificate
	Serial   string
	NotAfter time.Time
}

// IssueHost signs a server certificate for a host from csrPEM, for the
// host part of address (HOST:PORT, as the administrator declared it): an
// IP SAN for an IP address, a DNS SAN for a name. Nothing of the CSR but
// its public key is used.
func (ca *CA) IssueHost(csrPEM, address string) (Issued, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil || host == "" {
		return Issued{}, fmt.Errorf("%w: %q", ErrInvalidAddress, address)
	}
	pub, err := parseCSR(csrPEM)
	if err != nil {
		return Issued{}, err
	}
	tpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: host, Organization: []string{"Capsule host"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tpl.IPAddresses = []net.IP{ip}
	} else {
		tpl.DNSNames = []string{strings.ToLower(strings.TrimSuffix(host, "."))}
	}
	return ca.sign(tpl, pub, HostCertTTL)
}

// parseCSR checks a PEM certificate request and returns its public key.
func parseCSR(csrPEM string) (crypto.PublicKey, error) {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: not a PEM CERTIFICATE REQUEST", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: bad signature", ErrInvalidCSR)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA keys must be P-256 or P-384", ErrInvalidCSR)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA keys must have at least 2048 bits", ErrInvalidCSR)
		}
	default:
		return nil, fmt.Errorf("%w: unsupported key type", ErrInvalidCSR)
	}
	return csr.PublicKey, nil
}

// sign issues tpl for pub, valid from now for ttl (never past the CA).
func (ca *CA) sign(tpl *x509.Certificate, pub crypto.PublicKey, ttl time.Duration) (Issued, error) {
	serial, err := newSerial()
	if err != nil {
		return Issued{}, err
	}
	now := ca.now()
	tpl.SerialNumber = serial
	tpl.NotBefore = now.Add(-backdate)
	tpl.NotAfter = now.Add(ttl)
	if tpl.NotAfter.After(ca.cert.NotAfter) {
		tpl.NotAfter = ca.cert.NotAfter
	}
	tpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.cert, pub, ca.key)
	if err != nil {
		return Issued{}, fmt.Errorf("pki: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Issued{}, fmt.Errorf("pki: sign: %w", err)
	}
	chain := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})) + ca.certPEM
	return Issued{PEM: chain, Cert: cert, Serial: serialText(cert.SerialNumber), NotAfter: cert.NotAfter}, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// serialText is a serial number in lowercase hex.
func serialText(n *big.Int) string { return n.Text(16) }

// ClientCert is the control plane's client certificate, replaced before it
// expires. It is safe for concurrent use.
type ClientCert struct {
	ca  *CA
	cur atomic.Pointer[tls.Certificate]
	mu  sync.Mutex // one renewal at a time
}

// NewClientCert issues the control plane's first client certificate.
func (ca *CA) NewClientCert() (*ClientCert, error) {
	c := &ClientCert{ca: ca}
	if _, err := c.renew(); err != nil {
		return nil, err
	}
	return c, nil
}

// renew issues a new certificate and makes it current.
func (c *ClientCert) renew() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: client key: %w", err)
	}
	iss, err := c.ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: ClientCommonName, Organization: []string{"Capsule"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, &key.PublicKey, ClientCertTTL)
	if err != nil {
		return nil, err
	}
	tc := &tls.Certificate{Certificate: [][]byte{iss.Cert.Raw, c.ca.cert.Raw}, PrivateKey: key, Leaf: iss.Cert}
	c.cur.Store(tc)
	return tc, nil
}

// Current returns the certificate in use, renewing it first when less
// than a third of its lifetime is left (or it has expired).
func (c *ClientCert) Current() (*tls.Certificate, error) {
	tc := c.cur.Load()
	if !c.due(tc) {
		return tc, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if tc = c.cur.Load(); !c.due(tc) {
		return tc, nil // another handshake renewed it
	}
	return c.renew()
}

// due reports whether tc must be replaced now.
func (c *ClientCert) due(tc *tls.Certificate) bool {
	life := tc.Leaf.NotAfter.Sub(tc.Leaf.NotBefore)
	return !c.ca.now().Before(tc.Leaf.NotAfter.Add(-life / 3))
}

// GetClientCertificate implements tls.Config.GetClientCertificate.
func (c *ClientCert) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.Current()
}

// AgentClientTLS is the TLS configuration of the control plane's calls to
// host agents (agentclient.Endpoint.TLS): only the internal CA is trusted,
// the server certificate must name the dialled (declared) address, and
// the client certificate is cc's current one.
func (ca *CA) AgentClientTLS(cc *ClientCert) *tls.Config {
	return &tls.Config{
		RootCAs:              ca.pool,
		GetClientCertificate: cc.GetClientCertificate,
		MinVersion:           tls.VersionTLS13,
		Time:                 ca.now,
	}
}

// AgentServerTLS is a tls.Config an agent's server could use with cert
// (its key pair): client certificates must be issued by the CA for client
// authentication. The agent side builds its own from the CA PEM it
// received; this one serves the control plane's tests and documents the
// contract.
func AgentServerTLS(caPEM string, cert tls.Certificate) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("pki: no certificate in the CA PEM")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
