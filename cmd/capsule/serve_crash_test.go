package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/testenv"
)

// The tests of this file run the real `capsule serve` binary (built from
// this tree, with its envd) as a child process, so that it can be killed
// with SIGKILL. Their network slot pools are hosttest.CrashPool and
// hosttest.KillPool.

var (
	serveBinOnce sync.Once
	serveBinDir  string
	serveBinErr  error
)

// serveBinary builds bin/capsule and bin/envd of this tree once per run.
func serveBinary(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "qemu-img")
	serveBinOnce.Do(func() {
		serveBinDir, serveBinErr = os.MkdirTemp("", "capsule-crash-bin-")
		if serveBinErr != nil {
			return
		}
		for _, b := range []struct{ out, pkg, cgo string }{
			{"capsule", "github.com/capsulehq/capsule/cmd/capsule", "1"},
			{"envd", "github.com/capsulehq/capsule/cmd/envd", "0"},
		} {
			cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(serveBinDir, b.out), b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
			if out, err := cmd.CombinedOutput(); err != nil {
				serveBinErr = fmt.Errorf("build %s: %v: %s", b.out, err, out)
				return
			}
		}
	})
	if serveBinErr != nil {
		t.Fatal(serveBinErr)
	}
	return filepath.Join(serveBinDir, "capsule")
}

// serveDirs is the data and run directories of one platform, which
// several serve processes in turn (or at once) may use.
type serveDirs struct {
	root, data, run string
	// pool is the network slot pool (hosttest.CrashPool unless a test
	// sets its own, to run beside the others).
	pool hosttest.Pool
	// listenHost is the API's address (127.0.0.1 unless set); args are
	// added to serve's.
	listenHost string
	args       []string
}

func newServeDirs(t *testing.T) *serveDirs {
	t.Helper()
	root, err := os.MkdirTemp("", "capsule-crash-")
	if err != nil {
		t.Fatal(err)
	}
	// The embedded PostgreSQL runs as its own user.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &serveDirs{root: root, data: filepath.Join(root, "data"), run: filepath.Join(root, "run"),
		pool: hosttest.CrashPool}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(root)
		}
	})
	return d
}

// serveProc is one running `capsule serve`.
type serveProc struct {
	t   *testing.T
	cmd *exec.Cmd
	url string
	// sandboxURL is its sandbox traffic listener (-sandbox-listen).
	sandboxURL string
	log        *bytes.Buffer
	done       chan struct{}
	err        error
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs `capsule serve` on d without waiting for it.
func (d *serveDirs) start(t *testing.T, bin string) *serveProc {
	t.Helper()
	port, sport := freeTCPPort(t), freeTCPPort(t)
	p := &serveProc{t: t, url: fmt.Sprintf("http://127.0.0.1:%d", port), sandboxURL: fmt.Sprintf("http://127.0.0.1:%d", sport),
		log: &bytes.Buffer{}, done: make(chan struct{})}
	listen := d.listenHost
	if listen == "" {
		listen = "127.0.0.1"
	}
	args := []string{"serve", "-listen", fmt.Sprintf("%s:%d", listen, port), "-sandbox-listen", fmt.Sprintf("127.0.0.1:%d", sport),
		"-data-dir", d.data, "-run-dir", d.run, "-images-dir", hosttest.StoreDir,
		"-base=false", "-warm-images=false", "-domain", "crash.test",
		"-net-name", d.pool.Name, "-net-host-cidr", d.pool.HostCIDR.String(),
		"-net-link-cidr", d.pool.LinkCIDR.String(), "-net-max-slots", "8",
		"-max-vcpus", "8", "-max-memory-mb", "2048"}
	p.cmd = exec.Command(bin, append(args, d.args...)...)
	p.cmd.Env = append(os.Environ(), "CAPSULE_CONFIG=/dev/null")
	p.cmd.Stdout, p.cmd.Stderr = syncWriter(p.log), syncWriter(p.log)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop() })
	return p
}

var logMu sync.Mutex

type lockedWriter struct{ w io.Writer }

func (l lockedWriter) Write(b []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return l.w.Write(b)
}

