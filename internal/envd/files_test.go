package envd_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/capsulehq/capsule/gen/envd/filesystem"
	"github.com/capsulehq/capsule/internal/envd"
)

// part is one multipart part of an upload.
type part struct {
	field, filename, content string
}

// multipartBody encodes parts the way the JS SDK does (octet-stream parts).
func multipartBody(t *testing.T, parts ...part) (contentType string, body []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		cd := fmt.Sprintf(`form-data; name=%q`, p.field)
		if p.filename != "" {
			cd += fmt.Sprintf(`; filename=%q`, p.filename)
		}
		h.Set("Content-Disposition", cd)
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, p.content)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), buf.Bytes()
}

// filesURL builds a /files URL from query pairs.
func (e *fsEnv) filesURL(pairs ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(pairs); i += 2 {
		q.Set(pairs[i], pairs[i+1])
	}
	return e.url + "/files?" + q.Encode()
}

// do sends a request and returns the response with its body read.
func do(t *testing.T, method, u string, body io.Reader, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	// A bare transport: no transparent gzip decoding, so the test sees the
	// wire encoding.
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// upload posts a multipart body and returns status and body.
func (e *fsEnv) upload(t *testing.T, u string, hdr map[string]string, parts ...part) (int, string) {
	t.Helper()
	ct, body := multipartBody(t, parts...)
	h := map[string]string{"Content-Type": ct}
	for k, v := range hdr {
		h[k] = v
	}
	resp, b := do(t, http.MethodPost, u, bytes.NewReader(body), h)
	return resp.StatusCode, string(b)
}

type uploadReply []struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
}

func decodeReply(t *testing.T, body string) uploadReply {
	t.Helper()
	var r uploadReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("reply %q: %v", body, err)
	}
	return r
}

func wantError(t *testing.T, status int, body string, wantStatus int, wantMsg string) {
	t.Helper()
	var m struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if status != wantStatus || m.Code != wantStatus || !strings.Contains(m.Message, wantMsg) {
		t.Fatalf("got %d %s, want %d with %q", status, body, wantStatus, wantMsg)
	}
}

