package pki_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/pki"
	"github.com/capsulehq/capsule/internal/store"
)

var secret = []byte("0123456789abcdef0123456789abcdef-pki-test")

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func loadCA(t *testing.T, st *store.Store, now func() time.Time) *pki.CA {
	t.Helper()
	ca, err := pki.Load(context.Background(), st.Queries(), secret, pki.Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// csr makes a PEM CSR for key that claims names and IPs of its own.
func csr(t *testing.T, key crypto.Signer, dns []string, ips []net.IP) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "evil.example.com"}, DNSNames: dns, IPAddresses: ips,
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIssueHostNamesTheDeclaredAddress: whatever the CSR asks for, the
// certificate names the declared address only, and it verifies against
// the CA for that address and no other.
func TestIssueHostNamesTheDeclaredAddress(t *testing.T) {
	st := openStore(t)
	clk := &clock{t: time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)}
	ca := loadCA(t, st, clk.Now)
	key := p256(t)
	greedy := csr(t, key, []string{"control.example.com", "other-host.example.com"}, []net.IP{net.ParseIP("10.9.9.9")})
	for _, tc := range []struct {
		name, address, verifyAs string
		wantIP                  string
		wantDNS                 string
	}{
		{"IPv4", "192.0.2.10:7443", "192.0.2.10", "192.0.2.10", ""},
		{"IPv6", "[2001:db8::7]:7443", "2001:db8::7", "2001:db8::7", ""},
		{"DNS name", "Host-3.Example.com:7443", "host-3.example.com", "", "host-3.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := ca.IssueHost(greedy, tc.address)
			if err != nil {
				t.Fatal(err)
			}
			c := iss.Cert
			switch {
			case tc.wantIP != "" && (len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP(tc.wantIP)) || len(c.DNSNames) != 0):
				t.Fatalf("SANs = %v %v, want only IP %s", c.IPAddresses, c.DNSNames, tc.wantIP)
			case tc.wantDNS != "" && (len(c.DNSNames) != 1 || c.DNSNames[0] != tc.wantDNS || len(c.IPAddresses) != 0):
				t.Fatalf("SANs = %v %v, want only DNS %s", c.IPAddresses, c.DNSNames, tc.wantDNS)
			}
			if !c.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
				t.Fatal("the certificate is not for the CSR's key")
			}
			if got := c.NotAfter.Sub(clk.Now()); got != pki.HostCertTTL {
				t.Fatalf("lifetime %s, want %s", got, pki.HostCertTTL)
			}
			if iss.Serial == "" || iss.NotAfter != c.NotAfter {
				t.Fatalf("issued = %+v", iss)
			}
			opts := x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			for _, name := range []string{tc.verifyAs} {
				opts.DNSName = name
				if _, err := c.Verify(opts); err != nil {
					t.Fatalf("verify as %s: %v", name, err)
				}
			}
			for _, claimed := range []string{"control.example.com", "other-host.example.com", "10.9.9.9", "evil.example.com"} {
				opts.DNSName = claimed
				if _, err := c.Verify(opts); err == nil {
					t.Fatalf("the certificate verifies for the CSR's claim %s", claimed)
				}
			}
		})
	}
}

func TestIssueHostRefusesBadInput(t *testing.T) {
	st := openStore(t)
	ca := loadCA(t, st, nil)
	good := csr(t, p256(t), nil, nil)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(good))
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	for _, tc := range []struct {
		name, csr, address string
		want               error
	}{
		{"no port", good, "192.0.2.1", pki.ErrInvalidAddress},
		{"empty host", good, ":7443", pki.ErrInvalidAddress},
		{"not PEM", "hello", "192.0.2.1:1", pki.ErrInvalidCSR},
		{"a certificate, not a request", ca.CertPEM(), "192.0.2.1:1", pki.ErrInvalidCSR},
		{"bad signature", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})), "192.0.2.1:1", pki.ErrInvalidCSR},
		{"weak RSA key", csr(t, weak, nil, nil), "192.0.2.1:1", pki.ErrInvalidCSR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ca.IssueHost(tc.csr, tc.address); !errors.Is(err, tc.want) {
				t.Fatalf("IssueHost = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestClientCertRotates: the client certificate is replaced once two
// thirds of its life have passed (and after expiry), not before.
func TestClientCertRotates(t *testing.T) {
	st := openStore(t)
	clk := &clock{t: time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)}
	ca := loadCA(t, st, clk.Now)
	cc, err := ca.NewClientCert()
	if err != nil {
		t.Fatal(err)
	}
	first, _ := cc.Current()
	leaf := first.Leaf
	if leaf.Subject.CommonName != pki.ClientCommonName || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("client certificate: CN %q, EKU %v", leaf.Subject.CommonName, leaf.ExtKeyUsage)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		c, err := cc.Current()
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}
	steps := []struct {
		name    string
		advance time.Duration
		renewed bool
	}{
		{"fresh", 0, false},
		{"half its life", pki.ClientCertTTL / 2, false},
		{"two thirds of its life", pki.ClientCertTTL/6 + 5*time.Minute, true},
		{"just after", time.Hour, false},
		{"long after expiry", 3 * pki.ClientCertTTL, true},
	}
	prev := serial()
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clk.Add(s.advance)
			got := serial()
			if (got != prev) != s.renewed {
				t.Fatalf("serial %s → %s, renewed = %v, want %v", prev, got, got != prev, s.renewed)
			}
			c, _ := cc.Current()
			if !clk.Now().Before(c.Leaf.NotAfter) {
				t.Fatalf("the current certificate expired at %s (now %s)", c.Leaf.NotAfter, clk.Now())
			}
			prev = got
		})
	}
}