func syncWriter(w io.Writer) io.Writer { return lockedWriter{w} }

func (p *serveProc) logText() string {
	logMu.Lock()
	defer logMu.Unlock()
	return p.log.String()
}

// waitHealthy waits until the API answers /healthz (the first start
// builds the minimal image when the shared store lacks this envd's).
func (p *serveProc) waitHealthy(ctx context.Context) {
	p.t.Helper()
	for {
		select {
		case <-p.done:
			p.t.Fatalf("capsule serve exited during startup (%v):\n%s", p.err, p.logText())
		case <-ctx.Done():
			p.t.Fatalf("capsule serve did not become healthy:\n%s", p.logText())
		case <-time.After(200 * time.Millisecond):
		}
		if resp, err := http.Get(p.url + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *serveProc) wait(ctx context.Context) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-ctx.Done():
		p.t.Fatalf("capsule serve did not exit:\n%s", p.logText())
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill9 kills the process with SIGKILL.
func (p *serveProc) kill9() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop stops the process as an operator does (SIGTERM), SIGKILL after
// two minutes.
func (p *serveProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(2 * time.Minute):
		p.kill9()
	}
}

// apiKey reads the admin's API key that the first start wrote.
func (d *serveDirs) apiKey(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.data, "admin.json"))
	if err != nil {
		t.Fatal(err)
	}
	var a adminFile
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	return a.APIKey
}

