package api

import (
	"net/netip"
	"testing"

	"github.com/capsulehq/capsule/internal/service/agenttest"
)

// TestEndToEndRealVM: signup → login → API key → create a sandbox (a real
// VM) → get → list → destroy, over HTTP, with a real agent. Its network
// slot pool (capi, 198.18.86.0/24 + 198.18.87.0/24) is its own.
func TestEndToEndRealVM(t *testing.T) {
	url := agenttest.Start(t, agenttest.Pool{
		Name: "capi", Veth: "capiv",
		HostCIDR: netip.MustParsePrefix("198.18.86.0/24"), LinkCIDR: netip.MustParsePrefix("198.18.87.0/24"),
	})
	e := newAPI(t, url, agenttest.Token)
	jwt, key, _ := e.account(t, "e2e@example.com")
	_, keyB, _ := e.account(t, "intruder@example.com")

	var sb sandboxJSON
	if c := e.do(t, "POST", "/v1/sandboxes", key, map[string]any{
		"template": "minimal", "vcpus": 1, "memory_mb": 256, "timeout_sec": 300, "metadata": map[string]string{"run": "e2e"},
	}, &sb); c != 201 {
		t.Fatalf("create: %d", c)
	}
	t.Cleanup(func() { e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, key, nil, nil) })
	if sb.State != "running" || len(sb.ID) != 32 || sb.EnvdURL == "" || sb.EnvdAccessToken == "" {
		t.Fatalf("created: %+v", sb)
	}
	var got sandboxJSON
	// A session token works as well as the API key.
	if c := e.do(t, "GET", "/v1/sandboxes/"+sb.ID, jwt, nil, &got); c != 200 || got.ID != sb.ID || got.State != "running" || got.EnvdURL != sb.EnvdURL {
		t.Fatalf("get: %d %+v", c, got)
	}
	if c := e.do(t, "GET", "/v1/sandboxes/"+sb.ID, keyB, nil, nil); c != 404 {
		t.Fatalf("get by another team: %d", c)
	}
	if c := e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, keyB, nil, nil); c != 404 {
		t.Fatalf("destroy by another team: %d", c)
	}
	var page struct {
		Sandboxes []sandboxJSON `json:"sandboxes"`
	}
	if c := e.do(t, "GET", "/v1/sandboxes?state=running&metadata=run=e2e", key, nil, &page); c != 200 || len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != sb.ID {
		t.Fatalf("list: %d %+v", c, page)
	}
	if c := e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, key, nil, nil); c != 204 {
		t.Fatalf("destroy: %d", c)
	}
	if c := e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, key, nil, nil); c != 204 {
		t.Fatalf("second destroy: %d", c)
	}
	if c := e.do(t, "GET", "/v1/sandboxes/"+sb.ID, key, nil, &got); c != 200 || got.State != "stopped" {
		t.Fatalf("after destroy: %d %+v", c, got)
	}
	if c := e.do(t, "GET", "/v1/sandboxes?state=running", key, nil, &page); c != 200 || len(page.Sandboxes) != 0 {
		t.Fatalf("running after destroy: %d %+v", c, page)
	}
}
