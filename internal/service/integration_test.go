package service

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/store"
)

// TestSandboxLifecycleRealAgent drives real VMs through a real agent:
// the built-in templates learnt from the agent (GetHostInfo), create (persisted running, envd reachable with the derived access
// token), get, pause, resume, destroy (twice: idempotent), and a destroy
// the agent no longer knows.
func TestSandboxLifecycleRealAgent(t *testing.T) {
	e, c := newEnvHost(t, hosttest.ServicePool)
	ctx := context.Background()
	_, p := e.signup(t, "vm@example.com")
	_, other := e.signup(t, "other@example.com")

	// Nothing seeded: the service asks the agent which templates are
	// built in.
	if names, err := e.sbx.BuiltinTemplates(ctx); err != nil || !slices.Equal(names, image.Templates()) {
		t.Fatalf("BuiltinTemplates = %v, %v; want the agent's %v", names, err, image.Templates())
	}

	sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256, TimeoutSec: 600,
		Metadata: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
	if sb.State != store.SandboxRunning || sb.EnvdURL == "" || sb.EndAt.IsZero() || sb.EnvdAccessToken == "" {
		t.Fatalf("created: %+v", sb)
	}
	// envd answers, and wants the access token the service derived.
	req, _ := http.NewRequestWithContext(ctx, "GET", sb.EnvdURL+"/files?path=/etc/hostname", nil)
	req.Header.Set("X-Access-Token", sb.EnvdAccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("envd with the token: %d", resp.StatusCode)
	}
	if _, err := e.sbx.Get(ctx, other, sb.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another team's Get: %v", err)
	}
	got, err := e.sbx.Get(ctx, p, sb.ID)
	if err != nil || got.EnvdURL != sb.EnvdURL {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	paused, err := e.sbx.Pause(ctx, p, sb.ID)
	if err != nil || paused.State != store.SandboxPaused {
		t.Fatalf("Pause = %+v, %v", paused.State, err)
	}
	if _, err := e.sbx.Pause(ctx, p, sb.ID); !errors.Is(err, ErrConflict) {
		t.Fatalf("second Pause: %v", err)
	}
	resumed, err := e.sbx.Resume(ctx, p, sb.ID)
	if err != nil || resumed.State != store.SandboxRunning || resumed.EnvdURL == "" {
		t.Fatalf("Resume = %+v, %v", resumed, err)
	}
	for range 2 {
		if err := e.sbx.Destroy(ctx, p, sb.ID); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
	}
	row, err := e.sbx.Get(ctx, p, sb.ID)
	if err != nil || row.State != store.SandboxStopped {
		t.Fatalf("after destroy: %+v, %v", row.State, err)
	}

	// A sandbox the agent lost: destroying it still succeeds.
	sb2, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: sb2.ID.String()})); err != nil {
		t.Fatal(err)
	}
	if err := e.sbx.Destroy(ctx, p, sb2.ID); err != nil {
		t.Fatalf("Destroy of a sandbox the agent lost: %v", err)
	}

	// An agent refusal (too little memory for the agent) is persisted as
	// error and frees the quota.
	if _, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", MemoryMB: 32}); err == nil {
		t.Fatal("Create with 32 MiB succeeded")
	}
	items, _, err := e.sbx.List(ctx, p, ListFilter{States: []string{store.SandboxError}})
	if err != nil || len(items) != 1 || items[0].MemoryMB != 32 {
		t.Fatalf("error sandboxes: %+v, %v", items, err)
	}
}