// call sends a JSON request to the API and decodes the answer into out
// (when not nil); it returns the status.
func (p *serveProc) call(t *testing.T, ctx context.Context, key, method, path string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	if resp.StatusCode >= 300 && out != nil {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// TestSecondServeOnADataDirInUse: a second `capsule serve` on the data
// directory of a running one exits at once, non-zero, naming the first's
// PID, and changes nothing: the first keeps answering and its database
// keeps working.
func TestSecondServeOnADataDirInUse(t *testing.T) {
	bin := serveBinary(t)
	d := newServeDirs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	first := d.start(t, bin)
	first.waitHealthy(ctx)
	key := d.apiKey(t)
	pgPID, _ := os.ReadFile(filepath.Join(d.data, "postgres", "postmaster.pid"))

	var second *serveProc
	t.Run("second instance refused", func(t *testing.T) {
		second = d.start(t, bin)
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		defer wcancel()
		if code := second.wait(wctx); code == 0 {
			t.Fatalf("second serve exited 0:\n%s", second.logText())
		}
		want := fmt.Sprintf("is in use by process %d", first.cmd.Process.Pid)
		if !strings.Contains(second.logText(), want) {
			t.Fatalf("second serve's message lacks %q:\n%s", want, second.logText())
		}
	})
	t.Run("first instance unharmed", func(t *testing.T) {
		resp, err := http.Get(first.url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("first serve /healthz: %d", resp.StatusCode)
		}
		var list map[string]any
		if code := first.call(t, ctx, key, "GET", "/v1/sandboxes", nil, &list); code != http.StatusOK {
			t.Fatalf("first serve's database: GET /v1/sandboxes: %d", code)
		}
		if now, _ := os.ReadFile(filepath.Join(d.data, "postgres", "postmaster.pid")); !bytes.Equal(now, pgPID) {
			t.Fatalf("postmaster.pid changed:\n%s\nthen\n%s", pgPID, now)
		}
	})
	first.stop()
	if code := first.wait(ctx); code != 0 {
		t.Fatalf("first serve exited %d:\n%s", code, first.logText())
	}
}

// crashSandbox is what the API says of a sandbox.
type crashSandbox struct {
	ID              string `json:"id"`
	State           string `json:"state"`
	StateReason     string `json:"state_reason"`
	EnvdAccessToken string `json:"envd_access_token"`
	EnvdURL         string `json:"envd_url"`
}

// execIn runs cmd in sandbox id through the API and returns its stdout.
func (p *serveProc) execIn(t *testing.T, ctx context.Context, key, id, cmd string) string {
	t.Helper()
	var res struct {
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
		ExitCode int    `json:"exit_code"`
	}
	if code := p.call(t, ctx, key, "POST", "/v1/sandboxes/"+id+"/exec", map[string]any{"cmd": cmd, "timeout_sec": 60}, &res); code != http.StatusOK {
		t.Fatalf("exec %q in %s: status %d", cmd, id, code)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q in %s: exit %d: %s%s", cmd, id, res.ExitCode, res.Stdout, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

// proxyFile reads a file of sandbox id through the traffic proxy (envd's
// /files, authorized by the sandbox's envd access token).
func (p *serveProc) proxyFile(t *testing.T, ctx context.Context, sb crashSandbox, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.sandboxURL+"/files?username=root&path="+path, nil)
	req.Host = "49983-" + sb.ID + ".crash.test"
	req.Header.Set("X-Access-Token", sb.EnvdAccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestServeKilledKeepsSandboxesRunning: `capsule serve` is killed with
// SIGKILL while it runs two sandboxes (one counting in memory, one with a
// synced file) and started again on the same directories: the sandboxes
// are running, the counter kept counting, the file is there, exec and the
// proxy work; after a final stop nothing is left (VMMs, namespaces).
func TestServeKilledKeepsSandboxesRunning(t *testing.T) {
	bin := serveBinary(t)
	d := newServeDirs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	first := d.start(t, bin)
	first.waitHealthy(ctx)
	key := d.apiKey(t)

	var counter, files crashSandbox
	for _, sb := range []*crashSandbox{&counter, &files} {
		if code := first.call(t, ctx, key, "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "timeout_sec": 3600}, sb); code != http.StatusCreated {
			t.Fatalf("create: %d\n%s", code, first.logText())
		}
	}
	first.execIn(t, ctx, key, counter.ID, `sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/c.tmp; mv /tmp/c.tmp /tmp/c; sleep 0.2; done' >/dev/null 2>&1 </dev/null &`)
	first.execIn(t, ctx, key, files.ID, "echo synced > /root/synced.txt; sync")
	before := 0
	for before < 3 {
		fmt.Sscan(first.execIn(t, ctx, key, counter.ID, "cat /tmp/c 2>/dev/null || echo 0"), &before)
	}
	first.kill9()

	second := d.start(t, bin)
	second.waitHealthy(ctx)
	if strings.Contains(second.logText(), "did not survive") {
		t.Errorf("the restarted agent lost a machine:\n%s", second.logText())
	}
	t.Run("sandboxes still running", func(t *testing.T) {
		for _, sb := range []crashSandbox{counter, files} {
			var got crashSandbox
			if code := second.call(t, ctx, key, "GET", "/v1/sandboxes/"+sb.ID, nil, &got); code != http.StatusOK || got.State != "running" {
				t.Fatalf("%s after the restart: %d %+v", sb.ID, code, got)
			}
		}
	})
	t.Run("counter kept counting", func(t *testing.T) {
		var now int
		fmt.Sscan(second.execIn(t, ctx, key, counter.ID, "cat /tmp/c"), &now)
		if now <= before {
			t.Fatalf("counter %d after the restart, %d before: memory lost or stopped", now, before)
		}
	})
	t.Run("synced file there", func(t *testing.T) {
		if got := second.execIn(t, ctx, key, files.ID, "cat /root/synced.txt"); got != "synced" {
			t.Fatalf("file: %q", got)
		}
	})
	t.Run("proxy and envd token work", func(t *testing.T) {
		code, body := second.proxyFile(t, ctx, files, "/root/synced.txt")
		if code != http.StatusOK || body != "synced" {
			t.Fatalf("through the proxy: %d %q", code, body)
		}
	})
	second.stop()
	if code := second.wait(ctx); code != 0 {
		t.Fatalf("serve exited %d:\n%s", code, second.logText())
	}
	t.Run("nothing left", func(t *testing.T) {
		if out, _ := exec.Command("pgrep", "-af", "qemu-system.*"+d.root).Output(); len(out) > 0 {
			t.Fatalf("VMMs left: %s", out)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), hosttest.CrashPool.Name+"-") {
			t.Fatalf("network namespaces left: %s", out)
		}
	})
}
