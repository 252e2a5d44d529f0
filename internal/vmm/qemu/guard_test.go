package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/testenv"
)

// TestStartGuarded punches a hole into a file from a process started with
// and without the guard: only the unguarded one may.
func TestStartGuarded(t *testing.T) {
	testenv.RequireCommand(t, "fallocate")
	tests := []struct {
		name    string
		start   func(*exec.Cmd) error
		wantErr string
	}{
		{"unguarded", (*exec.Cmd).Start, ""},
		{"guarded", startGuarded, "unsupported"},
		{"guarded again (one thread serves every start)", startGuarded, "unsupported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(f, make([]byte, 1<<16), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("fallocate", "--punch-hole", "--offset", "0", "--length", "4096", f)
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := tt.start(cmd); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("fallocate: %v: %s", err, out.String())
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(out.String(), tt.wantErr)) {
				t.Fatalf("fallocate: %v: %q, want a failure with %q", err, out.String(), tt.wantErr)
			}
		})
	}
}
