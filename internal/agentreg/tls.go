package agentreg

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"

	"github.com/capsulehq/capsule/internal/hostapi"
)

// TLSConfig is the agent's server TLS configuration: the issued server
// certificate and the CA, read on every handshake (a renewed certificate
// or CA is served without a restart), TLS 1.3, and a client certificate
// required and verified against the CA, which must be the control plane's
// (hostapi.VerifyControlPlane: client-auth usage, common name
// hostapi.ControlPlaneCommonName). Serve it with http.Server.ServeTLS.
func (c *Client) TLSConfig() *tls.Config {
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		cur := c.cert.Load()
		if cur == nil {
			return nil, errors.New("agentreg: not registered: no server certificate")
		}
		return &cur.tls, nil
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			ca := c.ca.Load()
			if ca == nil {
				return nil, errors.New("agentreg: not registered: no CA")
			}
			return &tls.Config{
				MinVersion:       tls.VersionTLS13,
				NextProtos:       []string{"h2", "http/1.1"},
				GetCertificate:   getCert,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				ClientCAs:        ca.pool,
				VerifyConnection: func(cs tls.ConnectionState) error { return hostapi.VerifyControlPlane(&cs) },
				// Every connection shows its client certificate to the
				// CA of the moment: no resumption of a session verified
				// before a rotation.
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// ServerCertificate is the certificate served now (nil before
// registration).
func (c *Client) ServerCertificate() *x509.Certificate {
	if cur := c.cert.Load(); cur != nil {
		return cur.leaf
	}
	return nil
}

// NewHTTPClient returns the client of the control plane's API: it trusts
// the CAs in caFile when set (PEM), else the system's roots.
func NewHTTPClient(caFile string) (*http.Client, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, errors.New(caFile + ": no PEM certificate")
		}
		t.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: t}, nil
}
