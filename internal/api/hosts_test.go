package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/pki"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

type hostEnv struct {
	*apiEnv
	svc *servicetest.Env
	clk *testClock
}

// newHostAPI serves the API with an agent pool that resolves hosts
// through service.Hosts.Resolve (mutual TLS from the internal CA), and a
// settable clock.
func newHostAPI(t *testing.T) *hostEnv {
	t.Helper()
	// The clock starts at the real time: the database's now() and the
	// services' clock agree until a test moves it.
	clk := &testClock{t: time.Now()}
	var hosts *service.Hosts
	pool := agentclient.NewPool(agentclient.Options{Resolve: func(ctx context.Context, id string) (agentclient.Endpoint, error) {
		return hosts.Resolve(ctx, id)
	}})
	t.Cleanup(pool.Close)
	// A static agent (capsule serve's embedded one of old): the platform
	// host "local", which cannot be deleted.
	if err := pool.Set(service.LocalHost, agentclient.Endpoint{URL: "http://127.0.0.1:1", Token: "unused"}); err != nil {
		t.Fatal(err)
	}
	se := servicetest.NewWith(t, "", "", func(c *service.ServicesConfig) {
		c.Agents = pool
		c.Now = clk.Now
	})
	hosts = se.Hosts
	h, err := New(Config{Accounts: se.Accounts, Sandboxes: se.Sandboxes, Audit: se.Audit, Store: se.Store, Teams: se.Teams, Hosts: se.Hosts,
		SignupLimit: auth.RateLimit{Burst: 100, Interval: time.Hour}, LoginEmailLimit: auth.RateLimit{Burst: 100, Interval: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &hostEnv{apiEnv: &apiEnv{st: se.Store, h: h, srv: srv}, svc: se, clk: clk}
}

// admin signs up a platform administrator (is_admin set in the database).
func (e *hostEnv) admin(t *testing.T, email string) (jwt, teamID string) {
	t.Helper()
	jwt, _, teamID = e.account(t, email)
	u, err := e.st.Queries().GetUserByEmail(context.Background(), email)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.Queries().SetUserAdmin(context.Background(), db.SetUserAdminParams{ID: u.ID, IsAdmin: true}); err != nil {
		t.Fatal(err)
	}
	return jwt, teamID
}

// member adds a new user to team with role and returns their session in
// that team.
func (e *hostEnv) member(t *testing.T, ownerJWT, team, email, role string) string {
	t.Helper()
	e.account(t, email)
	if c := e.do(t, "POST", "/v1/teams/"+team+"/members", ownerJWT, map[string]string{"email": email, "role": role}, nil); c != 201 {
		t.Fatalf("add %s as %s: %d", email, role, c)
	}
	var s sessionJSON
	if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": email, "password": "correct horse battery"}, &s); c != 200 {
		t.Fatalf("login %s: %d", email, c)
	}
	if c := e.do(t, "POST", "/v1/auth/switch-team", s.Token, map[string]string{"team_id": team}, &s); c != 200 {
		t.Fatalf("switch %s to %s: %d", email, team, c)
	}
	return s.Token
}

func (e *hostEnv) enableBYOC(t *testing.T, team string) {
	t.Helper()
	id, err := wireid.Parse(wireid.Team, team)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Queries().SetTeamBYOC(context.Background(), db.SetTeamBYOCParams{ID: id, IsBYOC: true}); err != nil {
		t.Fatal(err)
	}
}

func (e *hostEnv) hostRow(t *testing.T, id string) db.Host {
	t.Helper()
	uid, err := wireid.Parse(wireid.Host, id)
	if err != nil {
		t.Fatal(err)
	}
	row, err := e.st.Queries().GetHost(context.Background(), uid)
	if err != nil {
		t.Fatal(err)
	}
	return row
}

// agentCSR makes an agent key and a CSR that claims names of its own.
func agentCSR(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "control-plane.example.com"},
		DNSNames:    []string{"control-plane.example.com", "other-host"},
		IPAddresses: []net.IP{net.ParseIP("10.66.66.66")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func registration(token, csr string) hostapi.RegisterRequest {
	return hostapi.RegisterRequest{Token: token, Arch: "amd64", VCPUs: 8, MemoryMB: 16384, DiskMB: 100000,
		Address: "10.66.66.66:7443", Version: "test-1", CSR: csr}
}

func parseChain(t *testing.T, chain string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode([]byte(chain))
	if block == nil {
		t.Fatalf("no PEM in %q", chain)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// stubAgent answers DestroySandbox (recording the calls and the client
// certificate's CN) and nothing else.
type stubAgent struct {
	hostagentv1connect.UnimplementedHostAgentHandler
	mu        sync.Mutex
	destroyed []string
}

func (a *stubAgent) DestroySandbox(_ context.Context, r *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	a.mu.Lock()
	a.destroyed = append(a.destroyed, r.Msg.GetSandboxId())
	a.mu.Unlock()
	return connect.NewResponse(&pb.DestroySandboxResponse{}), nil
}

// TestHostLifecycleOverHTTP: an administrator creates a host; its agent
// registers (the certificate names the declared address, not the one
// the agent claims), beats, renews its certificate, refreshes its
// credentials; a replayed refresh token revokes the family; the host is
// force-deleted, its sandboxes destroyed over mutual TLS, and its next
// heartbeat is 404.
func TestHostLifecycleOverHTTP(t *testing.T) {
	e := newHostAPI(t)
	ctx := context.Background()
	adminJWT, _ := e.admin(t, "root@example.com")
	userJWT, userKey, userTeam := e.account(t, "user@example.com")

	// The agent's listener exists first: its port is the declared address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	declared := ln.Addr().String()

	var created createdHostJSON
	if c := e.do(t, "POST", "/v1/hosts", adminJWT, map[string]any{"name": "host-a", "type": "regular", "address": declared,
		"tags": []string{"zone=a", "ssd", "ssd"}}, &created); c != 201 {
		t.Fatalf("create: %d", c)
	}
	hostID := created.Host.ID
	if !strings.HasPrefix(created.RegistrationToken, auth.HostRegistrationTokenPrefix) || created.Host.Status != "pending" ||
		created.Host.Type != "regular" || created.Host.Address != declared || strings.Join(created.Host.Tags, ",") != "ssd,zone=a" {
		t.Fatalf("created = %+v", created)
	}
	if row := e.hostRow(t, hostID); string(row.RegistrationTokenHash) != string(auth.HashToken(created.RegistrationToken)) {
		t.Fatal("the registration token is not stored as its SHA-256")
	}

	key, csr := agentCSR(t)
	var reg hostapi.RegisterResponse
	t.Run("register", func(t *testing.T) {
		if c := e.do(t, "POST", hostapi.PathRegister, "", registration(created.RegistrationToken, csr), &reg); c != 201 {
			t.Fatalf("register: %d", c)
		}
		if reg.HostID != hostID || reg.Address != declared || reg.CA != e.svc.CA.CertPEM() || reg.AccessToken == "" ||
			!strings.HasPrefix(reg.RefreshToken, auth.HostRefreshTokenPrefix) {
			t.Fatalf("registration = %+v", reg)
		}
		if d := time.Until(reg.AccessTokenExpiresAt); d < hostapi.AccessTokenTTL-time.Minute || d > hostapi.AccessTokenTTL+time.Minute {
			t.Fatalf("access token expires in %s", d)
		}
		if d := time.Until(reg.RefreshTokenExpiresAt); d < hostapi.RefreshTokenTTL-time.Minute || d > hostapi.RefreshTokenTTL+time.Minute {
			t.Fatalf("refresh token expires in %s", d)
		}
		cert := parseChain(t, reg.Certificate)
		if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || len(cert.DNSNames) != 0 {
			t.Fatalf("certificate SANs %v %v, want only the declared 127.0.0.1", cert.IPAddresses, cert.DNSNames)
		}
		if !cert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
			t.Fatal("the certificate is not for the agent's key")
		}
		var h hostJSON
		if c := e.do(t, "GET", "/v1/hosts/"+hostID, adminJWT, nil, &h); c != 200 {
			t.Fatalf("get: %d", c)
		}
		if h.Address != declared || h.ClaimedAddress != "10.66.66.66:7443" || h.Arch != "amd64" || h.Total.VCPUs != 8 ||
			h.Total.MemoryMB != 16384 || h.Version != "test-1" || h.RegisteredAt == nil || h.CertExpiresAt == nil {
			t.Fatalf("host after registration = %+v", h)
		}
	})
	t.Run("reused registration token", func(t *testing.T) {
		_, csr2 := agentCSR(t)
		before := e.hostRow(t, hostID)
		if c := e.do(t, "POST", hostapi.PathRegister, "", registration(created.RegistrationToken, csr2), nil); c != 409 {
			t.Fatalf("second use of the token: %d, want 409", c)
		}
		if after := e.hostRow(t, hostID); !after.UpdatedAt.Equal(before.UpdatedAt) || after.CertSerial != before.CertSerial {
			t.Fatal("a refused registration changed the host")
		}
	})
	t.Run("credentials do not cross", func(t *testing.T) {
		// A host JWT is no user session, a user's session or key no host token.
		for _, path := range []string{"/v1/hosts", "/v1/sandboxes", "/v1/me"} {
			if c := e.do(t, "GET", path, reg.AccessToken, nil, nil); c != 401 {
				t.Errorf("host JWT on GET %s: %d, want 401", path, c)
			}
		}
		for _, cred := range []string{userJWT, adminJWT} {
			if c := e.do(t, "POST", hostapi.PathHeartbeat, cred, hostapi.Heartbeat{}, nil); c != 401 {
				t.Errorf("user session on the heartbeat: %d, want 401", c)
			}
		}
		req, _ := http.NewRequest("POST", e.srv.URL+hostapi.PathHeartbeat, strings.NewReader("{}"))
		req.Header.Set("X-API-Key", userKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("API key on the heartbeat: %d, want 401", resp.StatusCode)
		}
		// The registration token is no refresh token, nor the reverse.
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: created.RegistrationToken}, nil); c != 401 {
			t.Errorf("registration token as a refresh token: %d", c)
		}
	})
	beat := hostapi.Heartbeat{Version: "test-2", Total: hostapi.Resources{VCPUs: 8, MemoryMB: 16384, DiskMB: 100000},
		MaxVCPUs: 12, Used: hostapi.Resources{VCPUs: 3, MemoryMB: 2048, DiskMB: 5000}, Running: 2, Paused: 1, Sandboxes: 3}
	t.Run("heartbeat", func(t *testing.T) {
		var hb hostapi.HeartbeatResponse
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, beat, &hb); c != 200 {
			t.Fatalf("heartbeat: %d", c)
		}
		if hb.Status != "online" || hb.IntervalSeconds != 15 || hb.Certificate != "" {
			t.Fatalf("heartbeat answer %+v", hb)
		}
		var h hostJSON
		e.do(t, "GET", "/v1/hosts/"+hostID, adminJWT, nil, &h)
		if h.Status != "online" || h.MaxVCPUs != 12 || h.Used != (hostResourcesJSON{VCPUs: 3, MemoryMB: 2048, DiskMB: 5000}) || h.Running != 2 ||
			h.Paused != 1 || h.Sandboxes != 3 || h.Version != "test-2" || h.LastHeartbeatAt == nil {
			t.Fatalf("host after a heartbeat = %+v", h)
		}
		if c := e.do(t, "POST", "/v1/hosts/"+hostID+"/token", adminJWT, nil, nil); c != 409 {
			t.Fatalf("a new registration token for an online host: %d, want 409", c)
		}
		bad := beat
		bad.MaxVCPUs = -1
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, bad, nil); c != 400 {
			t.Fatalf("a heartbeat declaring -1 vCPUs: %d, want 400", c)
		}
		if row := e.hostRow(t, hostID); row.MaxVCPUs != 12 {
			t.Fatalf("max_vcpus after a refused heartbeat = %d, want 12", row.MaxVCPUs)
		}
	})
	t.Run("drain and back", func(t *testing.T) {
		var h hostJSON
		for _, st := range []string{"draining", "online"} {
			if c := e.do(t, "PATCH", "/v1/hosts/"+hostID, adminJWT, map[string]any{"status": st}, &h); c != 200 || h.Status != st {
				t.Fatalf("PATCH status %s: %d %s", st, c, h.Status)
			}
			if st == "draining" {
				var hb hostapi.HeartbeatResponse
				if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, beat, &hb); c != 200 || hb.Status != "draining" {
					t.Fatalf("a heartbeat of a draining host: %d %s", c, hb.Status)
				}
			}
		}
		if c := e.do(t, "PATCH", "/v1/hosts/"+hostID, adminJWT, map[string]any{"status": "pending"}, nil); c != 400 {
			t.Fatalf("PATCH status pending: %d, want 400", c)
		}
	})
	t.Run("certificate renewal", func(t *testing.T) {
		before := e.hostRow(t, hostID)
		_, csr2 := agentCSR(t)
		// Six days on (the access token lives seven): the new
		// certificate outlives the first.
		e.clk.Advance(6 * 24 * time.Hour)
		defer e.clk.Advance(-6 * 24 * time.Hour)
		var hb hostapi.HeartbeatResponse
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, hostapi.Heartbeat{Version: "test-2", Total: beat.Total, CSR: csr2}, &hb); c != 200 {
			t.Fatalf("heartbeat with a CSR: %d", c)
		}
		cert := parseChain(t, hb.Certificate)
		if hb.CA != e.svc.CA.CertPEM() || len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
			t.Fatalf("renewed certificate SANs %v %v", cert.IPAddresses, cert.DNSNames)
		}
		after := e.hostRow(t, hostID)
		if after.CertSerial == before.CertSerial || !after.CertExpiresAt.Time.Equal(cert.NotAfter) || !cert.NotAfter.After(before.CertExpiresAt.Time) {
			t.Fatalf("certificate record %s/%s → %s/%s", before.CertSerial, before.CertExpiresAt.Time, after.CertSerial, after.CertExpiresAt.Time)
		}
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, hostapi.Heartbeat{CSR: "not a CSR"}, nil); c != 400 {
			t.Fatalf("heartbeat with a bad CSR: %d, want 400", c)
		}
	})
	t.Run("refresh rotation and replay", func(t *testing.T) {
		var c1 hostapi.Credentials
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: reg.RefreshToken}, &c1); c != 200 {
			t.Fatalf("refresh: %d", c)
		}
		if c1.HostID != hostID || c1.RefreshToken == reg.RefreshToken || c1.AccessToken == "" {
			t.Fatalf("refreshed = %+v", c1)
		}
		if c := e.do(t, "POST", hostapi.PathHeartbeat, c1.AccessToken, beat, nil); c != 200 {
			t.Fatalf("heartbeat with the new access token: %d", c)
		}
		var c2 hostapi.Credentials
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: c1.RefreshToken}, &c2); c != 200 {
			t.Fatalf("second refresh: %d", c)
		}
		// The first token, revoked by the rotation, is replayed: refused,
		// and the newest token of its family dies with it.
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: reg.RefreshToken}, nil); c != 401 {
			t.Fatalf("replayed refresh token: %d, want 401", c)
		}
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: c2.RefreshToken}, nil); c != 401 {
			t.Fatalf("the family's newest token after a replay: %d, want 401", c)
		}
		var live int
		if err := e.st.Pool().QueryRow(ctx, "SELECT count(*) FROM host_refresh_tokens WHERE revoked_at IS NULL").Scan(&live); err != nil || live != 0 {
			t.Fatalf("live refresh tokens after the replay: %d, %v", live, err)
		}
		var n int
		if err := e.st.Pool().QueryRow(ctx, "SELECT count(*) FROM audit_logs WHERE action = 'host.refresh_token_reused' AND resource_id = $1", hostID).Scan(&n); err != nil || n != 2 {
			// Both presentations of a revoked token are recorded.
			t.Fatalf("audit of the replay: %d, %v", n, err)
		}
	})

	// Two sandboxes of another team run on the host.
	stub := &stubAgent{}
	var sandboxes []string
	tid, _ := wireid.Parse(wireid.Team, userTeam)
	hid, _ := wireid.Parse(wireid.Host, hostID)
	for range 2 {
		row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: tid, HostID: hid, Template: "minimal",
			State: store.SandboxRunning, VCPUs: 1, MemoryMB: 256, AllowInternetAccess: true, Metadata: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		sandboxes = append(sandboxes, service.ID(row.ID))
	}
	t.Run("delete refused while sandboxes live", func(t *testing.T) {
		before := e.hostRow(t, hostID)
		if c := e.do(t, "DELETE", "/v1/hosts/"+hostID, adminJWT, nil, nil); c != 409 {
			t.Fatalf("delete without force: %d, want 409", c)
		}
		var eb errorBody
		e.do(t, "DELETE", "/v1/hosts/"+hostID, adminJWT, nil, &eb)
		for _, id := range sandboxes {
			if !strings.Contains(eb.Message, id) {
				t.Fatalf("the 409 does not name sandbox %s: %q", id, eb.Message)
			}
		}
		if after := e.hostRow(t, hostID); !after.UpdatedAt.Equal(before.UpdatedAt) {
			t.Fatal("a refused delete changed the host")
		}
		var prev struct {
			Sandboxes []hostSandboxJSON `json:"sandboxes"`
		}
		if c := e.do(t, "GET", "/v1/hosts/"+hostID+"/delete-preview", adminJWT, nil, &prev); c != 200 || len(prev.Sandboxes) != 2 {
			t.Fatalf("delete preview: %d %+v", c, prev)
		}
	})
	t.Run("force delete over mutual TLS", func(t *testing.T) {
		// The agent serves the certificate it got at registration and
		// demands the control plane's client certificate.
		cert := tls.Certificate{Certificate: [][]byte{parseChain(t, reg.Certificate).Raw}, PrivateKey: key}
		cfg, err := pki.AgentServerTLS(reg.CA, cert)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var clientCNs []string
		path, handler := hostagentv1connect.NewHostAgentHandler(stub)
		mux := http.NewServeMux()
		mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			clientCNs = append(clientCNs, r.TLS.PeerCertificates[0].Subject.CommonName)
			mu.Unlock()
			handler.ServeHTTP(w, r)
		}))
		srv := httptest.NewUnstartedServer(mux)
		srv.Listener.Close()
		srv.Listener = ln
		srv.EnableHTTP2 = true
		srv.TLS = cfg
		srv.StartTLS()
		defer func() { srv.CloseClientConnections(); srv.Close() }()

		var del hostDeletionJSON
		if c := e.do(t, "DELETE", "/v1/hosts/"+hostID+"?force=true", adminJWT, nil, &del); c != 200 {
			t.Fatalf("force delete: %d", c)
		}
		if !del.Deleted || len(del.Sandboxes) != 2 || del.SandboxesDestroyed != 2 || del.SandboxesNotDestroyed != 0 {
			t.Fatalf("deletion = %+v", del)
		}
		stub.mu.Lock()
		got := strings.Join(stub.destroyed, ",")
		stub.mu.Unlock()
		if got != strings.Join(sandboxes, ",") {
			t.Fatalf("the agent destroyed %q, want %q", got, strings.Join(sandboxes, ","))
		}
		mu.Lock()
		for _, cn := range clientCNs {
			if cn != pki.ClientCommonName {
				t.Fatalf("the agent saw client CN %q", cn)
			}
		}
		mu.Unlock()
		for _, id := range sandboxes {
			sid, _ := wireid.Parse(wireid.Sandbox, id)
			row, err := e.st.Queries().GetSandboxByID(ctx, sid)
			if err != nil || row.State != store.SandboxStopped || row.StateReason != "host deleted" {
				t.Fatalf("sandbox %s after the delete: %s %q %v", id, row.State, row.StateReason, err)
			}
		}
		if c := e.do(t, "GET", "/v1/hosts/"+hostID, adminJWT, nil, nil); c != 404 {
			t.Fatalf("get after delete: %d, want 404", c)
		}
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, beat, nil); c != 404 {
			t.Fatalf("heartbeat after delete: %d, want 404", c)
		}
		var n int
		if err := e.st.Pool().QueryRow(ctx, "SELECT count(*) FROM audit_logs WHERE action = 'host.deleted' AND resource_id = $1", hostID).Scan(&n); err != nil || n != 1 {
			t.Fatalf("audit of the deletion: %d, %v", n, err)
		}
	})
}

