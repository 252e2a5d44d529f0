package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/controlplane"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestRegisteredAgentEndToEnd runs the two sides of host registration
// together: a real control plane (controlplane.New over PostgreSQL, its
// API on a loopback listener) and a real `capsule agent --control-plane`
// process with its own data directory and network pool
// (hosttest.HostsIntPool). An administrator creates a host; the agent
// registers with the token and comes online with its first heartbeat; the
// control plane calls it over mutual TLS (and creates a sandbox there); the
// token is not reusable; the agent restarts on its stored credentials with
// its sandbox; a forced delete makes its next heartbeat a 404, whereupon it
// destroys the sandbox and its credentials and exits with exitHostDeleted.
func TestRegisteredAgentEndToEnd(t *testing.T) {
	bin := serveBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	hasher, err := auth.NewPasswordHasher(auth.Argon2Params{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	sbxLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(ctx, controlplane.Config{
		DSN: pgtest.StartForTest(t), Secret: []byte("0123456789abcdef0123456789abcdef-hostsint"), Hasher: hasher,
		Signup: service.SignupOpen,
		// The embedded host of `capsule serve` is not part of this test: a
		// closed port (the control plane is not started, nothing calls it).
		Agents: map[string]agentclient.Endpoint{service.LocalHost: {URL: "http://127.0.0.1:1", Token: "unused-local-agent"}},
		OAuth:  controlplane.OAuthConfig{PublicURL: "http://localhost"}, Domain: "localhost", SandboxAddr: sbxLn.Addr(),
		SingleReplica: true,
	})
	if err != nil {
		sbxLn.Close()
		t.Fatal(err)
	}
	api := httptest.NewServer(cp.APIHandler())
	t.Cleanup(func() {
		api.Close()
		sbxLn.Close()
		cp.Close()
	})

	acct, err := cp.Accounts.Signup(ctx, service.Signup{Email: "root@example.com", Password: "correct horse battery", Name: "Root"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Store.Queries().SetUserAdmin(ctx, db.SetUserAdminParams{ID: acct.User.ID, IsAdmin: true}); err != nil {
		t.Fatal(err)
	}
	admin := acct.Principal()
	admin.ActorName = "root@example.com"
	addr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	created, err := cp.Hosts.Create(ctx, admin, service.CreateHost{Name: "host-e2e", Type: service.HostRegular, Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	hid := wireid.FromUUID[wireid.KindHost](created.ID.Bytes, created.ID.Valid)
	hostID := hid.String()

	dirs := newServeDirs(t)
	dirs.pool = hosttest.HostsIntPool
	top := t // the agent outlives the step that starts it
	startAgent := func(t *testing.T, args ...string) *serveProc {
		t.Helper()
		p := &serveProc{t: t, log: &bytes.Buffer{}, done: make(chan struct{})}
		p.cmd = exec.Command(bin, append([]string{"agent", "--control-plane", api.URL, "--address", addr,
			"--data-dir", dirs.data, "--run-dir", dirs.run, "--base=false", "--warm-images=false",
			"--net-name", dirs.pool.Name, "--net-host-cidr", dirs.pool.HostCIDR.String(),
			"--net-link-cidr", dirs.pool.LinkCIDR.String(), "--net-max-slots", "8",
			"--max-vcpus", "8", "--max-memory-mb", "2048"}, args...)...)
		p.cmd.Env = append(os.Environ(), "CAPSULE_CONFIG=/dev/null")
		p.cmd.Stdout, p.cmd.Stderr = syncWriter(p.log), syncWriter(p.log)
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.err = p.cmd.Wait(); close(p.done) }()
		top.Cleanup(p.stop)
		return p
	}
	hostRow := func(t *testing.T) db.Host {
		t.Helper()
		h, err := cp.Hosts.Get(ctx, admin, hid)
		if err != nil {
			t.Fatal(err)
		}
		return h.Host
	}
	// waitFor polls cond until it holds, failing if the agent exits.
	waitFor := func(t *testing.T, p *serveProc, what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Minute) // the first start builds the minimal image
		for !cond() {
			select {
			case <-p.done:
				t.Fatalf("the agent exited (%v) before %s:\n%s", p.err, what, p.logText())
			case <-time.After(200 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s:\n%s", what, p.logText())
			}
		}
	}
	hostInfo := func(t *testing.T) (*pb.GetHostInfoResponse, error) {
		t.Helper()
		c, err := cp.Agents.Get(ctx, hostID)
		if err != nil {
			return nil, err
		}
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		res, err := c.GetHostInfo(cctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	}

	// sandboxes lists the agent's sandboxes over mTLS.
	sandboxes := func(t *testing.T) []string {
		t.Helper()
		c, err := cp.Agents.Get(ctx, hostID)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, sb := range res.Msg.GetSandboxes() {
			ids = append(ids, sb.GetId())
		}
		return ids
	}

	var agent *serveProc
	var registeredAt time.Time
	var sandboxID string
	if !testenv.Step(&t, "register and come online", func(t *testing.T) {
		agent = startAgent(t, "--register", created.RegistrationToken)
		waitFor(t, agent, "host online", func() bool { return hostRow(t).Status == "online" })
		row := hostRow(t)
		if row.Address != addr || !row.RegistrationTokenUsedAt.Valid || !row.RegisteredAt.Valid || row.CertSerial == "" {
			t.Fatalf("host after registration: address %q, token used %v, registered %v, cert %q", row.Address,
				row.RegistrationTokenUsedAt.Valid, row.RegisteredAt.Valid, row.CertSerial)
		}
		registeredAt = row.RegisteredAt.Time
		if fi, err := os.Stat(filepath.Join(dirs.data, "agent")); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("the agent's credentials directory: %v, %v", fi, err)
		}
	}) {
		return
	}
	if !testenv.Step(&t, "the control plane reaches the agent over mutual TLS", func(t *testing.T) {
		var info *pb.GetHostInfoResponse
		waitFor(t, agent, "GetHostInfo over mTLS", func() bool {
			var err error
			info, err = hostInfo(t)
			return err == nil
		})
		if info.AgentVersion == "" || info.Vmm != "qemu" {
			t.Fatalf("GetHostInfo = %v", info)
		}
		// A sandbox on the host, created over the same mTLS: the agent
		// keeps it across its restart and destroys it when the host is
		// deleted.
		c, err := cp.Agents.Get(ctx, hostID)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{Template: "minimal", AccessToken: "tok-hostsint"}))
		if err != nil {
			t.Fatalf("create a sandbox over mTLS: %v\n%s", err, agent.logText())
		}
		sandboxID = res.Msg.GetSandbox().GetId()
		// Without the control plane's client certificate, and whatever the
		// bearer token, the agent refuses.
		c, err = agentclient.New(agentclient.Endpoint{URL: "https://" + addr, Token: "0123456789abcdef-any-token",
			TLS: &tls.Config{RootCAs: cp.Hosts.CA().Pool()}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})); err == nil {
			t.Fatal("the agent answered a client without the control plane's certificate")
		}
	}) {
		return
	}
	if !testenv.Step(&t, "the registration token cannot be reused", func(t *testing.T) {
		body := fmt.Sprintf(`{"token":%q,"arch":"amd64","vcpus":1,"memory_mb":512,"disk_mb":0,"csr":"x"}`, created.RegistrationToken)
		resp, err := http.Post(api.URL+hostapi.PathRegister, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusConflict {
			t.Fatalf("a second registration with the token: %d, want 409", resp.StatusCode)
		}
	}) {
		return
	}
	if !testenv.Step(&t, "a restarted agent keeps its credentials", func(t *testing.T) {
		agent.stop()
		if code := agent.cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("the agent stopped by SIGTERM exited %d:\n%s", code, agent.logText())
		}
		before := hostRow(t).LastHeartbeatAt.Time
		agent = startAgent(t) // no --register
		waitFor(t, agent, "a heartbeat of the restarted agent", func() bool { return hostRow(t).LastHeartbeatAt.Time.After(before) })
		cp.Agents.Evict(hostID) // a fresh connection to the new process
		waitFor(t, agent, "GetHostInfo of the restarted agent", func() bool { _, err := hostInfo(t); return err == nil })
		if row := hostRow(t); !row.RegisteredAt.Time.Equal(registeredAt) || row.Status != "online" {
			t.Fatalf("after the restart: registered at %v (was %v), status %s", row.RegisteredAt.Time, registeredAt, row.Status)
		}
		if ids := sandboxes(t); len(ids) != 1 || ids[0] != sandboxID {
			t.Fatalf("the restarted agent's sandboxes: %v, want [%s]", ids, sandboxID)
		}
	}) {
		return
	}
	testenv.Step(&t, "a force-deleted host's agent exits", func(t *testing.T) {
		if _, err := cp.Hosts.Delete(ctx, admin, hid, true); err != nil {
			t.Fatal(err)
		}
		// Its next heartbeat (within hostapi.HeartbeatInterval) is a 404.
		wctx, wcancel := context.WithTimeout(ctx, 2*hostapi.HeartbeatInterval+30*time.Second)
		defer wcancel()
		if code := agent.wait(wctx); code != exitHostDeleted {
			t.Fatalf("the agent of a deleted host exited %d, want %d:\n%s", code, exitHostDeleted, agent.logText())
		}
		if _, err := cp.Hosts.Get(ctx, admin, hid); !errors.Is(err, service.ErrNotFound) {
			t.Fatalf("the deleted host: %v", err)
		}
		// It destroyed its sandbox before it exited, and its credentials.
		if out := hosttest.SandboxVMMs(sandboxID); len(out) > 0 {
			t.Fatalf("the sandbox's VMM outlived the agent: %s", out)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), dirs.pool.Name+"-") {
			t.Fatalf("network namespaces left: %s", out)
		}
		if _, err := os.Stat(filepath.Join(dirs.data, "agent", "credentials.json")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the deleted host's credentials: %v", err)
		}
	})
}
