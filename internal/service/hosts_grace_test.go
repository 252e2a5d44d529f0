package service

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// graceEnv is the services over a fresh database and a platform
// administrator who creates hosts.
type graceEnv struct {
	st    *store.Store
	hosts *Hosts
	admin Principal
	n     int
}

func newGraceEnv(t *testing.T) *graceEnv {
	t.Helper()
	ctx := context.Background()
	st, s := testServices(t, nil, nil)
	a, err := s.Accounts.Signup(ctx, Signup{Email: "root@example.com", Password: "correct horse battery", Name: "Root"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Queries().SetUserAdmin(ctx, db.SetUserAdminParams{ID: a.User.ID, IsAdmin: true}); err != nil {
		t.Fatal(err)
	}
	return &graceEnv{st: st, hosts: s.Hosts, admin: a.Principal()}
}

// register creates a regular host and registers it: its first credentials.
func (e *graceEnv) register(t *testing.T) hostapi.RegisterResponse {
	t.Helper()
	ctx := context.Background()
	e.n++
	nh, err := e.hosts.Create(ctx, e.admin, CreateHost{Name: fmt.Sprintf("host-%d", e.n), Type: HostRegular,
		Address: fmt.Sprintf("192.0.2.%d:7443", e.n)})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := e.hosts.Register(ctx, hostapi.RegisterRequest{Token: nh.RegistrationToken, Arch: "amd64", VCPUs: 2, MemoryMB: 1024,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func (e *graceEnv) refresh(t *testing.T, token string) hostapi.Credentials {
	t.Helper()
	c, err := e.hosts.Refresh(context.Background(), token)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	return c
}

func (e *graceEnv) refused(t *testing.T, what, token string) {
	t.Helper()
	if c, err := e.hosts.Refresh(context.Background(), token); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("refresh with %s = %+v, %v; want ErrUnauthorized", what, c, err)
	}
}

func (e *graceEnv) beat(t *testing.T, access string) {
	t.Helper()
	if _, err := e.hosts.Heartbeat(context.Background(), access, hostapi.Heartbeat{}); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
}

func (e *graceEnv) audits(t *testing.T, hostID, action string) int {
	t.Helper()
	var n int
	if err := e.st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM audit_logs WHERE resource_id = $1 AND action = $2",
		hostID, action).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestHostRefreshGrace: a rotated refresh token is accepted once more
// while nothing of its successor's credentials was used (an agent that
// died between the control plane's answer and its own write), and is a
// reuse that revokes the family otherwise.
func TestHostRefreshGrace(t *testing.T) {
	e := newGraceEnv(t)
	t.Run("crash between answer and write: the replay is accepted once", func(t *testing.T) {
		reg := e.register(t)
		e.refresh(t, reg.RefreshToken) // the answer the agent never stored
		// The agent comes back with what it stored: its old access token
		// still beats (that uses nothing of the lost credentials)…
		e.beat(t, reg.AccessToken)
		// …and its old refresh token is accepted once more.
		c2 := e.refresh(t, reg.RefreshToken)
		e.beat(t, c2.AccessToken)
		c3 := e.refresh(t, c2.RefreshToken)
		if e.audits(t, reg.HostID, "host.refresh_token_replayed") != 1 {
			t.Fatal("the replay is not audited")
		}
		// A second replay is a reuse: the family dies, c3 with it (and
		// presenting c3 is a reuse as well: two audited reuses).
		e.refused(t, "a token replayed twice", reg.RefreshToken)
		e.refused(t, "the newest token after a reuse", c3.RefreshToken)
		if n := e.audits(t, reg.HostID, "host.refresh_token_reused"); n != 2 {
			t.Fatalf("%d reuses audited, want 2", n)
		}
	})
	t.Run("replay after a heartbeat with the new access token revokes the family", func(t *testing.T) {
		reg := e.register(t)
		c1 := e.refresh(t, reg.RefreshToken)
		e.beat(t, c1.AccessToken)
		e.refused(t, "the rotated token after its successor was used", reg.RefreshToken)
		e.refused(t, "the successor after the reuse", c1.RefreshToken)
	})
	t.Run("replay after a refresh with the new refresh token revokes the family", func(t *testing.T) {
		reg := e.register(t)
		c1 := e.refresh(t, reg.RefreshToken)
		c2 := e.refresh(t, c1.RefreshToken)
		e.refused(t, "the rotated token after its successor was refreshed", reg.RefreshToken)
		e.refused(t, "the newest token after the reuse", c2.RefreshToken)
	})
	t.Run("the successor a replay replaced is a reuse", func(t *testing.T) {
		reg := e.register(t)
		lost := e.refresh(t, reg.RefreshToken)
		c2 := e.refresh(t, reg.RefreshToken)
		// Whoever holds the answer the agent lost (it leaked) cannot use it,
		// and presenting it revokes the family.
		e.refused(t, "the replaced successor", lost.RefreshToken)
		e.refused(t, "the replay's token after the reuse", c2.RefreshToken)
	})
	t.Run("concurrent replays: at most one succeeds", func(t *testing.T) {
		reg := e.register(t)
		e.refresh(t, reg.RefreshToken)
		const racers = 6
		errs := make([]error, racers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			wg.Go(func() {
				<-start
				_, errs[i] = e.hosts.Refresh(context.Background(), reg.RefreshToken)
			})
		}
		close(start)
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrUnauthorized):
				t.Fatalf("a replay failed otherwise: %v", err)
			}
		}
		if ok > 1 {
			t.Fatalf("%d concurrent replays succeeded, want at most one", ok)
		}
		if n := e.audits(t, reg.HostID, "host.refresh_token_replayed"); n != ok {
			t.Fatalf("%d replays audited, %d succeeded", n, ok)
		}
	})
}
