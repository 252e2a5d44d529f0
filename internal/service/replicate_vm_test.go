package service

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestTemplateReplicationRealAgents: two real agents (hosts "local" = A
// and "b" = B, each with its own data directory and slot pool). A snapshot
// made on A starts a sandbox on B (A draining): the template's files are
// copied over the agent contract, and the sandbox on B has A's file and
// A's memory (a process that ran on A). Concurrent creates on B of one
// template share one copy. A corrupted transfer (a byte flipped in the
// relay) is refused by B, which keeps nothing of it, and the next create
// copies it cleanly. Deleting the template reaches both hosts.
func TestTemplateReplicationRealAgents(t *testing.T) {
	h2 := newTwoHostEnv(t, hosttest.ReplicaPools)
	e, hostA, hostB, idA, idB := h2.env, h2.a, h2.b, h2.idA, h2.idB
	setStatus := func(name, status string) { t.Helper(); h2.setStatus(t, name, status) }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, p := e.signup(t, "replica@example.com")
	// A static agent's vCPU capacity (8) is the vCPUs it declares
	// (max_vcpus, placed as is); total_vcpus stands in for its CPUs (8
	// divided back by the overcommit, 4).
	if h, err := e.st.Queries().GetHostByName(ctx, "b"); err != nil || h.TotalVCPUs != 2 || h.MaxVCPUs != 8 {
		t.Fatalf("host b's vCPUs: total %d, declared %d, %v; want 2 and 8", h.TotalVCPUs, h.MaxVCPUs, err)
	}
	envd := func(sb Sandbox) *envdclient.Client {
		c := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
		t.Cleanup(c.Close)
		return c
	}
	templatesOn := func(a *hosttest.Agent) []string {
		t.Helper()
		ts, err := a.Manager.Templates()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tpl := range ts {
			names = append(names, tpl.Name)
		}
		return names
	}
	// dirsOf lists the template directories of name on a host (a
	// template's files and any leftover of an import).
	dirsOf := func(a *hosttest.Agent, name string) []string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(a.DataDir, "templates", name+"-*"))
		return m
	}
	holders := func(tpl wireid.TemplateID) []pgtype.UUID {
		t.Helper()
		h, err := e.st.Queries().ListTemplateHosts(ctx, pgUUID(tpl))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	top := t
	create := func(t *testing.T, template string) Sandbox {
		t.Helper()
		sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: template, VCPUs: 1, MemoryMB: 256})
		if err != nil {
			t.Fatalf("Create from %s: %v", template, err)
		}
		top.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
		return sb
	}
	hostOf := func(sb Sandbox) pgtype.UUID { return sandboxRow(t, e, pgUUID(sb.ID)).HostID }

	var src Sandbox
	var snap, snap2 Snapshot
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a snapshot on host A, with a file and a running process", func(t *testing.T) {
			setStatus("b", store.HostDraining)
			src = create(t, "minimal")
			if hostOf(src) != idA {
				t.Fatal("the source sandbox is not on host A")
			}
			if _, err := envd(src).Shell(ctx, `printf 'written on A' > /root/mark; (sleep 7777 >/dev/null 2>&1 &)`); err != nil {
				t.Fatal(err)
			}
			var err error
			if snap, _, err = e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: src.ID, Name: "replicated"}); err != nil {
				t.Fatal(err)
			}
			if got := holders(snap.ID); !slices.Equal(got, []pgtype.UUID{idA}) {
				t.Fatalf("holders %v, want A", got)
			}
		}},
		{"a create on host B copies the template and restores A's machine", func(t *testing.T) {
			setStatus(LocalHost, store.HostDraining)
			setStatus("b", store.HostOnline)
			sb := create(t, "replicated")
			if hostOf(sb) != idB {
				t.Fatal("the sandbox is not on host B")
			}
			if got, err := envd(sb).ReadFile(ctx, "/root/mark"); err != nil || string(got) != "written on A" {
				t.Fatalf("A's file on B: %q, %v", got, err)
			}
			// The process started on A runs on B: memory, not a cold boot.
			res, err := envd(sb).Shell(ctx, `cat /proc/[0-9]*/cmdline | tr '\0' ' '`)
			if err != nil || !strings.Contains(string(res.Stdout), "sleep 7777") {
				t.Fatalf("A's process on B: %q, %v", res.Stdout, err)
			}
			if !slices.Contains(templatesOn(hostB), snap.ID.String()) {
				t.Fatalf("B's templates %v lack the copy", templatesOn(hostB))
			}
			if got := holders(snap.ID); !slices.Contains(got, idB) {
				t.Fatalf("holders %v lack B", got)
			}
		}},
		{"concurrent creates on B share one copy", func(t *testing.T) {
			var err error
			if snap2, _, err = e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: src.ID, Name: "shared"}); err != nil {
				t.Fatal(err)
			}
			before := strings.Count(hostB.Logs.String(), `msg="template imported" component=sandbox name=`+snap2.ID.String())
			var wg sync.WaitGroup
			errs := make([]error, 3)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "shared"})
					if err == nil {
						top.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
						if hostOf(sb) != idB {
							err = errors.New("not on B")
						}
					}
					errs[i] = err
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(hostB.Logs.String(), `msg="template imported" component=sandbox name=`+snap2.ID.String()) - before; n != 1 {
				t.Fatalf("%d imports for 3 concurrent creates, want 1", n)
			}
		}},
		{"a corrupted transfer is refused and leaves nothing", func(t *testing.T) {
			setStatus(LocalHost, store.HostOnline)
			setStatus("b", store.HostDraining)
			corrupt, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: src.ID, Name: "corrupted"})
			if err != nil {
				t.Fatal(err)
			}
			setStatus(LocalHost, store.HostDraining)
			setStatus("b", store.HostOnline)
			var flipped bool
			relayHook = func(m *pb.ImportTemplateRequest) {
				if c := m.GetChunk(); c != nil && len(c.GetData()) > 4096 && !flipped {
					c.Data[4096] ^= 0x40 // one bit, in the middle of the data
					flipped = true
				}
			}
			defer func() { relayHook = nil }()
			_, err = e.sbx.Create(ctx, p, CreateSandbox{Template: "corrupted"})
			if !flipped || !errors.Is(err, ErrUnavailable) || connect.CodeOf(err) != connect.CodeDataLoss {
				t.Fatalf("create over a corrupted copy (flipped %v): %v", flipped, err)
			}
			if slices.Contains(templatesOn(hostB), corrupt.ID.String()) || len(dirsOf(hostB, corrupt.ID.String())) != 0 {
				t.Fatalf("B kept something of the corrupted copy: %v %v", templatesOn(hostB), dirsOf(hostB, corrupt.ID.String()))
			}
			if slices.Contains(holders(corrupt.ID), idB) {
				t.Fatal("B recorded as a holder of the corrupted copy")
			}
			// The next attempt, clean, works.
			relayHook = nil
			sb := create(t, "corrupted")
			if got, err := envd(sb).ReadFile(ctx, "/root/mark"); err != nil || string(got) != "written on A" {
				t.Fatalf("after the clean copy: %q, %v", got, err)
			}
		}},
		{"deleting the template reaches both hosts", func(t *testing.T) {
			if err := e.sbx.DeleteSnapshot(ctx, p, "replicated"); err != nil {
				t.Fatal(err)
			}
			for name, a := range map[string]*hosttest.Agent{"A": hostA, "B": hostB} {
				if slices.Contains(templatesOn(a), snap.ID.String()) {
					t.Errorf("host %s still lists the deleted template", name)
				}
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			t.FailNow()
		}
	}
}

