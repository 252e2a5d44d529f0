package envd_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envd"
)

// pieces yields r in writes of the given sizes, cycling, so that the
// server's reads end at odd offsets of its buffers.
type pieces struct {
	r     io.Reader
	sizes []int
	i     int
}

func (p *pieces) Read(b []byte) (int, error) {
	n := p.sizes[p.i%len(p.sizes)]
	p.i++
	return p.r.Read(b[:min(n, len(b))])
}

// streamedMultipart encodes data as the single "file" part of a multipart
// body, produced while it is sent.
func streamedMultipart(data []byte, filename string) (contentType string, body io.Reader) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, filename))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err == nil {
			_, err = io.Copy(w, &pieces{r: bytes.NewReader(data), sizes: []int{1, 4093, 65537, 300 << 10}})
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	return mw.FormDataContentType(), pr
}

// TestFilesLargeRoundTrip moves 64 MiB through the upload and download
// paths: raw bodies with and without a length, in odd pieces, and a
// multipart body, each read back byte for byte.
func TestFilesLargeRoundTrip(t *testing.T) {
	e := newFSEnv(t)
	data := make([]byte, 64<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	// A boundary-like run inside the content must stay content.
	copy(data[1<<20:], "\r\n--notTheBoundary\r\n")
	for _, tc := range []struct {
		name string
		body func(p string) (contentType string, body io.Reader)
	}{
		{"raw with length", func(string) (string, io.Reader) {
			return "application/octet-stream", bytes.NewReader(data)
		}},
		{"raw chunked in odd pieces", func(string) (string, io.Reader) {
			return "application/octet-stream", &pieces{r: bytes.NewReader(data), sizes: []int{7 << 10, 1, 333 << 10, 65536}}
		}},
		{"multipart", func(p string) (string, io.Reader) { return streamedMultipart(data, p) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := e.path(tc.name, "big.bin")
			ct, body := tc.body(p)
			resp, reply := do(t, http.MethodPost, e.filesURL("path", p), body, map[string]string{"Content-Type": ct})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("upload: %d %s", resp.StatusCode, reply)
			}
			if r := decodeReply(t, string(reply)); len(r) != 1 || r[0].Path != p {
				t.Fatalf("reply %s", reply)
			}
			if stored, err := os.ReadFile(p); err != nil || !bytes.Equal(stored, data) {
				t.Fatalf("stored file: %d bytes, equal %v, %v", len(stored), bytes.Equal(stored, data), err)
			}
			resp, got := do(t, http.MethodGet, e.filesURL("path", p), nil, nil)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) || !bytes.Equal(got, data) {
				t.Fatalf("download: %d, length %q, %d bytes, equal %v", resp.StatusCode, resp.Header.Get("Content-Length"), len(got), bytes.Equal(got, data))
			}
		})
	}
}

// TestFilesInterruptedUploadLeavesNoFile cuts the connection of an upload
// after more than one copy buffer of its body reached the file: the file
// the upload created is gone when the handler returns.
func TestFilesInterruptedUploadLeavesNoFile(t *testing.T) {
	srv := envd.New(envd.Config{})
	t.Cleanup(srv.Close)
	handled := make(chan struct{}, 1)
	h := srv.Handler()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.Method == http.MethodPost {
			handled <- struct{}{}
		}
	}))
	t.Cleanup(ts.Close)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	if _, err := rand.Read(chunk); err != nil {
		t.Fatal(err)
	}
	const boundary = "cutHere"
	for _, tc := range []struct {
		name, contentType string
		prefix            string
		reset             bool // cut with a reset (RST) rather than a close (FIN)
	}{
		{"raw", "application/octet-stream", "", false},
		{"raw reset", "application/octet-stream", "", true},
		{"multipart", "multipart/form-data; boundary=" + boundary,
			"--" + boundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\nContent-Type: application/octet-stream\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name, "partial.bin")
			conn, err := net.Dial("tcp", ts.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			bw := bufio.NewWriter(conn)
			fmt.Fprintf(bw, "POST /files?path=%s HTTP/1.1\r\nHost: envd\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
				url.QueryEscape(p), tc.contentType, 64<<20, tc.prefix)
			for range 4 {
				bw.Write(chunk)
			}
			if err := bw.Flush(); err != nil {
				t.Fatal(err)
			}
			// The file exists and holds data before the cut.
			deadline := time.Now().Add(time.Minute)
			for {
				if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the upload never reached the file")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if tc.reset {
				if err := conn.(*net.TCPConn).SetLinger(0); err != nil {
					t.Fatal(err)
				}
			}
			conn.Close()
			<-handled
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("after the cut upload: stat %v, want no file", err)
			}
		})
	}
}

