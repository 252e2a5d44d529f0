package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path"
	"strings"
	"testing"
)

// FuzzNormalize: any input is refused with a classified error or yields
// a tar whose names are clean and relative and whose symlinks stay
// inside; a normalized archive normalizes to itself.
func FuzzNormalize(f *testing.F) {
	f.Add(mkTar(f, sample...))
	f.Add(gz(f, mkTar(f, sample...)))
	f.Add(mkZip(f, sample...))
	f.Add(mkTar(f, ent{name: "d/up", typ: tar.TypeSymlink, link: ".."}, ent{name: "h", typ: tar.TypeLink, link: "d/up"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		_, err := Normalize(bytes.NewReader(data), int64(len(data)), &out, Limits{MaxBytes: 1 << 20, MaxEntries: 1000})
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrUnknownFormat) {
				t.Fatalf("unclassified error %T: %v", err, err)
			}
			return
		}
		tr := tar.NewReader(bytes.NewReader(out.Bytes()))
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("output is not a tar: %v", err)
			}
			name := strings.TrimSuffix(h.Name, "/")
			if name == "" || path.IsAbs(name) || path.Clean(name) != name || strings.HasPrefix(name, "../") || name == ".." {
				t.Fatalf("unclean name %q", h.Name)
			}
			if h.Typeflag == tar.TypeSymlink && (path.IsAbs(h.Linkname) || strings.HasPrefix(path.Clean(path.Join(path.Dir(name), h.Linkname)), "..")) {
				t.Fatalf("symlink %q -> %q escapes", name, h.Linkname)
			}
			if h.Mode&^0o777 != 0 {
				t.Fatalf("mode %o of %q keeps special bits", h.Mode, name)
			}
		}
		var again bytes.Buffer
		if _, err := Normalize(bytes.NewReader(out.Bytes()), int64(out.Len()), &again, Limits{MaxBytes: 1 << 20, MaxEntries: 1000}); err != nil {
			t.Fatalf("a normalized archive is refused: %v", err)
		}
		if !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatal("normalizing twice changed the archive")
		}
	})
}
