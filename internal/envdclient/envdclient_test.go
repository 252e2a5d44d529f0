package envdclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envd"
	"github.com/capsulehq/capsule/internal/envdclient"
)

func TestClientAgainstEnvd(t *testing.T) {
	srv := envd.New(envd.Config{})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c := envdclient.New(ts.URL, "tok")
	defer c.Close()
	if err := c.WaitHealthy(ctx, nil); err != nil {
		t.Fatal(err)
	}
	tok := "tok"
	if err := c.Init(ctx, envd.InitRequest{AccessToken: &tok, EnvVars: map[string]string{"A": "1"}}); err != nil {
		t.Fatal(err)
	}
	// Without the token nothing runs any more.
	if _, err := envdclient.New(ts.URL, "").Shell(ctx, "true"); err == nil {
		t.Fatal("a client without the token could run a command")
	}

	res, err := c.Shell(ctx, `echo "$A"; echo e >&2; exit 4`)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "1\n" || string(res.Stderr) != "e\n" || res.ExitCode != 4 {
		t.Fatalf("result %+v", res)
	}

	p := filepath.Join(t.TempDir(), "x.bin")
	data := bytes.Repeat([]byte{0, 1, 2, 255}, 1<<16)
	if err := c.WriteFile(ctx, p, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(ctx, p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, err %v", len(got), err)
	}
	if _, err := c.ReadFile(ctx, p+".missing"); err == nil {
		t.Fatal("reading a missing file succeeded")
	}
	if on, _ := os.ReadFile(p); !bytes.Equal(on, data) {
		t.Fatal("file on disk differs")
	}

	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUCount < 1 || m.MemTotal == 0 || m.MemUsed == 0 || m.MemUsed > m.MemTotal || m.DiskTotal == 0 || m.Timestamp == 0 {
		t.Fatalf("metrics %+v", m)
	}
	if _, err := envdclient.New(ts.URL, "wrong").Metrics(ctx); err == nil {
		t.Fatal("metrics without the token")
	}
}

func TestWaitHealthyAborts(t *testing.T) {
	c := envdclient.New("http://127.0.0.1:1", "")
	abort := make(chan struct{})
	close(abort)
	if err := c.WaitHealthy(context.Background(), abort); err == nil {
		t.Fatal("WaitHealthy returned nil for a dead machine")
	}
}

func TestInitRefusedIsNotRetried(t *testing.T) {
	srv := envd.New(envd.Config{})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok := "first"
	if err := envdclient.New(ts.URL, "").Init(ctx, envd.InitRequest{AccessToken: &tok}); err != nil {
		t.Fatal(err)
	}
	// A caller presenting another token is refused at once, not retried
	// until the deadline.
	began := time.Now()
	next := "second"
	if err := envdclient.New(ts.URL, "wrong").Init(ctx, envd.InitRequest{AccessToken: &next}); err == nil {
		t.Fatal("init with a wrong token succeeded")
	}
	if time.Since(began) > 5*time.Second {
		t.Fatalf("refused init took %v", time.Since(began))
	}
	// The holder of the current token may replace it.
	if err := envdclient.New(ts.URL, "first").Init(ctx, envd.InitRequest{AccessToken: &next}); err != nil {
		t.Fatal(err)
	}
}

// TestClientStreamedUpload uploads bodies of unknown length (a pipe fed in
// odd pieces, as the agent's WriteFile does): 64 MiB arrive byte for byte,
// and a body that fails midway leaves no file.
func TestClientStreamedUpload(t *testing.T) {
	srv := envd.New(envd.Config{})
	h := srv.Handler()
	uploaded := make(chan struct{}, 1) // an upload's handler returned
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.Method == http.MethodPost {
			uploaded <- struct{}{}
		}
	}))
	defer ts.Close()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := envdclient.New(ts.URL, "")
	defer c.Close()

	data := make([]byte, 64<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	feed := func(pw *io.PipeWriter, upTo int, end error) {
		sizes := []int{1, 7 << 10, 256 << 10, 300<<10 + 3}
		for off, i := 0, 0; off < upTo; i++ {
			n := min(sizes[i%len(sizes)], upTo-off)
			if _, err := pw.Write(data[off : off+n]); err != nil {
				return
			}
			off += n
		}
		pw.CloseWithError(end)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		upTo int
		end  error
	}{
		{"whole", len(data), nil},
		{"fails midway", 5 << 20, errors.New("sender gave up")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			pr, pw := io.Pipe()
			go feed(pw, tc.upTo, tc.end)
			got, err := c.Upload(ctx, p, "", pr)
			pr.CloseWithError(errors.New("upload returned"))
			<-uploaded
			if tc.end != nil {
				if err == nil {
					t.Fatal("an upload whose body failed succeeded")
				}
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Fatalf("after the failed upload: stat %v, want no file", err)
				}
				return
			}
			if err != nil || got != p {
				t.Fatalf("upload: %q, %v", got, err)
			}
			rc, size, err := c.Open(ctx, p, "")
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			back, err := io.ReadAll(rc)
			if err != nil || size != int64(len(data)) || !bytes.Equal(back, data) {
				t.Fatalf("read back %d bytes (size %d), equal %v, %v", len(back), size, bytes.Equal(back, data), err)
			}
		})
	}
}

// TestInitRetryCarriesTheTimeItIsSent: an /init that has to be retried
// (envd not answering yet after a restore; injected here by a front that
// drops the first attempts) carries the time of the attempt that is
// accepted, not the first one's: the guest's clock would otherwise be set
// behind by the retries.
func TestInitRetryCarriesTheTimeItIsSent(t *testing.T) {
	srv := envd.New(envd.Config{})
	defer srv.Close()
	inner := srv.Handler()
	var dropped int
	var got time.Time
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/init" && dropped < 3 {
			dropped++
			http.Error(w, "not yet", http.StatusBadGateway)
			return
		}
		if r.URL.Path == "/init" {
			var req envd.InitRequest
			b, _ := io.ReadAll(r.Body)
			if err := json.Unmarshal(b, &req); err != nil || req.Timestamp == nil {
				t.Errorf("init body %s: %v", b, err)
			} else {
				got = *req.Timestamp
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		inner.ServeHTTP(w, r)
	}))
	defer ts.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A timestamp in the past, as the agent's clock read before the
	// attempts began.
	stamp := time.Now().Add(-time.Hour).UTC()
	tok := "t"
	began := time.Now()
	if err := envdclient.New(ts.URL, "").Init(ctx, envd.InitRequest{AccessToken: &tok, Timestamp: &stamp}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if dropped != 3 {
		t.Fatalf("%d attempts dropped, want 3", dropped)
	}
	// Three retries wait at least 5, 10 and 20 ms: the accepted stamp
	// moved on by that much, and by no more than the whole call took.
	if moved := got.Sub(stamp); moved < 35*time.Millisecond || moved > took {
		t.Fatalf("the accepted /init carried the first stamp plus %v (the call took %v); want the retries' time", moved, took)
	}
}
