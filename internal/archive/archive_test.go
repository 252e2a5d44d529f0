package archive

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"reflect"
	"strings"
	"testing"
	"time"
)

// ent describes an entry to put in a test archive.
type ent struct {
	name, body, link string
	typ              byte // tar type; 0: regular file
	mode             int64
}

func mkTar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Linkname: e.link, ModTime: time.Unix(1_700_000_000, 0), Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func mkZip(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for _, e := range ents {
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: time.Unix(1_700_000_000, 0)}
		switch e.typ {
		case tar.TypeDir:
			h.SetMode(fs.ModeDir | 0o755)
		case tar.TypeSymlink:
			h.SetMode(fs.ModeSymlink | 0o777)
			e.body = e.link
		default:
			mode := e.mode
			if mode == 0 {
				mode = 0o644
			}
			h.SetMode(fs.FileMode(mode&0o777) | modeBits(mode))
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// got is an entry of a normalized archive.
type got struct {
	Name string
	Type byte
	Mode int64
	Link string
	Body string
}

func readTar(t testing.TB, b []byte) []got {
	t.Helper()
	var out []got
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("normalized output is not a tar: %v", err)
		}
		body, _ := io.ReadAll(tr)
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("entry %q owned by %d:%d, want root", h.Name, h.Uid, h.Gid)
		}
		out = append(out, got{h.Name, h.Typeflag, h.Mode, h.Linkname, string(body)})
	}
}

func normalize(t testing.TB, b []byte, lim Limits) ([]byte, Stats, error) {
	t.Helper()
	var out bytes.Buffer
	st, err := Normalize(bytes.NewReader(b), int64(len(b)), &out, lim)
	return out.Bytes(), st, err
}

var sample = []ent{
	{name: "./app/", typ: tar.TypeDir, mode: 0o755},
	{name: "app/main.py", body: "print('hi')\n", mode: 0o4755}, // setuid: dropped
	{name: "app/lib/util.py", body: "x = 1\n"},
	{name: "app/current", typ: tar.TypeSymlink, link: "lib/util.py"},
	{name: "app/up", typ: tar.TypeSymlink, link: "../README"},
	{name: "README", body: "read me"},
}

func TestNormalizeFormats(t *testing.T) {
	want := []got{
		{"app/", tar.TypeDir, 0o755, "", ""},
		{"app/main.py", tar.TypeReg, 0o755, "", "print('hi')\n"},
		{"app/lib/util.py", tar.TypeReg, 0o644, "", "x = 1\n"},
		{"app/current", tar.TypeSymlink, 0o777, "lib/util.py", ""},
		{"app/up", tar.TypeSymlink, 0o777, "../README", ""},
		{"README", tar.TypeReg, 0o644, "", "read me"},
	}
	wantStats := Stats{Files: 3, Dirs: 1, Symlinks: 2, Bytes: int64(len("print('hi')\n") + len("x = 1\n") + len("read me"))}
	for _, tc := range []struct {
		name   string
		data   []byte
		format Format
	}{
		{"tar", mkTar(t, sample...), Tar},
		{"tar.gz", gz(t, mkTar(t, sample...)), TarGz},
		{"zip", mkZip(t, sample...), Zip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Detect(tc.data)
			if err != nil || f != tc.format {
				t.Fatalf("Detect = %q, %v; want %q", f, err, tc.format)
			}
			out, st, err := normalize(t, tc.data, Limits{})
			if err != nil {
				t.Fatalf("Normalize: %v", err)
			}
			if g := readTar(t, out); !reflect.DeepEqual(g, want) {
				t.Errorf("entries:\n got %+v\nwant %+v", g, want)
			}
			ws := wantStats
			ws.Format = tc.format
			if st != ws {
				t.Errorf("stats = %+v, want %+v", st, ws)
			}
		})
	}
}