func TestFilesBinaryRoundTrip(t *testing.T) {
	e := newFSEnv(t)
	data := make([]byte, 10<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	p := e.path("bin", "data.bin")
	st, body := e.upload(t, e.filesURL("path", p), nil, part{"file", "ignored-when-path-given", string(data)})
	if st != http.StatusOK {
		t.Fatalf("upload: %d %s", st, body)
	}
	if r := decodeReply(t, body); len(r) != 1 || r[0].Path != p || r[0].Name != "data.bin" || r[0].Type != "file" || r[0].Metadata != nil {
		t.Fatalf("reply %s", body)
	}
	if !strings.Contains(body, `"type":"file"`) || strings.Contains(body, "metadata") {
		t.Errorf("reply %s", body)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("stored file: %v %v", fi, err)
	}
	if di, _ := os.Stat(filepath.Dir(p)); di.Mode().Perm() != 0o755 {
		t.Errorf("created parent mode %v", di.Mode())
	}

	resp, got := do(t, http.MethodGet, e.filesURL("path", p), nil, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("download: %d, %d bytes, equal %v", resp.StatusCode, len(got), bytes.Equal(got, data))
	}
	if resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) || resp.Header.Get("Content-Disposition") != "inline; filename=data.bin" ||
		resp.Header.Get("Last-Modified") == "" || resp.Header.Get("Vary") != "Accept-Encoding" {
		t.Errorf("headers %v", resp.Header)
	}

	// Node's fetch asks for gzip by default.
	resp, got = do(t, http.MethodGet, e.filesURL("path", p), nil, map[string]string{"Accept-Encoding": "gzip, deflate"})
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("encoding %q", resp.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := io.ReadAll(zr); err != nil || !bytes.Equal(plain, data) {
		t.Fatalf("gzip download differs: %v", err)
	}
}

func TestFilesUploadMultipart(t *testing.T) {
	e := newFSEnv(t)
	rel, abs := homeScratch(t)

	st, body := e.upload(t, e.filesURL(), nil,
		part{"file", e.path("a.txt"), "A"},
		part{"other", "x", "ignored"},
		part{"file", rel + "/b.txt", "B"},
		part{"file", "~/" + rel + "/nested/c.txt", "C"},
	)
	if st != http.StatusOK {
		t.Fatalf("upload: %d %s", st, body)
	}
	r := decodeReply(t, body)
	want := []string{e.path("a.txt"), filepath.Join(abs, "b.txt"), filepath.Join(abs, "nested", "c.txt")}
	if len(r) != len(want) {
		t.Fatalf("reply %s", body)
	}
	for i, w := range want {
		if r[i].Path != w || r[i].Name != filepath.Base(w) {
			t.Errorf("reply[%d] = %+v, want %s", i, r[i], w)
		}
		if b, err := os.ReadFile(w); err != nil || string(b) != string("ABC"[i]) {
			t.Errorf("%s holds %q (%v)", w, b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(abs, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a part not named file was stored")
	}

	// A form part without filename goes to the path query (signed upload
	// URL style), relative to the user's home.
	st, body = e.upload(t, e.filesURL("path", rel+"/hello.txt", "username", "root"), nil, part{"file", "", "hi"})
	if r := decodeReply(t, body); st != 200 || len(r) != 1 || r[0].Path != filepath.Join(abs, "hello.txt") {
		t.Fatalf("upload by query: %d %s", st, body)
	}

	tests := []struct {
		name   string
		url    string
		parts  []part
		status int
		msg    string
	}{
		{"duplicate target", e.filesURL(), []part{{"file", e.path("d.txt"), "1"}, {"file", e.dir + "/./d.txt", "2"}}, 400, "more than one file"},
		{"path query for two parts", e.filesURL("path", e.path("q.txt")), []part{{"file", "a", "1"}, {"file", "b", "2"}}, 400, "more than one file"},
		{"no file part", e.filesURL(), []part{{"other", "x", "1"}}, 400, "no part named 'file'"},
		{"no path at all", e.filesURL(), []part{{"file", "", "1"}}, 400, "without a path"},
		{"target is a directory", e.filesURL("path", e.dir), []part{{"file", "", "1"}}, 400, "is a directory"},
		{"parent is a file", e.filesURL("path", e.path("a.txt", "x")), []part{{"file", "", "1"}}, 400, "not a directory"},
		{"tilde user", e.filesURL("path", "~root/x"), []part{{"file", "", "1"}}, 400, "invalid path"},
		{"unknown user", e.filesURL("path", "x", "username", "no-such-user"), []part{{"file", "", "1"}}, 401, "error looking up user 'no-such-user': "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.upload(t, tc.url, nil, tc.parts...)
			wantError(t, st, body, tc.status, tc.msg)
		})
	}
}

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestFilesUploadRawAndGzip(t *testing.T) {
	e := newFSEnv(t)
	content := bytes.Repeat([]byte("compressible "), 10000)
	ct, mp := multipartBody(t, part{"file", e.path("mp.txt"), string(content)})

	tests := []struct {
		name   string
		url    string
		hdr    map[string]string
		body   []byte
		status int
		msg    string
		stored string
	}{
		{"octet-stream", e.filesURL("path", e.path("raw.txt")), map[string]string{"Content-Type": "application/octet-stream"}, content, 200, "", e.path("raw.txt")},
		{"octet-stream gzip", e.filesURL("path", e.path("rawgz.txt")), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, gzipped(t, content), 200, "", e.path("rawgz.txt")},
		{"multipart gzip", e.filesURL(), map[string]string{"Content-Type": ct, "Content-Encoding": "gzip"}, gzipped(t, mp), 200, "", e.path("mp.txt")},
		{"identity", e.filesURL("path", e.path("id.txt")), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "identity"}, content, 200, "", e.path("id.txt")},
		{"octet-stream without path", e.filesURL(), map[string]string{"Content-Type": "application/octet-stream"}, content, 400, "path query parameter is required", ""},
		{"bad gzip", e.filesURL("path", e.path("bad.txt")), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, content, 400, "invalid gzip body", ""},
		{"truncated gzip", e.filesURL("path", e.path("trunc.txt")), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, gzipped(t, content)[:100], 400, "cannot read request body", ""},
		{"other encoding", e.filesURL("path", e.path("br.txt")), map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "br"}, content, 400, "unsupported content encoding", ""},
		{"other content type", e.filesURL("path", e.path("json.txt")), map[string]string{"Content-Type": "application/json"}, content, 400, "unsupported content type 'application/json'", ""},
		{"no content type", e.filesURL("path", e.path("none.txt")), nil, content, 400, "unsupported content type", ""},
		{"multipart without boundary", e.filesURL("path", e.path("nb.txt")), map[string]string{"Content-Type": "multipart/form-data"}, content, 400, "boundary", ""},
		{"malformed multipart", e.filesURL("path", e.path("mal.txt")), map[string]string{"Content-Type": "multipart/form-data; boundary=xyz"}, content, 400, "cannot read request body", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, http.MethodPost, tc.url, bytes.NewReader(tc.body), tc.hdr)
			if tc.status != 200 {
				wantError(t, resp.StatusCode, string(body), tc.status, tc.msg)
				for _, f := range []string{"bad.txt", "trunc.txt"} {
					if _, err := os.Stat(e.path(f)); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("failed upload left %s behind", f)
					}
				}
				return
			}
			if r := decodeReply(t, string(body)); resp.StatusCode != 200 || len(r) != 1 || r[0].Path != tc.stored {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			if got, _ := os.ReadFile(tc.stored); !bytes.Equal(got, content) {
				t.Errorf("stored %d bytes", len(got))
			}
		})
	}
}