// twoHostEnv is an env over two real agents: the static hosts "local" (A,
// on the first pool) and "b" (B).
type twoHostEnv struct {
	*env
	a, b     *hosttest.Agent
	idA, idB pgtype.UUID
}

func newTwoHostEnv(t *testing.T, pools [2]hosttest.Pool) *twoHostEnv {
	t.Helper()
	h := &twoHostEnv{a: hosttest.StartAgent(t, pools[0]), b: hosttest.StartAgent(t, pools[1])}
	h.env = newEnvHosts(t, map[string]string{LocalHost: h.a.URL, "b": h.b.URL})
	for name, id := range map[string]*pgtype.UUID{LocalHost: &h.idA, "b": &h.idB} {
		row, err := h.st.Queries().GetHostByName(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		*id = row.ID
	}
	return h
}

// setStatus sets the status of the host name.
func (h *twoHostEnv) setStatus(t *testing.T, name, status string) {
	t.Helper()
	if _, err := h.st.Pool().Exec(context.Background(), `UPDATE hosts SET status = $1 WHERE name = $2`, status, name); err != nil {
		t.Fatal(err)
	}
}

// newEnvHosts is newEnvAgent with several static agents (name → URL).
func newEnvHosts(t *testing.T, agents map[string]string) *env {
	t.Helper()
	eps := make(map[string]agentclient.Endpoint, len(agents))
	for name, url := range agents {
		eps[name] = agentclient.Endpoint{URL: url, Token: hosttest.AgentToken}
	}
	st, s := testServices(t, eps, nil)
	return &env{st: st, acc: s.Accounts, sbx: s.Sandboxes, hosts: s.Hosts}
}