func TestNormalizeHardLink(t *testing.T) {
	out, st, err := normalize(t, mkTar(t,
		ent{name: "a", body: "data"},
		ent{name: "./b", typ: tar.TypeLink, link: "./a"},
	), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := []got{{"a", tar.TypeReg, 0o644, "", "data"}, {"b", tar.TypeLink, 0o644, "a", ""}}
	if g := readTar(t, out); !reflect.DeepEqual(g, want) || st.Files != 2 {
		t.Errorf("got %+v (%+v), want %+v", g, st, want)
	}
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name string
		head []byte
		want Format
		err  error
	}{
		{"empty", nil, "", ErrUnknownFormat},
		{"text", []byte("FROM base\nRUN true\n"), "", ErrUnknownFormat},
		{"gzip", []byte{0x1f, 0x8b, 8, 0}, TarGz, nil},
		{"zip", []byte("PK\x03\x04rest"), Zip, nil},
		{"empty zip", []byte("PK\x05\x06"), Zip, nil},
		{"empty tar", make([]byte, 1024), Tar, nil},
		{"short zero block", make([]byte, 100), "", ErrUnknownFormat},
		{"ustar", mkTar(t, ent{name: "x", body: "y"}), Tar, nil},
		{"named .zip but a tar", mkTar(t, ent{name: "archive.zip"}), Tar, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Detect(tc.head)
			if f != tc.want || !errors.Is(err, tc.err) {
				t.Errorf("Detect = %q, %v; want %q, %v", f, err, tc.want, tc.err)
			}
		})
	}
}

