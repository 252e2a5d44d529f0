package wire

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedIsCurrent regenerates the wire layer from the OpenAPI
// document with the pinned oapi-codegen (go.mod's tool) and fails when the
// committed wire.gen.go differs: a route or schema changed without
// `make generate`.
func TestGeneratedIsCurrent(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "wire.gen.go")
	// The same configuration, writing elsewhere.
	cfg, err := os.ReadFile("oapi-codegen.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("\noutput: wire.gen.go\n"), []byte("\noutput: "+out+"\n"), 1)
	if !bytes.Contains(cfg, []byte(out)) {
		t.Fatal("oapi-codegen.yaml has no line output: wire.gen.go")
	}
	if err := os.WriteFile(filepath.Join(dir, "cfg.yaml"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := filepath.Abs(filepath.Join("..", "..", "..", "..", "..", "internal", "api", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "tool", "oapi-codegen", "-config", filepath.Join(dir, "cfg.yaml"), spec)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("oapi-codegen: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("wire.gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("wire.gen.go is not what oapi-codegen makes of internal/api/openapi.yaml: run make generate")
	}
}