// TestHostRegistrationTokenRules: an expired token is refused and
// consumes nothing, bad input consumes nothing, a regenerated token
// replaces the old one, and a refresh token past its 60 days is refused.
func TestHostRegistrationTokenRules(t *testing.T) {
	e := newHostAPI(t)
	adminJWT, _ := e.admin(t, "root@example.com")
	var created createdHostJSON
	if c := e.do(t, "POST", "/v1/hosts", adminJWT, map[string]any{"name": "host-b", "type": "regular", "address": "host-b.internal:7443"}, &created); c != 201 {
		t.Fatalf("create: %d", c)
	}
	if d := time.Until(created.RegistrationTokenExpiresAt); d < 23*time.Hour || d > 25*time.Hour {
		t.Fatalf("the registration token expires in %s, want 24h", d)
	}
	_, csr := agentCSR(t)
	unchanged := func(t *testing.T, before db.Host) {
		t.Helper()
		after := e.hostRow(t, created.Host.ID)
		if !after.UpdatedAt.Equal(before.UpdatedAt) || after.RegistrationTokenUsedAt.Valid || after.RegisteredAt.Valid {
			t.Fatal("a refused registration changed the host")
		}
	}
	for _, tc := range []struct {
		name string
		req  hostapi.RegisterRequest
		want int
	}{
		{"unknown token", registration(auth.HostRegistrationTokenPrefix+strings.Repeat("0", 64), csr), 401},
		{"malformed token", registration("hello", csr), 401},
		{"no CSR", registration(created.RegistrationToken, ""), 400},
		{"garbage CSR", registration(created.RegistrationToken, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 400},
		{"no CPUs", func() hostapi.RegisterRequest {
			r := registration(created.RegistrationToken, csr)
			r.VCPUs = 0
			return r
		}(), 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.hostRow(t, created.Host.ID)
			if c := e.do(t, "POST", hostapi.PathRegister, "", tc.req, nil); c != tc.want {
				t.Fatalf("register: %d, want %d", c, tc.want)
			}
			unchanged(t, before)
		})
	}
	t.Run("expired token", func(t *testing.T) {
		before := e.hostRow(t, created.Host.ID)
		e.clk.Advance(25 * time.Hour)
		defer e.clk.Advance(-25 * time.Hour)
		if c := e.do(t, "POST", hostapi.PathRegister, "", registration(created.RegistrationToken, csr), nil); c != 401 {
			t.Fatalf("register with an expired token: %d, want 401", c)
		}
		unchanged(t, before)
	})
	var fresh createdHostJSON
	t.Run("regenerated token", func(t *testing.T) {
		if c := e.do(t, "POST", "/v1/hosts/"+created.Host.ID+"/token", adminJWT, nil, &fresh); c != 201 || fresh.RegistrationToken == created.RegistrationToken {
			t.Fatalf("regenerate: %d", c)
		}
		if c := e.do(t, "POST", hostapi.PathRegister, "", registration(created.RegistrationToken, csr), nil); c != 401 {
			t.Fatalf("the replaced token: %d, want 401", c)
		}
	})
	var reg hostapi.RegisterResponse
	t.Run("register with the new token", func(t *testing.T) {
		if c := e.do(t, "POST", hostapi.PathRegister, "", registration(fresh.RegistrationToken, csr), &reg); c != 201 {
			t.Fatalf("register: %d", c)
		}
		cert := parseChain(t, reg.Certificate)
		if len(cert.DNSNames) != 1 || cert.DNSNames[0] != "host-b.internal" || len(cert.IPAddresses) != 0 {
			t.Fatalf("certificate SANs %v %v, want only the declared host-b.internal", cert.DNSNames, cert.IPAddresses)
		}
	})
	t.Run("a new registration kills the old credentials", func(t *testing.T) {
		// The host never beat, so it is still pending: its administrator
		// may hand out another token, and the agent that uses it replaces
		// the first registration.
		var again createdHostJSON
		if c := e.do(t, "POST", "/v1/hosts/"+created.Host.ID+"/token", adminJWT, nil, &again); c != 201 {
			t.Fatalf("regenerate: %d", c)
		}
		e.clk.Advance(2 * time.Second)
		var reg2 hostapi.RegisterResponse
		if c := e.do(t, "POST", hostapi.PathRegister, "", registration(again.RegistrationToken, csr), &reg2); c != 201 {
			t.Fatalf("register again: %d", c)
		}
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, hostapi.Heartbeat{}, nil); c != 401 {
			t.Fatalf("heartbeat with the first registration's access token: %d, want 401", c)
		}
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: reg.RefreshToken}, nil); c != 401 {
			t.Fatalf("refresh with the first registration's refresh token: %d, want 401", c)
		}
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg2.AccessToken, hostapi.Heartbeat{}, nil); c != 200 {
			t.Fatalf("heartbeat with the new access token: %d", c)
		}
		reg = reg2
	})
	t.Run("expired access and refresh tokens", func(t *testing.T) {
		e.clk.Advance(hostapi.AccessTokenTTL + time.Hour)
		if c := e.do(t, "POST", hostapi.PathHeartbeat, reg.AccessToken, hostapi.Heartbeat{}, nil); c != 401 {
			t.Fatalf("heartbeat with an expired access token: %d, want 401", c)
		}
		e.clk.Advance(hostapi.RefreshTokenTTL)
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: reg.RefreshToken}, nil); c != 401 {
			t.Fatalf("refresh with an expired refresh token: %d, want 401", c)
		}
	})
}

