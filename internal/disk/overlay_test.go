package disk

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/capsulehq/capsule/internal/testenv"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

func requireQemuImg(t *testing.T) {
	t.Helper()
	testenv.RequireCommand(t, "qemu-img")
}

// sparseFile makes a sparse file of size bytes with data written at each
// offset of writes.
func sparseFile(t *testing.T, path string, size int64, writes map[int64][]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, data := range writes {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// dirNames lists a directory's entries (to catch leftover temporary files).
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestCreateOverlayIsConstantCost: an overlay on a 2 GiB base is a few
// hundred KiB of metadata, whatever the base's size.
func TestCreateOverlayIsConstantCost(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	sparseFile(t, base, 2*gib, nil)
	tests := []struct {
		name     string
		size     int64
		wantSize int64
	}{
		{"base size", 0, 2 * gib},
		{"larger", 4 * gib, 4 * gib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ov := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".qcow2")
			if err := CreateOverlay(ctx, base, ov, tt.size); err != nil {
				t.Fatal(err)
			}
			info, err := Inspect(ctx, ov)
			if err != nil {
				t.Fatal(err)
			}
			if info.Format != "qcow2" || info.VirtualSize != tt.wantSize || info.BackingFile != base || info.BackingFmt != "raw" {
				t.Fatalf("overlay: %+v", info)
			}
			if a := allocated(t, ov); a > mib {
				t.Fatalf("overlay allocates %d bytes", a)
			}
			t.Logf("overlay on a 2 GiB base: %d KiB allocated", allocated(t, ov)/kib)
		})
	}
	if a := allocated(t, base); a != 0 {
		t.Errorf("base got %d bytes allocated", a)
	}
}

func TestCreateOverlayFailuresLeaveNothing(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	sparseFile(t, base, 64*mib, nil)
	existing := filepath.Join(dir, "existing.qcow2")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		base, path string
		size       int64
		is         error // errors.Is target, or nil
		msg        string
	}{
		{"missing base", filepath.Join(dir, "nope.raw"), filepath.Join(dir, "a.qcow2"), 0, fs.ErrNotExist, ""},
		{"base is a directory", dir, filepath.Join(dir, "b.qcow2"), 0, nil, "not a regular file"},
		{"overlay exists", base, existing, 0, fs.ErrExist, ""},
		{"smaller than base", base, filepath.Join(dir, "c.qcow2"), mib, nil, "smaller than the base"},
		{"missing directory", base, filepath.Join(dir, "no", "d.qcow2"), 0, fs.ErrNotExist, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CreateOverlay(ctx, tt.base, tt.path, tt.size)
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want errors.Is %v", err, tt.is)
			}
			if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want %q", err, tt.msg)
			}
		})
	}
	if got := dirNames(t, dir); strings.Join(got, " ") != "base.raw existing.qcow2" {
		t.Errorf("directory holds %v after failures", got)
	}
	if data, _ := os.ReadFile(existing); string(data) != "keep me" {
		t.Error("existing file overwritten")
	}
	// A cancelled context fails and rolls back too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := CreateOverlay(cctx, base, filepath.Join(dir, "e.qcow2"), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if got := dirNames(t, dir); len(got) != 2 {
		t.Errorf("directory holds %v after a cancelled create", got)
	}
}

// TestFlattenRoundTrip writes into an overlay with qemu-io and checks
// that the flattened raw image holds base and overlay data, and is sparse.
func TestFlattenRoundTrip(t *testing.T) {
	requireQemuImg(t)
	qemuIO := testenv.RequireCommand(t, "qemu-io")
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	baseData := bytes.Repeat([]byte{0x11}, 4*kib)
	sparseFile(t, base, 64*mib, map[int64][]byte{0: baseData, 32 * mib: baseData})
	ov := filepath.Join(dir, "sandbox.qcow2")
	if err := CreateOverlay(ctx, base, ov, 0); err != nil {
		t.Fatal(err)
	}
	// The guest's writes: new data at 1 MiB, and over the base's data at
	// 32 MiB.
	for _, cmd := range []string{"write -P 0xab 1M 64k", "write -P 0xcd 32M 4k"} {
		if out, err := exec.Command(qemuIO, "-f", "qcow2", "-c", cmd, ov).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io %s: %v\n%s", cmd, err, out)
		}
	}
	flat := filepath.Join(dir, "template.raw")
	if err := Flatten(ctx, ov, flat); err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(ctx, flat)
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "raw" || info.VirtualSize != 64*mib || info.BackingFile != "" {
		t.Fatalf("flattened: %+v", info)
	}
	got, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 64*mib)
	copy(want, baseData)
	copy(want[1*mib:], bytes.Repeat([]byte{0xab}, 64*kib))
	copy(want[32*mib:], bytes.Repeat([]byte{0xcd}, 4*kib))
	if !bytes.Equal(got, want) {
		t.Fatal("flattened image differs from base + overlay writes")
	}
	if a := allocated(t, flat); a > 2*mib {
		t.Errorf("flattened image allocates %d bytes: not sparse", a)
	}
	// The base is untouched.
	if b, _ := os.ReadFile(base); !bytes.Equal(b[32*mib:32*mib+4*kib], baseData) {
		t.Error("base modified")
	}

	// Flatten never overwrites, and failures leave no temporary file.
	if err := Flatten(ctx, ov, flat); !errors.Is(err, fs.ErrExist) {
		t.Errorf("flatten onto an existing file: %v", err)
	}
	if err := Flatten(ctx, filepath.Join(dir, "missing.qcow2"), filepath.Join(dir, "x.raw")); err == nil {
		t.Error("flatten of a missing image succeeded")
	}
	if err := Flatten(ctx, ov, filepath.Join(dir, "no", "x.raw")); err == nil {
		t.Error("flatten into a missing directory succeeded")
	}
	if got := dirNames(t, dir); strings.Join(got, " ") != "base.raw sandbox.qcow2 template.raw" {
		t.Errorf("directory holds %v", got)
	}

	// Remove is idempotent.
	for range 2 {
		if err := Remove(ov); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(ov); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("overlay still there: %v", err)
	}
}

// TestCreateOverlayOnOverlay: a snapshot template's disk is an overlay, and
// sandboxes created from it chain another overlay onto it.
func TestCreateOverlayOnOverlay(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	sparseFile(t, base, 64*mib, nil)
	mid := filepath.Join(dir, "mid.qcow2")
	if err := CreateOverlay(ctx, base, mid, 128*mib); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := CreateOverlay(ctx, mid, top, 0); err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFile != mid || info.BackingFmt != "qcow2" || info.VirtualSize != 128*mib {
		t.Fatalf("overlay on an overlay: %+v", info)
	}
	if err := CreateOverlay(ctx, mid, filepath.Join(dir, "small.qcow2"), 64*mib); err == nil {
		t.Fatal("an overlay smaller than its qcow2 base was created")
	}
}
