package disk

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestBackingChain(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	sparseFile(t, base, 8*mib, map[int64][]byte{0: []byte("base")})
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "sub", "top.qcow2")
	if err := os.Mkdir(filepath.Dir(top), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := CreateOverlay(ctx, base, mid, 0); err != nil {
		t.Fatal(err)
	}
	if err := CreateOverlay(ctx, mid, top, 0); err != nil {
		t.Fatal(err)
	}
	// A relative backing name is resolved against its image's directory.
	rel := filepath.Join(dir, "rel.qcow2")
	if _, err := qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "sub/top.qcow2", rel); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, image string
		want        []string
		missing     bool
	}{
		{"raw image", base, []string{base}, false},
		{"overlay of an overlay", top, []string{top, mid, base}, false},
		{"relative backing name", rel, []string{rel, top, mid, base}, false},
		{"missing image", filepath.Join(dir, "none"), []string{filepath.Join(dir, "none")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BackingChain(tc.image)
			if tc.missing != errors.Is(err, fs.ErrNotExist) || (!tc.missing && err != nil) {
				t.Fatalf("BackingChain(%s) error %v, want missing=%v", tc.image, err, tc.missing)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("BackingChain(%s) = %v, want %v", tc.image, got, tc.want)
			}
		})
	}
	// Agrees with qemu-img.
	info, err := Inspect(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFile != mid {
		t.Fatalf("qemu-img says %s backs onto %q, want %q", top, info.BackingFile, mid)
	}
}
