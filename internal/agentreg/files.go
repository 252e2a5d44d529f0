package agentreg

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/capsulehq/capsule/internal/hostapi"
)

// The files of a registered agent, in Config.Dir (mode 0700), each 0600.
const (
	// CredentialsFile holds the host's credentials (stored).
	CredentialsFile = "credentials.json"
	// ServerCertFile holds the server certificate chain and, after it,
	// its private key (one file, so that a renewal replaces both at once).
	ServerCertFile = "server.pem"
	// CAFile holds the internal CA bundle the control plane's client
	// certificate must chain to.
	CAFile = "ca.pem"
)

// stored is what CredentialsFile holds.
type stored struct {
	hostapi.Credentials
	// Address is the address the control plane dials (the declared one).
	Address string `json:"address"`
	// ControlPlane is the URL the host registered with.
	ControlPlane string `json:"control_plane"`
	// ReceivedAt is when the agent received the access token (it
	// refreshes it after 2/3 of its life).
	ReceivedAt time.Time `json:"received_at"`
}

// writeFileAtomic replaces dir/name with data, mode 0600, so that a crash
// leaves the old file or the new one: a temporary file in dir, synced,
// renamed over the name, then dir synced.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename: nothing there
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ensureDir creates dir (0700) or tightens an existing one.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// readPrivate reads dir/name, refusing a file other users can read.
func readPrivate(dir, name string) ([]byte, error) {
	p := filepath.Join(dir, name)
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible to other users (mode %04o): chmod 600 it", p, fi.Mode().Perm())
	}
	return os.ReadFile(p)
}

// loaded is a registered agent's state read from its files.
type loaded struct {
	creds stored
	cert  *serverCert
	ca    *caBundle
}

// errNoFiles: the agent is not registered (some file is missing).
var errNoFiles = errors.New("not registered")

// load reads the three files of dir; errNoFiles when any is missing.
func load(dir string) (*loaded, error) {
	var raw [3][]byte
	for i, name := range []string{CredentialsFile, ServerCertFile, CAFile} {
		b, err := readPrivate(dir, name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errNoFiles
		}
		if err != nil {
			return nil, err
		}
		raw[i] = b
	}
	l := &loaded{}
	if err := json.Unmarshal(raw[0], &l.creds); err != nil {
		return nil, fmt.Errorf("%s: %w", CredentialsFile, err)
	}
	if l.creds.HostID == "" || l.creds.AccessToken == "" || l.creds.RefreshToken == "" {
		return nil, fmt.Errorf("%s: incomplete credentials", CredentialsFile)
	}
	ca, err := parseCA(raw[2])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAFile, err)
	}
	cert, err := parseServerPEM(raw[1])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ServerCertFile, err)
	}
	l.ca, l.cert = ca, cert
	return l, nil
}

// caBundle is the internal CA: its PEM and the pool made of it.
type caBundle struct {
	pem  []byte
	pool *x509.CertPool
}

func parseCA(b []byte) (*caBundle, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		if !c.IsCA {
			return nil, fmt.Errorf("%q is not a CA certificate", c.Subject.CommonName)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no CA certificate")
	}
	return &caBundle{pem: b, pool: pool}, nil
}

// serverCert is the agent's server certificate with its key.
type serverCert struct {
	tls  tls.Certificate
	leaf *x509.Certificate
}

// renewAt is when the certificate has a third of its lifetime left.
func (s *serverCert) renewAt() time.Time {
	life := s.leaf.NotAfter.Sub(s.leaf.NotBefore)
	return s.leaf.NotBefore.Add(life - life/3)
}

// parseServerPEM reads a chain of CERTIFICATE blocks and a private key.
func parseServerPEM(b []byte) (*serverCert, error) {
	c, err := tls.X509KeyPair(b, b)
	if err != nil {
		return nil, err
	}
	return &serverCert{tls: c, leaf: c.Leaf}, nil
}

// newServerCert checks an issued chain against the key it was requested
// for and the CA, and returns the certificate and the PEM to store.
func newServerCert(chainPEM string, key *ecdsa.PrivateKey, ca *caBundle, now time.Time) (*serverCert, []byte, error) {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	chain := []byte(chainPEM)
	if len(chain) > 0 && chain[len(chain)-1] != '\n' {
		chain = append(chain, '\n')
	}
	full := append(chain, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	sc, err := parseServerPEM(full) // also checks that the certificate is for key
	if err != nil {
		return nil, nil, fmt.Errorf("issued certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, der := range sc.tls.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := sc.leaf.Verify(x509.VerifyOptions{Roots: ca.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, nil, fmt.Errorf("issued certificate: %w", err)
	}
	return sc, full, nil
}
