package agentreg_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/hostapi"
)

// env is a fake control plane, a fake host and a client's directory.
type env struct {
	t     *testing.T
	ca    *testCA
	clock *fakeClock
	cp    *fakeCP
	host  *fakeHost
	dir   string
	logs  *bytes.Buffer
}

func newEnv(t *testing.T) *env {
	clock := newFakeClock()
	ca := newTestCA(t, "capsule test CA")
	e := &env{t: t, ca: ca, clock: clock, cp: newFakeCP(t, ca, clock), dir: filepath.Join(t.TempDir(), "agent"),
		logs: &bytes.Buffer{},
		host: &fakeHost{report: agentreg.Report{Total: hostapi.Resources{VCPUs: 8, MemoryMB: 4096, DiskMB: 10000},
			Used: hostapi.Resources{VCPUs: 2, MemoryMB: 512, DiskMB: 2000}, Running: 2, Sandboxes: 2}}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("client logs:\n%s", e.logs.String())
		}
	})
	return e
}

func (e *env) config() agentreg.Config {
	return agentreg.Config{
		ControlPlane: e.cp.srv.URL, HTTPClient: e.cp.srv.Client(), Dir: e.dir, Host: e.host, Clock: e.clock,
		Facts:   agentreg.Facts{Arch: "amd64", VCPUs: 2, MemoryMB: 4096, DiskMB: 20000, Address: "127.0.0.1:7443"},
		Version: "test", Log: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func (e *env) open(t *testing.T, mutate ...func(*agentreg.Config)) *agentreg.Client {
	t.Helper()
	cfg := e.config()
	for _, m := range mutate {
		m(&cfg)
	}
	c, err := agentreg.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) registered(t *testing.T) *agentreg.Client {
	t.Helper()
	c := e.open(t)
	if err := c.EnsureRegistered(context.Background(), "reg-token-1"); err != nil {
		t.Fatal(err)
	}
	return c
}

func beat(t *testing.T, c *agentreg.Client, want error) time.Duration {
	t.Helper()
	next, err := c.Beat(context.Background())
	if (want == nil && err != nil) || (want != nil && !errors.Is(err, want)) {
		t.Fatalf("beat: %v, want %v", err, want)
	}
	return next
}

func (e *env) lastBeatToken() string {
	var tok string
	e.cp.get(func(f *fakeCP) { tok = f.beatTokens[len(f.beatTokens)-1] })
	return tok
}

func TestRegistrationAndRestart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var first *agentreg.Client
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"without credentials or token it is not registered", func(t *testing.T) {
			c := e.open(t)
			if err := c.EnsureRegistered(ctx, ""); !errors.Is(err, agentreg.ErrNotRegistered) {
				t.Fatalf("EnsureRegistered without a token: %v", err)
			}
		}},
		{"a wrong token is refused and stores nothing", func(t *testing.T) {
			c := e.open(t)
			if err := c.EnsureRegistered(ctx, "not-a-token"); err == nil {
				t.Fatal("a wrong token registered")
			}
			if entries, _ := os.ReadDir(e.dir); len(entries) != 0 {
				t.Fatalf("files after a refused registration: %v", entries)
			}
		}},
		{"register writes 0600 files in a 0700 directory", func(t *testing.T) {
			first = e.registered(t)
			if first.HostID() != "host-0123" {
				t.Fatalf("host ID %q", first.HostID())
			}
			fi, err := os.Stat(e.dir)
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("directory: %v %v", fi.Mode(), err)
			}
			entries, _ := os.ReadDir(e.dir)
			if len(entries) != 3 {
				t.Fatalf("files: %v (temporary files left?)", entries)
			}
			for _, name := range []string{agentreg.CredentialsFile, agentreg.ServerCertFile, agentreg.CAFile} {
				fi, err := os.Stat(filepath.Join(e.dir, name))
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Fatalf("%s: %v %v", name, fi.Mode(), err)
				}
			}
			key, _ := os.ReadFile(filepath.Join(e.dir, agentreg.ServerCertFile))
			if !bytes.Contains(key, []byte("PRIVATE KEY")) {
				t.Fatal("the server key is not stored")
			}
			beat(t, first, nil)
		}},
		{"a restart reloads them and ignores a token passed again", func(t *testing.T) {
			c := e.open(t)
			if !c.Registered() || c.HostID() != "host-0123" {
				t.Fatal("a restarted client is not registered")
			}
			// The token is spent: were it sent, the fake would answer 409.
			if err := c.EnsureRegistered(ctx, "reg-token-1"); err != nil {
				t.Fatal(err)
			}
			var n int
			e.cp.get(func(f *fakeCP) { n = f.registers })
			if n != 1 {
				t.Fatalf("%d registrations, want 1", n)
			}
			if !bytes.Contains(e.logs.Bytes(), []byte("registration token is ignored")) {
				t.Fatal("no log line says the token was ignored")
			}
			if c.ServerCertificate().SerialNumber.Cmp(first.ServerCertificate().SerialNumber) != 0 {
				t.Fatal("the restarted client serves another certificate")
			}
			beat(t, c, nil)
		}},
		{"files readable by others are refused", func(t *testing.T) {
			p := filepath.Join(e.dir, agentreg.CredentialsFile)
			if err := os.Chmod(p, 0o644); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(p, 0o600)
			if _, err := agentreg.Open(e.config()); err == nil {
				t.Fatal("a 0644 credentials file was accepted")
			}
		}},
		{"with its files missing a token registers again", func(t *testing.T) {
			if err := os.Remove(filepath.Join(e.dir, agentreg.ServerCertFile)); err != nil {
				t.Fatal(err)
			}
			c := e.open(t)
			if c.Registered() {
				t.Fatal("registered without its certificate")
			}
			e.cp.set(func(f *fakeCP) { f.regTokens["reg-token-2"] = true })
			if err := c.EnsureRegistered(ctx, "reg-token-2"); err != nil {
				t.Fatal(err)
			}
			beat(t, c, nil)
		}},
		{"a spent token is refused", func(t *testing.T) {
			if err := os.RemoveAll(e.dir); err != nil {
				t.Fatal(err)
			}
			if err := e.open(t).EnsureRegistered(ctx, "reg-token-1"); err == nil {
				t.Fatal("a spent token registered")
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

func TestCredentials(t *testing.T) {
	e := newEnv(t)
	c := e.registered(t)
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a heartbeat reports the host", func(t *testing.T) {
			beat(t, c, nil)
			var hb hostapi.Heartbeat
			e.cp.get(func(f *fakeCP) { hb = f.beats[len(f.beats)-1] })
			if hb.Total.VCPUs != 8 || hb.Used.MemoryMB != 512 || hb.Running != 2 || hb.Sandboxes != 2 || hb.Version != "test" || hb.CSR != "" {
				t.Fatalf("heartbeat %+v", hb)
			}
		}},
		{"a 401 heartbeat refreshes and the new token is used", func(t *testing.T) {
			before := e.lastBeatToken()
			e.cp.inject(hostapi.PathHeartbeat, 401)
			beat(t, c, nil)
			after := e.lastBeatToken()
			if after == before {
				t.Fatal("the heartbeat after the refresh used the old access token")
			}
			stored, _ := os.ReadFile(filepath.Join(e.dir, agentreg.CredentialsFile))
			if !bytes.Contains(stored, []byte(after)) {
				t.Fatal("the refreshed credentials were not stored")
			}
			// A restart uses them.
			beat(t, e.open(t), nil)
			if e.lastBeatToken() != after {
				t.Fatal("a restart did not use the refreshed token")
			}
		}},
		{"a 403 heartbeat refreshes too", func(t *testing.T) {
			before := e.lastBeatToken()
			e.cp.inject(hostapi.PathHeartbeat, 403)
			beat(t, c, nil)
			if e.lastBeatToken() == before {
				t.Fatal("no refresh after a 403")
			}
		}},
		{"an access token near its expiry is refreshed before the beat", func(t *testing.T) {
			var n0, n1 int
			e.cp.get(func(f *fakeCP) { n0 = f.refreshes })
			e.clock.Advance(hostapi.AccessTokenTTL * 3 / 4)
			beat(t, c, nil)
			e.cp.get(func(f *fakeCP) { n1 = f.refreshes })
			if n1 != n0+1 {
				t.Fatalf("%d refreshes, want 1", n1-n0)
			}
		}},
		{"a crash between the refresh answer and its storage does not lock the host out", func(t *testing.T) {
			stored, _ := os.ReadFile(filepath.Join(e.dir, agentreg.CredentialsFile))
			crashed := e.open(t, func(cfg *agentreg.Config) {
				agentreg.SetBeforeStore(cfg, func() error { return errors.New("crash") })
			})
			e.cp.inject(hostapi.PathHeartbeat, 401)
			if _, err := crashed.Beat(context.Background()); err == nil {
				t.Fatal("the crashed beat succeeded")
			}
			if now, _ := os.ReadFile(filepath.Join(e.dir, agentreg.CredentialsFile)); !bytes.Equal(now, stored) {
				t.Fatal("the credentials changed although the agent died before storing them")
			}
			// The restarted agent has the previous tokens: its access
			// token is refused, its refresh token accepted once more.
			restarted := e.open(t)
			e.cp.inject(hostapi.PathHeartbeat, 401)
			beat(t, restarted, nil)
			beat(t, restarted, nil)
			if p, _ := e.host.counts(); p != 0 {
				t.Fatalf("sandboxes paused %d times", p)
			}
			c = restarted
		}},
		{"a refused refresh pauses the sandboxes once and backs off", func(t *testing.T) {
			// The fake revokes the whole family as a replayed token would.
			e.cp.set(func(f *fakeCP) { f.revokeFamily() })
			var nexts []time.Duration
			for range 4 {
				next, err := c.Beat(context.Background())
				if !errors.Is(err, agentreg.ErrUnauthenticated) {
					t.Fatalf("beat: %v, want ErrUnauthenticated", err)
				}
				nexts = append(nexts, next)
			}
			if p, _ := e.host.counts(); p != 1 {
				t.Fatalf("PauseAll called %d times, want 1", p)
			}
			for i := 1; i < len(nexts); i++ {
				if nexts[i] <= nexts[i-1] && nexts[i] < agentreg.MaxLockedOutBackoff {
					t.Fatalf("no back-off: %v", nexts)
				}
			}
			if !bytes.Contains(e.logs.Bytes(), []byte("a new registration token is needed")) {
				t.Fatal("the logs do not say a new registration token is needed")
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

func TestOutageAndDeletion(t *testing.T) {
	e := newEnv(t)
	c := e.registered(t)
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"two unreachable beats pause nothing", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.down = true })
			beat(t, c, agentreg.ErrUnreachable)
			e.cp.set(func(f *fakeCP) { f.down = false })
			e.cp.inject(hostapi.PathHeartbeat, 503)
			beat(t, c, agentreg.ErrUnreachable)
			if p, _ := e.host.counts(); p != 0 {
				t.Fatalf("paused after 2 missed beats")
			}
		}},
		{"the third pauses every running sandbox, once", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.down = true })
			beat(t, c, agentreg.ErrUnreachable)
			beat(t, c, agentreg.ErrUnreachable)
			beat(t, c, agentreg.ErrUnreachable)
			if p, d := e.host.counts(); p != 1 || d != 0 {
				t.Fatalf("PauseAll %d times, DestroyAll %d, want 1 and 0", p, d)
			}
		}},
		{"when it comes back the beat reports them paused", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.down = false })
			beat(t, c, nil)
			var hb hostapi.Heartbeat
			e.cp.get(func(f *fakeCP) { hb = f.beats[len(f.beats)-1] })
			if hb.Running != 0 || hb.Paused != 2 {
				t.Fatalf("heartbeat after the outage: %+v", hb)
			}
		}},
		{"a new outage pauses again", func(t *testing.T) {
			e.cp.inject(hostapi.PathHeartbeat, cut, cut, cut)
			for range 3 {
				beat(t, c, agentreg.ErrUnreachable)
			}
			if p, _ := e.host.counts(); p != 2 {
				t.Fatalf("PauseAll %d times, want 2", p)
			}
			beat(t, c, nil)
		}},
		{"a 404 that is not the API's destroys nothing", func(t *testing.T) {
			// Something else at the URL (a proxy's own 404 page).
			stray := newFakeCP(t, e.ca, e.clock)
			stray.srv.Config.Handler = http.NotFoundHandler()
			sc := e.open(t, func(cfg *agentreg.Config) { cfg.ControlPlane = stray.srv.URL; cfg.HTTPClient = stray.srv.Client() })
			if _, err := sc.Beat(context.Background()); err == nil || errors.Is(err, agentreg.ErrHostDeleted) {
				t.Fatalf("a plain 404: %v", err)
			}
			if _, d := e.host.counts(); d != 0 {
				t.Fatal("a plain 404 destroyed the sandboxes")
			}
		}},
		{"a 404 destroys every sandbox and Run exits", func(t *testing.T) {
			e.cp.set(func(f *fakeCP) { f.deleted = true })
			err := c.Run(context.Background())
			if !errors.Is(err, agentreg.ErrHostDeleted) {
				t.Fatalf("Run: %v, want ErrHostDeleted", err)
			}
			if _, d := e.host.counts(); d != 1 {
				t.Fatalf("DestroyAll %d times, want 1", d)
			}
			if entries, _ := os.ReadDir(e.dir); len(entries) != 0 {
				t.Fatalf("credentials left after the deletion: %v", entries)
			}
			if e.open(t).Registered() {
				t.Fatal("a restart still holds credentials")
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

// TestRunInterval: Run beats at once, then every interval (the default,
// then the one the control plane answers), by the injected clock.
func TestRunInterval(t *testing.T) {
	e := newEnv(t)
	c := e.registered(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	beats := func() int {
		var n int
		e.cp.get(func(f *fakeCP) { n = len(f.beats) })
		return n
	}
	if d := <-e.clock.asked; d != hostapi.HeartbeatInterval {
		t.Fatalf("first wait %v, want %v", d, hostapi.HeartbeatInterval)
	}
	if n := beats(); n != 1 {
		t.Fatalf("%d beats before the first wait, want 1", n)
	}
	e.cp.set(func(f *fakeCP) { f.interval = 7 })
	e.clock.Advance(hostapi.HeartbeatInterval)
	if d := <-e.clock.asked; d != 7*time.Second {
		t.Fatalf("wait %v after an answer of 7 s", d)
	}
	if n := beats(); n != 2 {
		t.Fatalf("%d beats, want 2", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// dialServed connects to an mTLS server as the control plane and returns
// the serial of the certificate it serves.
func dialServed(t *testing.T, addr string, ca *testCA, clientCert tls.Certificate, now func() time.Time) (string, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert},
		ServerName: "127.0.0.1", Time: now})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	// TLS 1.3: the server's verdict on the client certificate arrives
	// with the first read.
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 1)
	if _, err := conn.Read(buf); err != nil {
		return "", err
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}
