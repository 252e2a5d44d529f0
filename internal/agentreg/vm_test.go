package agentreg_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/agentproxy"
	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// TestRealHost runs the client over a real sandbox manager (QEMU under
// TCG): the agent served over mTLS with the issued certificate, an outage
// of the control plane for three beats pausing the running sandbox (kept
// with its memory and files, resumable), then the host's deletion
// destroying it.
func TestRealHost(t *testing.T) {
	ha := hosttest.StartAgent(t, hosttest.AgentRegPool)
	mgr := ha.Manager
	ctx := context.Background()
	e := newEnv(t)
	cfg := e.config()
	// Three CPUs, fewer than the manager's vCPU capacity (overcommitted
	// already): the heartbeat reports the CPUs.
	cfg.Host = agentreg.ManagerHost{Manager: mgr, DataDir: ha.DataDir, CPUs: 3}
	c, err := agentreg.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureRegistered(ctx, "reg-token-1"); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(ha.Logs, nil))
	h, err := agent.New(agent.Config{Manager: mgr, ClientCertAuth: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := agent.NewServer("", h, log)
	srv.TLSConfig = c.TLSConfig()
	srv.ErrorLog = newDiscardLogger()
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	agentURL := "https://" + ln.Addr().String()
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.cert)
	cpCert := e.ca.controlPlaneCert(t)
	cpHTTP := &http.Client{Timeout: time.Minute, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cpCert}, Time: e.clock.Now}}}
	t.Cleanup(cpHTTP.CloseIdleConnections)
	rpc := hostagentv1connect.NewHostAgentClient(cpHTTP, agentURL)

	var id string
	lastBeat := func() hostapi.Heartbeat {
		var hb hostapi.Heartbeat
		e.cp.get(func(f *fakeCP) { hb = f.beats[len(f.beats)-1] })
		return hb
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"the control plane calls the agent over mTLS", func(t *testing.T) {
			res, err := rpc.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{Template: "minimal", AccessToken: "tok-agentreg"}))
			if err != nil {
				t.Fatal(err)
			}
			id = res.Msg.GetSandbox().GetId()
			cl, err := mgr.Client(id)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.WriteFile(ctx, "/tmp/kept.txt", strings.NewReader("kept across the outage")); err != nil {
				t.Fatal(err)
			}
		}},
		{"traffic goes through the same mTLS", func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, agentURL+"/health", nil)
			req.Header.Set(agentproxy.SandboxHeader, id)
			req.Header.Set(agentproxy.PortHeader, "49983")
			resp, err := cpHTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				t.Fatalf("envd's /health through the agent: %d", resp.StatusCode)
			}
		}},
		{"without TLS every request is refused", func(t *testing.T) {
			plain := httptest.NewServer(h) // the same agent on a cleartext listener
			defer plain.Close()
			_, err := hostagentv1connect.NewHostAgentClient(plain.Client(), plain.URL).
				GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("an RPC without a client certificate: %v", err)
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, plain.URL+"/health", nil)
			req.Header.Set(agentproxy.SandboxHeader, id)
			req.Header.Set(agentproxy.PortHeader, "49983")
			resp, err := plain.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("traffic without a client certificate: %d", resp.StatusCode)
			}
		}},
		{"a heartbeat reports the running sandbox", func(t *testing.T) {
			beat(t, c, nil)
			if hb := lastBeat(); hb.Running != 1 || hb.Sandboxes != 1 || hb.Used.MemoryMB <= 0 || hb.Total.MemoryMB != 2048 {
				t.Fatalf("heartbeat %+v", hb)
			}
			// The total vCPUs are the machine's CPUs, to which the
			// scheduler applies its overcommit, not the manager's
			// capacity (which would be multiplied twice).
			if hb, vc := lastBeat(), mgr.Usage().Capacity.VCPUs; hb.Total.VCPUs != 3 || vc == 3 {
				t.Fatalf("heartbeat total vCPUs %d (manager capacity %d), want the 3 CPUs", hb.Total.VCPUs, vc)
			}
		}},
		{"three unreachable beats pause it, memory and files kept", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.down = true })
			for i := range 3 {
				beat(t, c, agentreg.ErrUnreachable)
				if in, _ := mgr.Get(id); i < 2 && in.State != sandbox.StateRunning {
					t.Fatalf("after %d missed beats the sandbox is %s", i+1, in.State)
				}
			}
			in, err := mgr.Get(id)
			if err != nil || in.State != sandbox.StatePaused {
				t.Fatalf("after 3 missed beats: %+v %v", in, err)
			}
			entries, _ := os.ReadDir(filepath.Join(ha.DataDir, "sandboxes", id))
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if len(names) < 3 {
				t.Fatalf("the paused sandbox's directory holds %v", names)
			}
			beat(t, c, agentreg.ErrUnreachable) // paused once: nothing more to do
		}},
		{"the control plane back, the beat reports it paused", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.down = false })
			beat(t, c, nil)
			if hb := lastBeat(); hb.Running != 0 || hb.Paused != 1 || hb.Sandboxes != 1 {
				t.Fatalf("heartbeat %+v", hb)
			}
		}},
		{"it resumes with its files", func(t *testing.T) {
			if _, err := rpc.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id})); err != nil {
				t.Fatal(err)
			}
			cl, err := mgr.Client(id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cl.ReadFile(ctx, "/tmp/kept.txt")
			if err != nil || string(got) != "kept across the outage" {
				t.Fatalf("file after resume: %q %v", got, err)
			}
		}},
		{"the host deleted, its sandboxes are destroyed", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.deleted = true })
			if _, err := c.Beat(ctx); !errors.Is(err, agentreg.ErrHostDeleted) {
				t.Fatalf("beat: %v, want ErrHostDeleted", err)
			}
			if n := len(mgr.List()); n != 0 {
				t.Fatalf("%d sandboxes left", n)
			}
			if _, err := os.Stat(filepath.Join(ha.DataDir, "sandboxes", id)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the sandbox's directory: %v", err)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}