func TestFilesUploadOwnership(t *testing.T) {
	e := newFSEnv(t)
	u := otherUser(t)
	writeFile(t, e.path("existing.txt"), "old content that is longer")

	st, body := e.upload(t, e.filesURL("username", u.Username), nil,
		part{"file", e.path("new", "dir", "f.txt"), "new"},
		part{"file", e.path("existing.txt"), "over"},
	)
	if st != http.StatusOK {
		t.Fatalf("upload: %d %s", st, body)
	}
	for _, p := range []string{e.path("new"), e.path("new", "dir"), e.path("new", "dir", "f.txt"), e.path("existing.txt")} {
		if uid, gid := owner(t, p); uid != u.Uid || gid != u.Gid {
			t.Errorf("%s owned by %s:%s, want %s:%s", p, uid, gid, u.Uid, u.Gid)
		}
	}
	if b, _ := os.ReadFile(e.path("existing.txt")); string(b) != "over" {
		t.Errorf("overwritten file holds %q", b)
	}
}

// xattrsSupported reports whether dir's filesystem stores user xattrs.
func xattrsSupported(t *testing.T, dir string) bool {
	t.Helper()
	p := filepath.Join(dir, ".xattr-probe")
	writeFile(t, p, "")
	defer os.Remove(p)
	return unix.Setxattr(p, "user.probe", []byte("1"), 0) == nil
}

