package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSnapshotMetaBalloon: whether a snapshot's machine had the balloon
// follows from its format alone.
func TestSnapshotMetaBalloon(t *testing.T) {
	tests := []struct {
		name        string
		format      string
		balloonJSON bool
		want        bool
		wantErr     string
	}{
		{name: "format 1 has no balloon", format: snapshotFormat, want: false},
		{name: "format 1 claiming a balloon still has none", format: snapshotFormat, balloonJSON: true, want: false},
		{name: "format 2 has the balloon", format: snapshotFormatBalloon, balloonJSON: true, want: true},
		{name: "format 2 without the field has it too", format: snapshotFormatBalloon, want: true},
		{name: "an unknown format is refused", format: "capsule-qemu-snapshot/9", wantErr: "unsupported format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			b := `{"format":"` + tt.format + `","stateFormat":"devices","state":"state-1","memory":"memory-1"`
			if tt.balloonJSON {
				b += `,"balloon":true`
			}
			if err := os.WriteFile(filepath.Join(dir, snapMetaFile), []byte(b+"}"), 0o600); err != nil {
				t.Fatal(err)
			}
			m, err := readSnapshotMeta(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Balloon != tt.want {
				t.Fatalf("balloon %v, want %v", m.Balloon, tt.want)
			}
		})
	}
}