// postJSON posts v and returns the status and body (safe off the test's
// goroutine).
func (e *hostEnv) postJSON(path string, v any) (int, []byte, error) {
	buf, err := json.Marshal(v)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.Post(e.srv.URL+path, "application/json", bytes.NewReader(buf))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// TestHostTokensUnderConcurrency: agents racing with one registration
// token register once; racing with one refresh token, one rotates it, one
// more is the token's one grace replay (internal/hostapi: Credentials), and
// the others are reuses, which revoke the family (the winners' tokens too).
func TestHostTokensUnderConcurrency(t *testing.T) {
	e := newHostAPI(t)
	adminJWT, _ := e.admin(t, "root@example.com")
	var created createdHostJSON
	if c := e.do(t, "POST", "/v1/hosts", adminJWT, map[string]any{"name": "host-c", "type": "regular", "address": "192.0.2.3:7443"}, &created); c != 201 {
		t.Fatalf("create: %d", c)
	}
	const racers = 4
	race := func(path string, body func(i int) any) ([]int, [][]byte) {
		codes, bodies := make([]int, racers), make([][]byte, racers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			wg.Go(func() {
				<-start
				var err error
				if codes[i], bodies[i], err = e.postJSON(path, body(i)); err != nil {
					codes[i] = -1
				}
			})
		}
		close(start)
		wg.Wait()
		return codes, bodies
	}
	count := func(codes []int, c int) (n int) {
		for _, x := range codes {
			if x == c {
				n++
			}
		}
		return n
	}
	csrs := make([]string, racers)
	for i := range csrs {
		_, csrs[i] = agentCSR(t)
	}
	codes, bodies := race(hostapi.PathRegister, func(i int) any { return registration(created.RegistrationToken, csrs[i]) })
	if count(codes, 201) != 1 || count(codes, 409) != racers-1 {
		t.Fatalf("concurrent registrations with one token: %v, want one 201 and the rest 409", codes)
	}
	var reg hostapi.RegisterResponse
	for i, c := range codes {
		if c == 201 {
			if err := json.Unmarshal(bodies[i], &reg); err != nil {
				t.Fatal(err)
			}
		}
	}
	if row := e.hostRow(t, created.Host.ID); row.CertSerial != serialOf(t, reg.Certificate) {
		t.Fatalf("the host records certificate %s, the winner got %s", row.CertSerial, serialOf(t, reg.Certificate))
	}
	codes, bodies = race(hostapi.PathRefresh, func(int) any { return hostapi.RefreshRequest{RefreshToken: reg.RefreshToken} })
	if count(codes, 200) != 2 || count(codes, 401) != racers-2 {
		t.Fatalf("concurrent refreshes with one token: %v, want two 200 (rotation and grace) and the rest 401", codes)
	}
	for i, c := range codes {
		if c != 200 {
			continue
		}
		var cr hostapi.Credentials
		if err := json.Unmarshal(bodies[i], &cr); err != nil {
			t.Fatal(err)
		}
		if c := e.do(t, "POST", hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: cr.RefreshToken}, nil); c != 401 {
			t.Fatalf("the winner's token after the replays: %d, want 401 (its family is revoked)", c)
		}
	}
}