func TestNormalizeRefuses(t *testing.T) {
	big := strings.Repeat("z", 1000)
	for _, tc := range []struct {
		name string
		data func(t *testing.T) []byte
		lim  Limits
		want string // substring of the error; "" with err
		err  error
	}{
		{"not an archive", func(t *testing.T) []byte { return []byte("hello world") }, Limits{}, "", ErrUnknownFormat},
		{"gzip without a tar", func(t *testing.T) []byte { return gz(t, []byte("just text, no tar here")) }, Limits{}, "holds no tar", nil},
		{"truncated gzip", func(t *testing.T) []byte { b := gz(t, mkTar(t, sample...)); return b[:len(b)/2] }, Limits{}, "EOF", nil},
		{"truncated tar", func(t *testing.T) []byte { return mkTar(t, ent{name: "f", body: big})[:700] }, Limits{}, "unreadable", nil},
		{"absolute name", func(t *testing.T) []byte { return mkTar(t, ent{name: "/etc/cron.d/x", body: "evil"}) }, Limits{}, `"/etc/cron.d/x": absolute name`, nil},
		{"dot-dot name", func(t *testing.T) []byte { return mkTar(t, ent{name: "../../x", body: "evil"}) }, Limits{}, `name contains ".."`, nil},
		{"dot-dot inside", func(t *testing.T) []byte { return mkTar(t, ent{name: "a/../../x", body: "evil"}) }, Limits{}, `name contains ".."`, nil},
		{"zip dot-dot", func(t *testing.T) []byte { return mkZip(t, ent{name: "../evil", body: "x"}) }, Limits{}, `name contains ".."`, nil},
		{"zip absolute", func(t *testing.T) []byte { return mkZip(t, ent{name: "/evil", body: "x"}) }, Limits{}, "absolute name", nil},
		{"absolute symlink", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "etc", typ: tar.TypeSymlink, link: "/etc"})
		}, Limits{}, `symlink to the absolute path "/etc"`, nil},
		{"climbing symlink", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "a/b/l", typ: tar.TypeSymlink, link: "../../../x"})
		}, Limits{}, "leaves the archive", nil},
		{"zip climbing symlink", func(t *testing.T) []byte {
			return mkZip(t, ent{name: "l", typ: tar.TypeSymlink, link: "../x"})
		}, Limits{}, "leaves the archive", nil},
		{"symlink through symlink, link first", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "d/up", typ: tar.TypeSymlink, link: ".."}, ent{name: "d/up2", typ: tar.TypeSymlink, link: "up/.."})
		}, Limits{}, "leaves the archive", nil},
		{"symlink through symlink, link last", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "d/up2", typ: tar.TypeSymlink, link: "up/.."}, ent{name: "d/up", typ: tar.TypeSymlink, link: ".."})
		}, Limits{}, "leaves the archive", nil},
		{"symlink loop", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "a", typ: tar.TypeSymlink, link: "b"}, ent{name: "b", typ: tar.TypeSymlink, link: "a/x"})
		}, Limits{}, "too many levels", nil},
		{"write through a symlink", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "sub/", typ: tar.TypeDir}, ent{name: "l", typ: tar.TypeSymlink, link: "sub"}, ent{name: "l/x", body: "evil"})
		}, Limits{}, `passes through "l", which is not a directory`, nil},
		{"symlink replacing a directory with children", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "a/b", body: "x"}, ent{name: "a", typ: tar.TypeSymlink, link: "."})
		}, Limits{}, "appears twice", nil},
		{"child of a file", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "f", body: "x"}, ent{name: "f/g", body: "y"})
		}, Limits{}, `passes through "f"`, nil},
		{"duplicate file", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "f", body: "x"}, ent{name: "./f", body: "y"})
		}, Limits{}, "appears twice", nil},
		{"hard link to nothing", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "h", typ: tar.TypeLink, link: "missing"})
		}, Limits{}, "not an earlier file", nil},
		{"hard link outside", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "h", typ: tar.TypeLink, link: "../../etc/shadow"})
		}, Limits{}, "not an earlier file", nil},
		{"hard link to a symlink", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "s", typ: tar.TypeSymlink, link: "x"}, ent{name: "h", typ: tar.TypeLink, link: "s"})
		}, Limits{}, "not an earlier file", nil},
		{"device", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "sda", typ: tar.TypeBlock})
		}, Limits{}, "unsupported entry type", nil},
		{"fifo", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "p", typ: tar.TypeFifo})
		}, Limits{}, "unsupported entry type", nil},
		{"root is a file", func(t *testing.T) []byte { return mkTar(t, ent{name: ".", body: ""}) }, Limits{}, "root is not a directory", nil},
		{"too many entries", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "a"}, ent{name: "b"}, ent{name: "c"})
		}, Limits{MaxEntries: 2}, "more than 2 entries", nil},
		{"too large", func(t *testing.T) []byte {
			return mkTar(t, ent{name: "a", body: big}, ent{name: "b", body: big})
		}, Limits{MaxBytes: 1500}, "", ErrTooLarge},
		{"gzip bomb", func(t *testing.T) []byte {
			return gz(t, mkTar(t, ent{name: "zeros", body: string(make([]byte, 4<<20))}))
		}, Limits{MaxBytes: 1 << 20}, "", ErrTooLarge},
		{"zip bomb", func(t *testing.T) []byte {
			return mkZip(t, ent{name: "zeros", body: string(make([]byte, 4<<20))})
		}, Limits{MaxBytes: 1 << 20}, "", ErrTooLarge},
		{"zip lying size", func(t *testing.T) []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			w, err := zw.CreateRaw(&zip.FileHeader{Name: "lie", Method: zip.Store, CompressedSize64: 10, UncompressedSize64: 5})
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(w, "0123456789")
			zw.Close()
			return b.Bytes()
		}, Limits{}, "unreadable", nil},
		{"zip bad checksum", func(t *testing.T) []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			w, err := zw.CreateRaw(&zip.FileHeader{Name: "crc", Method: zip.Store, CRC32: 1, CompressedSize64: 4, UncompressedSize64: 4})
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(w, "data")
			zw.Close()
			return b.Bytes()
		}, Limits{}, "checksum", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := normalize(t, tc.data(t), tc.lim)
			if err == nil {
				t.Fatal("Normalize accepted a hostile archive")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("error = %v, want %v", err, tc.err)
			}
			if tc.want != "" {
				var ae *Error
				if !errors.As(err, &ae) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error = %T %v, want an *Error with %q", err, err, tc.want)
				}
			}
		})
	}
}

// A failing output is the output's error, not the archive's.
func TestNormalizeWriteError(t *testing.T) {
	data := mkTar(t, sample...)
	_, err := Normalize(bytes.NewReader(data), int64(len(data)), failWriter{}, Limits{})
	var ae *Error
	if err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v, want the writer's error, not an *Error", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func modeBits(m int64) fs.FileMode {
	if m&0o4000 != 0 {
		return fs.ModeSetuid
	}
	return 0
}
