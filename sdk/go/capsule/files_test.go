package capsule

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestWriteAnnouncesFileLength: an upload from a regular file (from its
// offset) or a strings.Reader carries Content-Length; a pipe goes out
// chunked. The server sees the whole content either way.
func TestWriteAnnouncesFileLength(t *testing.T) {
	type seen struct {
		length   int64
		chunked  bool
		received string
	}
	var mu sync.Mutex
	var got seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = seen{length: r.ContentLength, chunked: len(r.TransferEncoding) > 0, received: string(b)}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"path":"/home/user/f","size":0}`)
	}))
	defer srv.Close()
	c, err := New(srv.URL, WithAPIKey("e2b_0123"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T, off int64) *os.File {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		return f
	}
	pipe := func() io.Reader {
		pr, pw := io.Pipe()
		go func() { _, _ = io.WriteString(pw, "piped"); pw.Close() }()
		return pr
	}
	for _, tc := range []struct {
		name string
		r    func(t *testing.T) io.Reader
		want seen
	}{
		{"a file", func(t *testing.T) io.Reader { return open(t, 0) }, seen{10, false, "0123456789"}},
		{"a file from its offset", func(t *testing.T) io.Reader { return open(t, 4) }, seen{6, false, "456789"}},
		{"a file read to its end", func(t *testing.T) io.Reader { return open(t, 10) }, seen{0, false, ""}},
		{"a strings.Reader", func(*testing.T) io.Reader { return strings.NewReader("abc") }, seen{3, false, "abc"}},
		{"a pipe", func(*testing.T) io.Reader { return pipe() }, seen{-1, true, "piped"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Files.Write(context.Background(), "sb1", "/home/user/f", "", tc.r(t)); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if got != tc.want {
				t.Fatalf("the server saw %+v, want %+v", got, tc.want)
			}
		})
	}
}