// TestFilesSplicedUpload drives large raw uploads of announced length,
// which envd splices from the socket into the file after taking the
// connection over, on a raw connection: the reply comes on it, says
// Connection: close and carries the headers set before (CORS); an Expect:
// 100-continue is answered; a body that ends short is a 400 on that
// connection and leaves no file; the file belongs to the upload's user; a
// small upload keeps the connection.
func TestFilesSplicedUpload(t *testing.T) {
	e := newFSEnv(t)
	data := make([]byte, 5<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	addr := e.url[len("http://"):]
	send := func(t *testing.T, conn net.Conn, p string, length int, extra string) {
		t.Helper()
		_, err := fmt.Fprintf(conn, "POST /files?path=%s HTTP/1.1\r\nHost: envd\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n",
			url.QueryEscape(p), length, extra)
		if err != nil {
			t.Fatal(err)
		}
	}
	dial := func(t *testing.T) (net.Conn, *bufio.Reader) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn, bufio.NewReader(conn)
	}
	readReply := func(t *testing.T, br *bufio.Reader) (*http.Response, string) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}
	stored := func(t *testing.T, p string, want []byte) {
		t.Helper()
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("stored file: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
		}
	}

	t.Run("expect 100-continue and CORS", func(t *testing.T) {
		conn, br := dial(t)
		p := e.path("continue", "big.bin")
		send(t, conn, p, len(data), "Expect: 100-continue\r\nOrigin: https://app.example\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("before the body: %v %v, want 100 Continue", resp, err)
		}
		if _, err := conn.Write(data); err != nil {
			t.Fatal(err)
		}
		resp, body := readReply(t, br)
		if resp.StatusCode != http.StatusOK || !resp.Close || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
			t.Fatalf("reply %d close=%v headers %v: %s", resp.StatusCode, resp.Close, resp.Header, body)
		}
		if r := decodeReply(t, body); len(r) != 1 || r[0].Path != p {
			t.Fatalf("reply %s", body)
		}
		stored(t, p, data)
	})
	t.Run("short body", func(t *testing.T) {
		conn, br := dial(t)
		p := e.path("short", "big.bin")
		send(t, conn, p, len(data), "")
		if _, err := conn.Write(data[:3<<20]); err != nil {
			t.Fatal(err)
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		resp, body := readReply(t, br)
		wantError(t, resp.StatusCode, body, http.StatusBadRequest, "cannot read request body: unexpected EOF")
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("after the short upload: stat %v, want no file", err)
		}
	})
	t.Run("owned by the user", func(t *testing.T) {
		u := otherUser(t)
		p := e.path("owned", "dir", "big.bin")
		resp, body := do(t, http.MethodPost, e.filesURL("path", p, "username", u.Username), bytes.NewReader(data),
			map[string]string{"Content-Type": "application/octet-stream"})
		if resp.StatusCode != http.StatusOK || !resp.Close {
			t.Fatalf("upload: %d close=%v: %s", resp.StatusCode, resp.Close, body)
		}
		stored(t, p, data)
		for _, q := range []string{e.path("owned"), e.path("owned", "dir"), p} {
			if uid, gid := owner(t, q); uid != u.Uid || gid != u.Gid {
				t.Errorf("%s owned by %s:%s, want %s:%s", q, uid, gid, u.Uid, u.Gid)
			}
		}
	})
	t.Run("small body keeps the connection", func(t *testing.T) {
		conn, br := dial(t)
		small := data[:64<<10]
		for i := range 2 {
			p := e.path("small", strconv.Itoa(i))
			send(t, conn, p, len(small), "")
			if _, err := conn.Write(small); err != nil {
				t.Fatal(err)
			}
			resp, body := readReply(t, br)
			if resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("upload %d: %d close=%v: %s", i, resp.StatusCode, resp.Close, body)
			}
			stored(t, p, small)
		}
	})
}