// TestConcurrentFirstStartsMakeOneCA: replicas starting together over one
// database all end with the same CA, and a restart reads it back; a
// wrong server secret cannot open it.
func TestConcurrentFirstStartsMakeOneCA(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	const replicas = 6
	pems := make([]string, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range replicas {
		// Each replica has its own connection pool, as separate
		// processes would.
		rst := openSameDB(t, st)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ca, err := pki.Load(ctx, rst.Queries(), secret, pki.Options{})
			if err == nil {
				pems[i] = ca.CertPEM()
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		if pems[i] != pems[0] {
			t.Fatalf("replica %d has another CA", i)
		}
	}
	var n int
	if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM internal_ca").Scan(&n); err != nil || n != 1 {
		t.Fatalf("internal_ca rows: %d, %v", n, err)
	}
	var sealed []byte
	if err := st.Pool().QueryRow(ctx, "SELECT key_sealed FROM internal_ca").Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(sealed); err == nil {
		t.Fatal("the CA key is stored in the clear")
	}
	t.Run("restart", func(t *testing.T) {
		if ca := loadCA(t, st, nil); ca.CertPEM() != pems[0] {
			t.Fatal("a restart made another CA")
		}
	})
	t.Run("other secret", func(t *testing.T) {
		if _, err := pki.Load(ctx, st.Queries(), []byte("another secret of thirty-two bytes or more!"), pki.Options{}); err == nil {
			t.Fatal("the CA opened under another server secret")
		}
	})
}

// openSameDB opens another pool on st's database.
func openSameDB(t *testing.T, st *store.Store) *store.Store {
	t.Helper()
	o, err := store.Open(context.Background(), st.Pool().Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	return o
}

// agentStub answers every RPC Unimplemented: enough to prove that the
// TLS handshake (both ways) succeeded.
type agentStub struct {
	hostagentv1connect.UnimplementedHostAgentHandler
}

// TestAgentClientMutualTLS: agentclient with AgentClientTLS reaches an
// agent whose certificate names the dialled address and which demands a
// client certificate of the CA; an agent certified for another address,
// or a client without the certificate, fails the handshake.
func TestAgentClientMutualTLS(t *testing.T) {
	st := openStore(t)
	ca := loadCA(t, st, nil)
	cc, err := ca.NewClientCert()
	if err != nil {
		t.Fatal(err)
	}
	serve := func(t *testing.T, declared string) string {
		t.Helper()
		key := p256(t)
		iss, err := ca.IssueHost(csr(t, key, []string{"127.0.0.1"}, []net.IP{net.ParseIP("127.0.0.1")}), declared)
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{Certificate: [][]byte{iss.Cert.Raw}, PrivateKey: key, Leaf: iss.Cert}
		cfg, err := pki.AgentServerTLS(ca.CertPEM(), cert)
		if err != nil {
			t.Fatal(err)
		}
		var seenCN string
		mux := http.NewServeMux()
		path, h := hostagentv1connect.NewHostAgentHandler(agentStub{})
		mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seenCN = r.TLS.PeerCertificates[0].Subject.CommonName
			h.ServeHTTP(w, r)
		}))
		srv := httptest.NewUnstartedServer(mux)
		srv.EnableHTTP2 = true
		srv.TLS = cfg
		srv.StartTLS()
		t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
		t.Cleanup(func() {
			if seenCN != "" && seenCN != pki.ClientCommonName {
				t.Errorf("the agent saw client CN %q", seenCN)
			}
		})
		return srv.URL
	}
	otherKey := p256(t)
	otherIss, err := ca.IssueHost(csr(t, otherKey, nil, nil), "127.0.0.1:7444")
	if err != nil {
		t.Fatal(err)
	}
	otherHost := tls.Certificate{Certificate: [][]byte{otherIss.Cert.Raw}, PrivateKey: otherKey, Leaf: otherIss.Cert}
	call := func(url string, tlsCfg *tls.Config) error {
		c, err := agentclient.New(agentclient.Endpoint{URL: url, Token: "t", TLS: tlsCfg})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.ListSandboxes(context.Background(), connect.NewRequest(&pb.ListSandboxesRequest{}))
		return err
	}
	for _, tc := range []struct {
		name     string
		declared string
		tls      func() *tls.Config
		reached  bool
	}{
		{"declared address, client certificate", "127.0.0.1:7443", func() *tls.Config { return ca.AgentClientTLS(cc) }, true},
		{"certified for another address", "127.0.0.2:7443", func() *tls.Config { return ca.AgentClientTLS(cc) }, false},
		{"no client certificate", "127.0.0.1:7443", func() *tls.Config { return &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13} }, false},
		// Another host's server certificate, from the same CA, does not
		// pass for the control plane's (server auth only).
		{"a host certificate as the client's", "127.0.0.1:7443", func() *tls.Config {
			return &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{otherHost}}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := call(serve(t, tc.declared), tc.tls())
			var ce *connect.Error
			reached := errors.As(err, &ce) && ce.Code() == connect.CodeUnimplemented
			if reached != tc.reached {
				t.Fatalf("call = %v; reached the agent: %v, want %v", err, reached, tc.reached)
			}
		})
	}
}
