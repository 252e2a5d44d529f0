package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentproxy"
	"github.com/capsulehq/capsule/internal/hostapi"
)

// certFor issues a certificate signed by parent (self-signed CA when
// parent is nil).
func certFor(t *testing.T, parent *tls.Certificate, cn string, ca bool, usage []x509.ExtKeyUsage, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: ca, BasicConstraintsValid: ca, ExtKeyUsage: usage, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	signer, signKey := tmpl, any(key)
	if parent != nil {
		signer, signKey = parent.Leaf, parent.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestClientCertAuth: with Config.ClientCertAuth the agent lets through
// only requests whose connection verified the control plane's client
// certificate, whatever the TLS layer let in: a cleartext connection, or a
// TLS server that verifies chains but not names (a misconfiguration), is
// refused on RPCs and traffic alike, and no bearer token helps.
func TestClientCertAuth(t *testing.T) {
	ca := certFor(t, nil, "test CA", true, nil)
	server := certFor(t, &ca, "agent", false, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, net.IPv4(127, 0, 0, 1))
	cp := certFor(t, &ca, hostapi.ControlPlaneCommonName, false, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	host := certFor(t, &ca, "capsule-host-2", false, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	pool := x509.NewCertPool()
	pool.AddCert(ca.Leaf)

	s := &stub{}
	log := slog.New(slog.DiscardHandler)
	path, h := hostagentv1connect.NewHostAgentHandler(s, connect.WithInterceptors(&authInterceptor{log: log, certAuth: true}))
	mux := http.NewServeMux()
	mux.Handle(path, h)
	s.a = &Agent{log: log, mux: mux, cfg: Config{ClientCertAuth: true}}

	// Chains verified against the CA, names not: the agent must check.
	tlsSrv := httptest.NewUnstartedServer(s.a)
	tlsSrv.TLS = &tls.Config{Certificates: []tls.Certificate{server}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	plain := httptest.NewServer(s.a)
	defer plain.Close()

	clientOf := func(cert *tls.Certificate) *http.Client {
		cfg := &tls.Config{RootCAs: pool}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		url  string
		hc   *http.Client
		ok   bool
	}{
		{"the control plane's certificate", tlsSrv.URL, clientOf(&cp), true},
		{"another client certificate of the CA", tlsSrv.URL, clientOf(&host), false},
		{"cleartext with the bearer token", plain.URL, plain.Client(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rpc := hostagentv1connect.NewHostAgentClient(tc.hc, tc.url,
				connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
					return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
						req.Header().Set("Authorization", "Bearer "+testToken)
						return next(ctx, req)
					}
				})))
			_, err := rpc.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "a"}))
			if tc.ok && err != nil {
				t.Fatalf("RPC: %v", err)
			}
			if !tc.ok && connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("RPC: %v, want unauthenticated", err)
			}
			if tc.ok {
				return // traffic that passes needs a manager: TestRealHost (agentreg) proxies to a guest over mTLS
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tc.url+"/", nil)
			req.Header.Set(agentproxy.SandboxHeader, "a")
			req.Header.Set(agentproxy.PortHeader, "80")
			req.Header.Set(agentproxy.TokenHeader, "Bearer "+testToken)
			resp, err := tc.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("traffic: %d, want 401", resp.StatusCode)
			}
		})
	}
}