func TestFilesMetadata(t *testing.T) {
	e := newFSEnv(t)
	requireCond(t, xattrsSupported(t, e.dir), "the temp filesystem has no user xattrs")
	p := e.path("meta.txt")

	want := map[string]string{"author": "me", "project-id": "p 1"}
	buf := make([]byte, 64)
	stat := func(t *testing.T) map[string]string {
		t.Helper()
		res, err := e.client.Stat(context.Background(), as(&pb.StatRequest{Path: p}, ""))
		if err != nil {
			t.Fatalf("stat: %v", err)
		}
		return res.Msg.GetEntry().GetMetadata()
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"an upload stores its metadata as user.e2b xattrs", func(t *testing.T) {
			st, body := e.upload(t, e.filesURL("path", p), map[string]string{"X-Metadata-Author": "me", "x-metadata-Project-ID": "p 1"}, part{"file", "", "x"})
			if st != http.StatusOK {
				t.Fatalf("upload: %d %s", st, body)
			}
			if r := decodeReply(t, body); fmt.Sprint(r[0].Metadata) != fmt.Sprint(want) {
				t.Errorf("reply metadata %v", r[0].Metadata)
			}
			if n, err := unix.Getxattr(p, "user.e2b.author", buf); err != nil || string(buf[:n]) != "me" {
				t.Errorf("xattr user.e2b.author = %q, %v", buf[:n], err)
			}
		}},
		{"stat reports only user.e2b xattrs", func(t *testing.T) {
			if err := unix.Setxattr(p, "user.other", []byte("keep"), 0); err != nil {
				t.Fatal(err)
			}
			if md := stat(t); fmt.Sprint(md) != fmt.Sprint(want) {
				t.Fatalf("stat metadata %v, want %v", md, want)
			}
		}},
		{"the next upload replaces the whole set", func(t *testing.T) {
			st, body := e.upload(t, e.filesURL("path", p), map[string]string{"X-Metadata-Author": "you"}, part{"file", "", "y"})
			if st != 200 || !strings.Contains(body, `"metadata":{"author":"you"}`) {
				t.Fatalf("second upload: %d %s", st, body)
			}
			if md := stat(t); fmt.Sprint(md) != "map[author:you]" {
				t.Errorf("metadata after replace %v", md)
			}
		}},
		{"an upload without metadata clears it and keeps foreign xattrs", func(t *testing.T) {
			st, body := e.upload(t, e.filesURL("path", p), nil, part{"file", "", "z"})
			if st != 200 || strings.Contains(body, "metadata") {
				t.Fatalf("upload without metadata: %d %s", st, body)
			}
			if md := stat(t); md != nil {
				t.Errorf("metadata not cleared: %v", md)
			}
			if n, err := unix.Getxattr(p, "user.other", buf); err != nil || string(buf[:n]) != "keep" {
				t.Errorf("foreign xattr: %q %v", buf[:n], err)
			}
		}},
		{"invalid metadata is refused and stores nothing", func(t *testing.T) {
			tests := []struct {
				name string
				hdr  map[string]string
			}{
				{"non-ASCII value", map[string]string{"X-Metadata-Author": "j\u00f6rg"}},
				{"control character", map[string]string{"X-Metadata-Author": "a\tb"}},
				{"key too long", map[string]string{"X-Metadata-" + strings.Repeat("k", 247): "v"}},
				{"too large", map[string]string{"X-Metadata-A": strings.Repeat("v", 2100), "X-Metadata-B": strings.Repeat("v", 2100)}},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					if st, body := e.upload(t, e.filesURL("path", e.path("bad-meta.txt")), tc.hdr, part{"file", "", "x"}); st != 400 {
						t.Errorf("%d %s, want 400", st, body)
					}
				})
			}
			if _, err := os.Stat(e.path("bad-meta.txt")); !errors.Is(err, os.ErrNotExist) {
				t.Error("an upload with invalid metadata stored a file")
			}
		}},
		{"246 bytes is the longest key", func(t *testing.T) {
			if st, body := e.upload(t, e.filesURL("path", e.path("long.txt")), map[string]string{"X-Metadata-" + strings.Repeat("k", 246): "v"}, part{"file", "", "x"}); st != 200 {
				t.Errorf("longest key: %d %s", st, body)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			return
		}
	}
}

