package api

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// TestDiskHeadroomRefusesCreateRealVM performs issue 9.6's full data disk
// against a real agent: its headroom is larger than the free space of its
// data directory's filesystem, so a create is refused with 507 and the
// {code, message} shape, and nothing is left on the host (no sandbox
// directory) or counted against the team (no running sandbox). Its
// network slot pool (cdh, 198.18.172.0/24 + 198.18.173.0/24) is its own.
func TestDiskHeadroomRefusesCreateRealVM(t *testing.T) {
	dataDir := t.TempDir()
	url := hosttest.StartAgent(t, hosttest.APIDiskPool, func(c *sandbox.Config) { c.DataDir, c.DiskHeadroomMB = dataDir, 1<<40 }).URL
	e := newAPI(t, url, hosttest.AgentToken)
	_, key, _ := e.account(t, "disk@example.com")

	for _, tc := range []struct {
		name string
		body map[string]any
	}{
		{"image template", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}},
		{"again: nothing was reserved by the first", map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body errorBody
			if c := e.do(t, "POST", "/v1/sandboxes", key, tc.body, &body); c != 507 || body.Code != 507 ||
				!strings.Contains(body.Message, "disk space") {
				t.Fatalf("create on a full host: %d %+v, want 507 naming the disk", c, body)
			}
			entries, err := os.ReadDir(filepath.Join(dataDir, "sandboxes"))
			if err != nil || len(entries) != 0 {
				t.Fatalf("sandbox directories left on the host: %v, %v", entries, err)
			}
			var page struct {
				Sandboxes []sandboxJSON `json:"sandboxes"`
			}
			if c := e.do(t, "GET", "/v1/sandboxes?state=running", key, nil, &page); c != 200 || len(page.Sandboxes) != 0 {
				t.Fatalf("running sandboxes after refused creates: %d %+v", c, page)
			}
		})
	}
}
