package envdclient_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
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