func TestFilesDownloadEncodingAndRanges(t *testing.T) {
	e := newFSEnv(t)
	content := strings.Repeat("0123456789", 1000)
	p := e.path("my file.txt")
	writeFile(t, p, content)
	fi, _ := os.Stat(p)

	tests := []struct {
		name     string
		hdr      map[string]string
		status   int
		encoding string
		body     string
	}{
		{"no Accept-Encoding", nil, 200, "", content},
		{"gzip", map[string]string{"Accept-Encoding": "gzip"}, 200, "gzip", content},
		{"gzip preferred by q", map[string]string{"Accept-Encoding": "identity;q=0.5, gzip;q=0.8"}, 200, "gzip", content},
		{"identity preferred by q", map[string]string{"Accept-Encoding": "gzip;q=0.5, identity"}, 200, "", content},
		{"tie keeps order", map[string]string{"Accept-Encoding": "identity, gzip"}, 200, "", content},
		{"unsupported only", map[string]string{"Accept-Encoding": "br"}, 200, "", content},
		{"star", map[string]string{"Accept-Encoding": "br, *"}, 200, "", content},
		{"gzip refused", map[string]string{"Accept-Encoding": "gzip;q=0"}, 200, "", content},
		{"identity refused", map[string]string{"Accept-Encoding": "identity;q=0"}, 406, "", ""},
		{"star refused", map[string]string{"Accept-Encoding": "br, *;q=0"}, 406, "", ""},
		{"identity refused, gzip ok", map[string]string{"Accept-Encoding": "gzip, identity;q=0"}, 200, "gzip", content},
		{"range forces identity", map[string]string{"Accept-Encoding": "gzip", "Range": "bytes=10-19"}, 206, "", content[10:20]},
		{"conditional", map[string]string{"Accept-Encoding": "gzip", "If-Modified-Since": fi.ModTime().Add(time.Second).UTC().Format(http.TimeFormat)}, 304, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, http.MethodGet, e.filesURL("path", p), nil, tc.hdr)
			if resp.StatusCode != tc.status || resp.Header.Get("Content-Encoding") != tc.encoding {
				t.Fatalf("status %d encoding %q, want %d %q (%s)", resp.StatusCode, resp.Header.Get("Content-Encoding"), tc.status, tc.encoding, body)
			}
			if tc.status == 406 {
				wantError(t, resp.StatusCode, string(body), 406, "encoding")
				return
			}
			if tc.encoding == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				body, _ = io.ReadAll(zr)
			}
			if string(body) != tc.body {
				t.Errorf("body of %d bytes, want %d", len(body), len(tc.body))
			}
			if tc.status == 200 {
				if cd := resp.Header.Get("Content-Disposition"); cd != `inline; filename="my file.txt"` {
					t.Errorf("Content-Disposition %q", cd)
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("Content-Type %q", ct)
				}
			}
		})
	}
}

