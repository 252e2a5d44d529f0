package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// TestEnsureEmbeddedAdoptsTheOldLocalHost: capsule serve's embedded agent
// registers as the regular host "local". A data directory of an older
// serve has a static "local" row (what the test env's static agent makes)
// with sandboxes on it: the row is adopted — same ID, the sandboxes stay
// on it — and registers with the token EnsureEmbedded gives; a restart
// with the credentials needs no token and moves the address; credentials
// of another host are refused.
func TestEnsureEmbeddedAdoptsTheOldLocalHost(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	old, err := e.st.Queries().GetHostByName(ctx, LocalHost)
	if err != nil {
		t.Fatal(err)
	}
	_, p := e.signup(t, "embedded@example.com")
	sb, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{ID: store.NewUUID(), TeamID: pgUUID(p.TeamID), HostID: old.ID,
		Template: "base", State: store.SandboxPaused, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	var hostID string
	t.Run("adopt and register", func(t *testing.T) {
		tok, err := e.hosts.EnsureEmbedded(ctx, LocalHost, "127.0.0.1:7001", "")
		if err != nil || tok == "" {
			t.Fatalf("EnsureEmbedded = %q, %v; want a token", tok, err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		resp, err := e.hosts.Register(ctx, hostapi.RegisterRequest{Token: tok, Arch: "amd64", VCPUs: 2, MemoryMB: 2048,
			Address: "127.0.0.1:7001", Version: "test", CSR: csr})
		if err != nil {
			t.Fatalf("register with the embedded token: %v", err)
		}
		if hostID = resp.HostID; hostID != hostWireID(old.ID) || resp.Address != "127.0.0.1:7001" {
			t.Errorf("registered as %s at %s, want the old row %s at 127.0.0.1:7001", hostID, resp.Address, hostWireID(old.ID))
		}
		if got, _ := e.st.Queries().GetSandboxByID(ctx, sb.ID); got.HostID != old.ID {
			t.Errorf("the old sandbox moved to host %v", got.HostID)
		}
	})
	t.Run("restart with credentials: no token, new address", func(t *testing.T) {
		tok, err := e.hosts.EnsureEmbedded(ctx, LocalHost, "127.0.0.1:7002", hostID)
		if err != nil || tok != "" {
			t.Fatalf("EnsureEmbedded = %q, %v; want no token", tok, err)
		}
		if h, _ := e.st.Queries().GetHost(ctx, old.ID); h.Address != "127.0.0.1:7002" || !h.RegisteredAt.Valid {
			t.Errorf("host = %s registered %v, want 127.0.0.1:7002, still registered", h.Address, h.RegisteredAt.Valid)
		}
	})
	t.Run("credentials of another host", func(t *testing.T) {
		if _, err := e.hosts.EnsureEmbedded(ctx, LocalHost, "127.0.0.1:7003", hostWireID(store.NewUUID())); !errors.Is(err, ErrConflict) {
			t.Errorf("EnsureEmbedded with another host's credentials = %v, want ErrConflict", err)
		}
	})
	t.Run("a fresh database: the record is created", func(t *testing.T) {
		tok, err := e.hosts.EnsureEmbedded(ctx, "local-2", "127.0.0.1:7004", "")
		if err != nil || tok == "" {
			t.Fatalf("EnsureEmbedded = %q, %v", tok, err)
		}
		h, err := e.st.Queries().GetHostByName(ctx, "local-2")
		if err != nil || h.Status != store.HostPending || h.TeamID != store.PlatformTeamID {
			t.Errorf("created host = %+v, %v; want a pending platform host", h, err)
		}
	})
}