func serialOf(t *testing.T, chain string) string {
	t.Helper()
	return parseChain(t, chain).SerialNumber.Text(16)
}

// TestHostForceDeleteUnreachableAgent: a forced delete of a host whose
// agent cannot be reached still stops its sandboxes' records and deletes
// it, and says that nothing was destroyed on the host.
func TestHostForceDeleteUnreachableAgent(t *testing.T) {
	e := newHostAPI(t)
	ctx := context.Background()
	adminJWT, _ := e.admin(t, "root@example.com")
	_, _, team := e.account(t, "user@example.com")
	var created createdHostJSON
	// Port 1 on the loopback: nothing listens there.
	if c := e.do(t, "POST", "/v1/hosts", adminJWT, map[string]any{"name": "host-d", "type": "regular", "address": "127.0.0.1:1"}, &created); c != 201 {
		t.Fatalf("create: %d", c)
	}
	_, csr := agentCSR(t)
	if c := e.do(t, "POST", hostapi.PathRegister, "", registration(created.RegistrationToken, csr), nil); c != 201 {
		t.Fatalf("register: %d", c)
	}
	tid, _ := wireid.Parse(wireid.Team, team)
	hid, _ := wireid.Parse(wireid.Host, created.Host.ID)
	var ids []pgtype.UUID
	for _, state := range []string{store.SandboxRunning, store.SandboxPaused} {
		row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: tid, HostID: hid, Template: "minimal",
			State: state, VCPUs: 1, MemoryMB: 256, AllowInternetAccess: true, Metadata: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, row.ID)
	}
	var del hostDeletionJSON
	if c := e.do(t, "DELETE", "/v1/hosts/"+created.Host.ID+"?force=true", adminJWT, nil, &del); c != 200 {
		t.Fatalf("force delete: %d", c)
	}
	if del.SandboxesDestroyed != 0 || del.SandboxesNotDestroyed != 2 || len(del.Sandboxes) != 2 {
		t.Fatalf("deletion = %+v", del)
	}
	for _, id := range ids {
		row, err := e.st.Queries().GetSandboxByID(ctx, id)
		if err != nil || row.State != store.SandboxStopped {
			t.Fatalf("sandbox after the delete: %s, %v", row.State, err)
		}
	}
	if c := e.do(t, "GET", "/v1/hosts/"+created.Host.ID, adminJWT, nil, nil); c != 404 {
		t.Fatalf("get after delete: %d", c)
	}
}
