package disk

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestOverlays: the first overlay of a base and size comes from qemu-img,
// the next ones are copies of it that qemu-img reads as overlays of that
// base with the base's content; another size, or a base rewritten, gets
// its own; an existing disk is never overwritten and a failure leaves
// nothing behind.
func TestOverlays(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	sparseFile(t, base, 64*mib, map[int64][]byte{0: []byte("boot sector"), 40 * mib: []byte("file data")})
	var o Overlays
	path := func(name string) string { return filepath.Join(dir, name) }
	read := func(t *testing.T, p string) []byte {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// isOverlayOf checks p with qemu-img: an overlay of base, of size
	// bytes, whose content is the base's.
	isOverlayOf := func(t *testing.T, p string, size int64) {
		t.Helper()
		info, err := Inspect(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if info.Format != "qcow2" || info.BackingFile != base || info.VirtualSize != size {
			t.Fatalf("%s: %+v, want a qcow2 overlay of %s of %d bytes", p, info, base, size)
		}
		if _, err := qemuImg(ctx, "check", p); err != nil {
			t.Fatal(err)
		}
		if size == 64*mib {
			if _, err := qemuImg(ctx, "compare", "-f", "raw", "-F", "qcow2", base, p); err != nil {
				t.Fatalf("content differs from the base: %v", err)
			}
		}
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"the first overlay comes from qemu-img", func(t *testing.T) {
			if err := o.Create(ctx, base, path("a.qcow2"), 0); err != nil {
				t.Fatal(err)
			}
			isOverlayOf(t, path("a.qcow2"), 64*mib)
			if len(o.made) != 1 {
				t.Fatalf("%d overlays kept, want 1", len(o.made))
			}
		}},
		{"the next one is the same bytes, and an overlay of the base", func(t *testing.T) {
			if err := o.Create(ctx, base, path("b.qcow2"), 0); err != nil {
				t.Fatal(err)
			}
			if err := CreateOverlay(ctx, base, path("fresh.qcow2"), 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(read(t, path("b.qcow2")), read(t, path("fresh.qcow2"))) {
				t.Fatal("the copy differs from what qemu-img makes")
			}
			isOverlayOf(t, path("b.qcow2"), 64*mib)
			if len(o.made) != 1 {
				t.Fatalf("%d overlays kept, want 1", len(o.made))
			}
		}},
		{"another size gets its own", func(t *testing.T) {
			for _, name := range []string{"c.qcow2", "d.qcow2"} {
				if err := o.Create(ctx, base, path(name), 128*mib); err != nil {
					t.Fatal(err)
				}
				isOverlayOf(t, path(name), 128*mib)
			}
			if len(o.made) != 2 {
				t.Fatalf("%d overlays kept, want 2", len(o.made))
			}
		}},
		{"a base replaced gets its own", func(t *testing.T) {
			sparseFile(t, path("new.raw"), 64*mib, map[int64][]byte{0: []byte("boot sector"), 40 * mib: []byte("file data")})
			if err := os.Rename(path("new.raw"), base); err != nil {
				t.Fatal(err)
			}
			if err := o.Create(ctx, base, path("e.qcow2"), 0); err != nil {
				t.Fatal(err)
			}
			isOverlayOf(t, path("e.qcow2"), 64*mib)
			if len(o.made) != 3 {
				t.Fatalf("%d overlays kept, want 3", len(o.made))
			}
		}},
		{"an existing disk is not overwritten", func(t *testing.T) {
			if err := os.WriteFile(path("taken.qcow2"), []byte("mine"), 0o600); err != nil {
				t.Fatal(err)
			}
			err := o.Create(ctx, base, path("taken.qcow2"), 0)
			if !errors.Is(err, fs.ErrExist) {
				t.Fatalf("err = %v, want fs.ErrExist", err)
			}
			if got := read(t, path("taken.qcow2")); string(got) != "mine" {
				t.Fatalf("the existing file now holds %q", got)
			}
		}},
		{"a missing base fails and leaves nothing", func(t *testing.T) {
			err := o.Create(ctx, path("missing.raw"), path("f.qcow2"), 0)
			if !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("err = %v, want fs.ErrNotExist", err)
			}
		}},
		{"no temporary file is left", func(t *testing.T) {
			want := []string{"a.qcow2", "b.qcow2", "base.raw", "c.qcow2", "d.qcow2", "e.qcow2", "fresh.qcow2", "taken.qcow2"}
			if got := dirNames(t, dir); !slices.Equal(got, want) {
				t.Fatalf("directory holds %v, want %v", got, want)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			break
		}
	}
}