func TestFilesDownloadErrorsAndSpecialFiles(t *testing.T) {
	e := newFSEnv(t)
	rel, abs := homeScratch(t)
	writeFile(t, filepath.Join(abs, "f.txt"), "home file")
	if err := syscall.Mkfifo(e.path("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.path("empty"), "")

	tests := []struct {
		name   string
		url    string
		status int
		msg    string
		body   string
	}{
		{"relative to home", e.filesURL("path", rel+"/f.txt"), 200, "", "home file"},
		{"as root", e.filesURL("path", rel+"/f.txt", "username", "root"), 200, "", "home file"},
		{"missing", e.filesURL("path", e.path("nope")), 404, fmt.Sprintf("path '%s' does not exist", e.path("nope")), ""},
		{"directory", e.filesURL("path", e.dir), 400, "is a directory", ""},
		{"fifo", e.filesURL("path", e.path("fifo")), 400, "not a regular file", ""},
		{"unknown user", e.filesURL("path", "x", "username", "no-such-user"), 401, "error looking up user 'no-such-user': ", ""},
		{"empty file", e.filesURL("path", e.path("empty")), 200, "", ""},
		{"procfs file of size 0", e.filesURL("path", "/proc/self/status"), 200, "", "Name:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, http.MethodGet, tc.url, nil, nil)
			if tc.status != 200 {
				wantError(t, resp.StatusCode, string(body), tc.status, tc.msg)
				if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
					t.Errorf("error Content-Type %q", ct)
				}
				return
			}
			if resp.StatusCode != 200 || !strings.HasPrefix(string(body), tc.body) {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
		})
	}
}

func TestFilesAuth(t *testing.T) {
	e := newFSEnv(t)
	const token = "tok3n"
	p := e.path("secret.txt")
	writeFile(t, p, "data")
	e.setToken(t, token)

	exp := func(d time.Duration) *int64 { v := time.Now().Add(d).Unix(); return &v }
	signed := func(op, user string, expiration *int64) string {
		return e.url + "/files?" + envd.SignedFilesQuery(p, op, user, token, expiration)
	}
	withSig := func(sig string) string { return e.filesURL("path", p, "signature", sig) }

	tests := []struct {
		name   string
		url    string
		hdr    map[string]string
		status int
		msg    string
	}{
		{"header matches", e.filesURL("path", p), map[string]string{"X-Access-Token": token}, 200, ""},
		{"header mismatch", e.filesURL("path", p), map[string]string{"X-Access-Token": "nope"}, 401, "access token present in header but does not match"},
		{"no signature", e.filesURL("path", p), nil, 401, "missing signature query parameter"},
		{"invalid signature", withSig("v1_invalid"), nil, 401, "invalid signature"},
		{"signature for another path", e.filesURL("path", p+"x", "signature", envd.FileSignature(p, "read", "", token, nil)), nil, 401, "invalid signature"},
		{"signature of the other operation", signed("write", "", nil), nil, 401, "invalid signature"},
		{"expired signature", signed("read", "", exp(-time.Minute)), nil, 401, "signature is already expired"},
		{"valid signature", signed("read", "", nil), nil, 200, ""},
		{"valid signature with expiration", signed("read", "root", exp(time.Minute)), nil, 200, ""},
	}
	for _, tc := range tests {
		t.Run("download "+tc.name, func(t *testing.T) {
			resp, body := do(t, http.MethodGet, tc.url, nil, tc.hdr)
			if tc.status != 200 {
				wantError(t, resp.StatusCode, string(body), tc.status, tc.msg)
				if want := fmt.Sprintf(`{"code":401,"message":%q}`, tc.msg); strings.TrimSpace(string(body)) != want {
					t.Errorf("body %s, want %s", body, want)
				}
				return
			}
			if resp.StatusCode != 200 || string(body) != "data" {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
		})
	}

	upTests := []struct {
		name   string
		url    string
		status int
		msg    string
	}{
		{"expired", signed("write", "", exp(-time.Second)), 401, "signature is already expired"},
		{"read signature", signed("read", "", nil), 401, "invalid signature"},
		{"valid", signed("write", "", exp(time.Minute)), 200, ""},
	}
	for _, tc := range upTests {
		t.Run("upload "+tc.name, func(t *testing.T) {
			st, body := e.upload(t, tc.url, nil, part{"file", "", "new data"})
			if tc.status != 200 {
				wantError(t, st, body, tc.status, tc.msg)
				return
			}
			if r := decodeReply(t, body); st != 200 || r[0].Path != p {
				t.Fatalf("%d %s", st, body)
			}
		})
	}

	// /files/compose is not exempt from the access token.
	st, body := e.post(t, "/files/compose", "application/json", `{"source_paths":["`+p+`"],"destination":"`+p+`2"}`, nil)
	wantError(t, st, body, 401, "unauthorized access")
}

func TestFilesCompose(t *testing.T) {
	e := newFSEnv(t)
	writeFile(t, e.path("p1"), "hello ")
	writeFile(t, e.path("p2"), "world")
	writeFile(t, e.path("dst.txt"), "old")

	st, body := e.post(t, "/files/compose", "application/json",
		`{"source_paths":["`+e.path("p1")+`","`+e.path("p2")+`"],"destination":"`+e.path("out", "dst.txt")+`"}`, nil)
	if st != 200 {
		t.Fatalf("compose: %d %s", st, body)
	}
	var r struct{ Path, Name, Type string }
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Path != e.path("out", "dst.txt") || r.Name != "dst.txt" || r.Type != "file" {
		t.Fatalf("reply %s", body)
	}
	if b, _ := os.ReadFile(e.path("out", "dst.txt")); string(b) != "hello world" {
		t.Errorf("composed %q", b)
	}
	for _, s := range []string{"p1", "p2"} {
		if _, err := os.Stat(e.path(s)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("source %s not removed", s)
		}
	}

	// The destination may be one of the sources.
	writeFile(t, e.path("tail"), "!")
	st, body = e.post(t, "/files/compose", "application/json",
		`{"source_paths":["`+e.path("dst.txt")+`","`+e.path("tail")+`"],"destination":"`+e.path("dst.txt")+`","username":"root"}`, nil)
	if b, _ := os.ReadFile(e.path("dst.txt")); st != 200 || string(b) != "old!" {
		t.Errorf("self compose: %d %s, file %q", st, body, b)
	}

	tests := []struct {
		name, body string
		status     int
		msg        string
	}{
		{"bad json", `{`, 400, "invalid JSON"},
		{"no sources", `{"source_paths":[],"destination":"` + e.path("x") + `"}`, 400, "required"},
		{"missing source", `{"source_paths":["` + e.path("nope") + `"],"destination":"` + e.path("x") + `"}`, 404, "does not exist"},
		{"unknown user", `{"source_paths":["a"],"destination":"b","username":"no-such-user"}`, 401, "error looking up user"},
	}
	for _, tc := range tests {
		st, body := e.post(t, "/files/compose", "application/json", tc.body, nil)
		wantError(t, st, body, tc.status, tc.msg)
	}
	entries, _ := os.ReadDir(e.dir)
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	if strings.Join(names, " ") != "dst.txt out" {
		t.Errorf("scratch dir holds %v, want the destinations only", names)
	}
}

func TestFilesDiskFull(t *testing.T) {
	e := newFSEnv(t)
	fi, err := os.Stat("/dev/full")
	requireCond(t, err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Geteuid() == 0, "/dev/full is missing")
	resp, body := do(t, http.MethodPost, e.filesURL("path", "/dev/full", "username", "root"), bytes.NewReader([]byte("data")),
		map[string]string{"Content-Type": "application/octet-stream"})
	wantError(t, resp.StatusCode, string(body), 507, "not enough disk space available")
}

func TestFilesWatchSeesOverwrite(t *testing.T) {
	e := newFSEnv(t)
	p := e.path("watched", "file.txt")
	writeFile(t, p, "first version")
	ws := e.watch(t, as(&pb.WatchDirRequest{Path: e.path("watched")}, ""))

	if st, body := e.upload(t, e.filesURL("path", p), nil, part{"file", "", "second"}); st != 200 {
		t.Fatalf("upload: %d %s", st, body)
	}
	ws.next(t, isEvent("file.txt", pb.EventType_EVENT_TYPE_WRITE))

	// The same content again still counts as a write.
	writeFile(t, e.path("watched", "same.txt"), "same")
	ws.next(t, isEvent("same.txt", pb.EventType_EVENT_TYPE_WRITE))
	if st, body := e.upload(t, e.filesURL("path", e.path("watched", "same.txt")), nil, part{"file", "", "same"}); st != 200 {
		t.Fatalf("upload: %d %s", st, body)
	}
	ws.next(t, isEvent("same.txt", pb.EventType_EVENT_TYPE_WRITE))
}
