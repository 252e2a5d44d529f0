package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestExecAndFilesRealVM: synchronous exec, the WebSocket exec stream and
// the file routes against one real VM ("minimal": busybox + envd) through
// one agent, whose network slot pool (ctb, 198.18.102.0/24 +
// 198.18.103.0/24) is its own.
func TestExecAndFilesRealVM(t *testing.T) {
	agentURL := hosttest.StartAgent(t, hosttest.APIExecPool).URL
	e := newAPI(t, agentURL, hosttest.AgentToken)
	f := &sbxFixture{apiEnv: e}
	var team string
	_, f.key, team = e.account(t, "exec@example.com")
	_, f.other, _ = e.account(t, "other@example.com")

	var sb sandboxJSON
	if c := e.do(t, "POST", "/v1/sandboxes", f.key, map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256}, &sb); c != 201 {
		t.Fatalf("create: %d", c)
	}
	t.Cleanup(func() { e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, f.key, nil, nil) })
	f.id = sb.ID
	// A paused sandbox of the same team, straight into the database.
	tid, err := wireid.Parse(wireid.Team, team)
	if err != nil {
		t.Fatal(err)
	}
	row, err := e.st.Queries().InsertSandbox(context.Background(), db.InsertSandboxParams{
		TeamID: tid, Template: "minimal", State: store.SandboxPaused, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.paused = service.ID(row.ID)

	t.Run("Exec", f.testExec)
	t.Run("ExecGoneKills", f.testExecGoneKills)
	t.Run("Stream", f.testStream)
	t.Run("Files", f.testFiles)
	t.Run("FilesRefused", f.testFilesRefused)
	t.Run("Watch", f.testWatch)
}

type sbxFixture struct {
	*apiEnv
	key, other string
	id, paused string
}

type execOut = execResultJSON

func (f *sbxFixture) exec(t *testing.T, body map[string]any) (int, execOut) {
	t.Helper()
	var out execOut
	c := f.do(t, "POST", "/v1/sandboxes/"+f.id+"/exec", f.key, body, &out)
	return c, out
}

// sh runs a shell command that must succeed and returns its stdout.
func (f *sbxFixture) sh(t *testing.T, cmd string) string {
	t.Helper()
	c, out := f.exec(t, map[string]any{"cmd": cmd})
	if c != 200 || out.ExitCode != 0 {
		t.Fatalf("%s: %d %+v", cmd, c, out)
	}
	return out.Stdout
}

func (f *sbxFixture) testExec(t *testing.T) {
	// 1 MiB of "y\n" to print many times (faster than generating it under
	// TCG).
	if resp, b := f.raw(t, "PUT", f.filesURL(f.id, "", "path", "/tmp/1m.txt"), f.key, "", strings.NewReader(strings.Repeat("y\n", 1<<19))); resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	for _, tc := range []struct {
		name  string
		body  map[string]any
		check func(execOut) bool
	}{
		{"stdout, stderr, exit code", map[string]any{"cmd": "echo out; echo err >&2; exit 3"},
			func(o execOut) bool {
				return o.Stdout == "out\n" && o.Stderr == "err\n" && o.ExitCode == 3 && !o.TimedOut && o.Signal == ""
			}},
		{"argv, env, cwd", map[string]any{"argv": []string{"sh", "-c", `echo "$FOO"; pwd`}, "env": map[string]string{"FOO": "a b"}, "cwd": "/tmp/../tmp"},
			func(o execOut) bool { return o.Stdout == "a b\n/tmp\n" && o.ExitCode == 0 }},
		{"default user", map[string]any{"cmd": "id -un"}, func(o execOut) bool { return o.Stdout == "root\n" }},
		{"user", map[string]any{"cmd": "id -un; pwd", "user": "user"}, func(o execOut) bool { return o.Stdout == "user\n/home/user\n" }},
		{"stdin", map[string]any{"argv": []string{"cat"}, "stdin": "hello\nworld"}, func(o execOut) bool { return o.Stdout == "hello\nworld" }},
		{"no stdin", map[string]any{"argv": []string{"cat"}}, func(o execOut) bool { return o.Stdout == "" && o.ExitCode == 0 }},
		{"killed by a signal", map[string]any{"cmd": "kill -TERM $$"},
			func(o execOut) bool { return o.Signal == "SIGTERM" && o.ExitCode == -1 && !o.TimedOut }},
		{"timeout", map[string]any{"cmd": "sleep 60", "timeout_sec": 1},
			func(o execOut) bool {
				return o.TimedOut && o.Signal == "SIGKILL" && o.DurationMS >= 1000 && o.DurationMS < 20000
			}},
		{"truncation", map[string]any{"cmd": "for i in 1 2 3 4 5 6 7 8 9; do cat /tmp/1m.txt; done; echo done >&2"},
			func(o execOut) bool {
				return o.Truncated && len(o.Stdout) == service.MaxExecOutput && strings.Trim(o.Stdout, "y\n") == "" && o.Stderr == "done\n" && o.ExitCode == 0
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, out := f.exec(t, tc.body)
			if c != 200 || !tc.check(out) {
				if len(out.Stdout) > 200 {
					out.Stdout = out.Stdout[:200] + "…"
				}
				t.Fatalf("%d %+v", c, out)
			}
		})
	}
	for _, tc := range []struct {
		name string
		id   string
		key  string
		body any
		want int
	}{
		{"cmd and argv", f.id, f.key, map[string]any{"cmd": "true", "argv": []string{"true"}}, 400},
		{"no command", f.id, f.key, map[string]any{}, 400},
		{"timeout too long", f.id, f.key, map[string]any{"cmd": "true", "timeout_sec": 3601}, 400},
		{"bad env name", f.id, f.key, map[string]any{"cmd": "true", "env": map[string]string{"A-B": "x"}}, 400},
		{"relative cwd", f.id, f.key, map[string]any{"cmd": "true", "cwd": "tmp"}, 400},
		{"bad user name", f.id, f.key, map[string]any{"cmd": "true", "user": "a:b"}, 400},
		{"unknown user", f.id, f.key, map[string]any{"cmd": "true", "user": "nosuchuser"}, 400},
		{"missing program", f.id, f.key, map[string]any{"argv": []string{"/no/such/program"}}, 400},
		{"unknown field", f.id, f.key, `{"command":"true"}`, 400},
		{"no auth", f.id, "", map[string]any{"cmd": "true"}, 401},
		{"another team", f.id, f.other, map[string]any{"cmd": "true"}, 404},
		{"not running", f.paused, f.key, map[string]any{"cmd": "true"}, 409},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var eb errorBody
			if c := f.do(t, "POST", "/v1/sandboxes/"+tc.id+"/exec", tc.key, tc.body, &eb); c != tc.want {
				t.Fatalf("%d %+v, want %d", c, eb, tc.want)
			}
			if tc.want == 409 && !strings.Contains(eb.Message, "paused") {
				t.Fatalf("the conflict does not name the state: %q", eb.Message)
			}
		})
	}
}

// waitDead polls until the guest process pid is gone.
func (f *sbxFixture) waitDead(t *testing.T, pid string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if out := f.sh(t, "kill -0 "+pid+" 2>/dev/null && echo alive || echo dead"); out == "dead\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s still runs after its client went away", pid)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// testExecGoneKills: a synchronous exec whose client goes away is killed.
func (f *sbxFixture) testExecGoneKills(t *testing.T) {
	f.sh(t, "rm -f /tmp/gone.pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := strings.NewReader(`{"cmd":"echo $$ > /tmp/gone.pid; exec sleep 600","timeout_sec":600}`)
	req, _ := http.NewRequestWithContext(ctx, "POST", f.srv.URL+"/v1/sandboxes/"+f.id+"/exec", body)
	req.Header.Set("X-API-Key", f.key)
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("the exec answered %d", resp.StatusCode)
		}
		done <- err
	}()
	var pid string
	for deadline := time.Now().Add(30 * time.Second); pid == ""; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the process did not start")
		}
		pid = strings.TrimSpace(f.sh(t, "cat /tmp/gone.pid 2>/dev/null || true"))
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	f.waitDead(t, pid)
}

type wsMsg struct {
	Type     string `json:"type"`
	PID      uint32 `json:"pid"`
	Data     []byte `json:"data"`
	ExitCode *int32 `json:"exit_code"`
	Signal   string `json:"signal"`
	TimedOut bool   `json:"timed_out"`
	Code     int    `json:"code"`
	Message  string `json:"message"`
}

type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
	ctx  context.Context
}

func (f *sbxFixture) dial(t *testing.T, id string, opts *websocket.DialOptions) (*wsClient, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if opts == nil {
		opts = &websocket.DialOptions{HTTPHeader: http.Header{"X-API-Key": {f.key}}}
	}
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.srv.URL, "http")+"/v1/sandboxes/"+id+"/exec/stream", opts)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { conn.CloseNow() })
	conn.SetReadLimit(4 << 20)
	return &wsClient{t: t, conn: conn, ctx: ctx}, resp, nil
}

func (c *wsClient) send(m map[string]any) {
	c.t.Helper()
	b, _ := json.Marshal(m)
	if err := c.conn.Write(c.ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("send %v: %v", m, err)
	}
}

func (c *wsClient) recv() wsMsg {
	c.t.Helper()
	typ, b, err := c.conn.Read(c.ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m wsMsg
	if typ != websocket.MessageText || json.Unmarshal(b, &m) != nil {
		c.t.Fatalf("message %d %q", typ, b)
	}
	return m
}

// until reads messages until one of type typ, collecting the output
// before it.
func (c *wsClient) until(typ string) (wsMsg, string) {
	c.t.Helper()
	var out strings.Builder
	for {
		m := c.recv()
		if m.Type == typ {
			return m, out.String()
		}
		switch m.Type {
		case "stdout", "stderr", "pty":
			out.Write(m.Data)
		default:
			c.t.Fatalf("unexpected %+v while waiting for %s", m, typ)
		}
	}
}

// untilOutput reads output until it contains want.
func (c *wsClient) untilOutput(want string) string {
	c.t.Helper()
	var out strings.Builder
	for !strings.Contains(out.String(), want) {
		m := c.recv()
		if m.Type != "stdout" && m.Type != "pty" && m.Type != "stderr" {
			c.t.Fatalf("unexpected %+v while waiting for %q in %q", m, want, out.String())
		}
		out.Write(m.Data)
	}
	return out.String()
}

// closedNormally checks that the server closes the connection normally.
func (c *wsClient) closedNormally() {
	c.t.Helper()
	_, b, err := c.conn.Read(c.ctx)
	if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		c.t.Fatalf("after exit: %q %v, want a normal closure", b, err)
	}
}

func (f *sbxFixture) testStream(t *testing.T) {
	t.Run("stdin echo", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "argv": []string{"cat"}})
		if m := c.recv(); m.Type != "started" || m.PID == 0 {
			t.Fatalf("%+v", m)
		}
		c.send(map[string]any{"type": "stdin", "data": []byte("hello\n")})
		c.untilOutput("hello\n")
		c.send(map[string]any{"type": "stdin", "data": []byte("again")})
		c.untilOutput("again")
		c.send(map[string]any{"type": "close_stdin"})
		if m, _ := c.until("exit"); m.ExitCode == nil || *m.ExitCode != 0 || m.Signal != "" {
			t.Fatalf("exit: %+v", m)
		}
		c.closedNormally()
	})
	t.Run("large binary output", func(t *testing.T) {
		data := make([]byte, 3000000)
		_, _ = rand.Read(data)
		if resp, b := f.raw(t, "PUT", f.filesURL(f.id, "", "path", "/tmp/rand.bin"), f.key, "", bytes.NewReader(data)); resp.StatusCode != 200 {
			t.Fatalf("upload: %d %s", resp.StatusCode, b)
		}
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "cmd": "cat /tmp/rand.bin; echo done >&2"})
		c.recv()
		var stdout, stderr bytes.Buffer
		msgs := 0
		for {
			m := c.recv()
			if m.Type == "exit" {
				if m.ExitCode == nil || *m.ExitCode != 0 {
					t.Fatalf("exit: %+v", m)
				}
				break
			}
			switch m.Type {
			case "stdout":
				stdout.Write(m.Data)
				msgs++
			case "stderr":
				stderr.Write(m.Data)
			}
		}
		if !bytes.Equal(stdout.Bytes(), data) || stderr.String() != "done\n" || msgs < 2 {
			t.Fatalf("%d bytes in %d messages (want %d), stderr %q", stdout.Len(), msgs, len(data), stderr.String())
		}
		c.closedNormally()
	})
	t.Run("signal", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "cmd": "echo up; exec sleep 600"})
		c.recv()
		c.untilOutput("up\n")
		c.send(map[string]any{"type": "signal", "signal": "SIGHUP"})
		if m := c.recv(); m.Type != "error" || m.Code != 400 {
			t.Fatalf("unsupported signal: %+v", m)
		}
		c.send(map[string]any{"type": "bogus"})
		if m := c.recv(); m.Type != "error" || m.Code != 400 {
			t.Fatalf("unknown type: %+v", m)
		}
		c.send(map[string]any{"type": "signal", "signal": "SIGTERM"})
		if m, _ := c.until("exit"); m.Signal != "SIGTERM" || m.ExitCode == nil || *m.ExitCode != -1 {
			t.Fatalf("exit: %+v", m)
		}
		c.closedNormally()
	})
	t.Run("pty", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "argv": []string{"sh"}, "pty": map[string]int{"cols": 100, "rows": 30}, "env": map[string]string{"PS1": "$ "}})
		c.recv()
		c.send(map[string]any{"type": "stdin", "data": []byte("stty size; tty\n")})
		if out := c.untilOutput("/dev/pts/"); !strings.Contains(out, "30 100") {
			t.Fatalf("pty output %q", out)
		}
		c.send(map[string]any{"type": "resize", "cols": 120, "rows": 40})
		c.send(map[string]any{"type": "stdin", "data": []byte("stty size; exit 7\n")})
		m, out := c.until("exit")
		if !strings.Contains(out, "40 120") || m.ExitCode == nil || *m.ExitCode != 7 {
			t.Fatalf("%+v after %q", m, out)
		}
		c.closedNormally()
	})
	t.Run("timeout", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "cmd": "sleep 600", "timeout_sec": 1})
		c.recv()
		if m, _ := c.until("exit"); !m.TimedOut || m.Signal != "SIGKILL" {
			t.Fatalf("exit: %+v", m)
		}
		c.closedNormally()
	})
	t.Run("disconnect kills", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "cmd": "exec sleep 600"})
		m := c.recv()
		if m.Type != "started" {
			t.Fatalf("%+v", m)
		}
		if out := f.sh(t, fmt.Sprintf("kill -0 %d && echo alive", m.PID)); out != "alive\n" {
			t.Fatalf("before the disconnect: %q", out)
		}
		c.conn.CloseNow()
		f.waitDead(t, fmt.Sprint(m.PID))
	})
	t.Run("token as subprotocol", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, &websocket.DialOptions{Subprotocols: []string{"capsule.exec.v1", "capsule.token." + f.key}})
		if err != nil {
			t.Fatal(err)
		}
		if c.conn.Subprotocol() != "capsule.exec.v1" {
			t.Fatalf("subprotocol %q", c.conn.Subprotocol())
		}
		c.send(map[string]any{"type": "start", "argv": []string{"echo", "hi"}, "stdin": false})
		c.recv()
		if m, out := c.until("exit"); out != "hi\n" || *m.ExitCode != 0 {
			t.Fatalf("%+v %q", m, out)
		}
	})
	t.Run("bad start", func(t *testing.T) {
		for _, start := range []map[string]any{
			{"type": "start", "cmd": "true", "argv": []string{"true"}},
			{"type": "stdin", "data": []byte("x")},
			{"type": "start", "cmd": "true", "pty": map[string]int{"cols": 0, "rows": 10}},
			{"type": "start", "cmd": "true", "surprise": 1},
			{"type": "start", "cmd": "sh", "pty": map[string]int{"cols": 80, "rows": 24}, "keep_sec": 3601},
			{"type": "start", "cmd": "sh", "pty": map[string]int{"cols": 80, "rows": 24}, "keep_sec": -1},
		} {
			c, _, err := f.dial(t, f.id, nil)
			if err != nil {
				t.Fatal(err)
			}
			c.send(start)
			if m := c.recv(); m.Type != "error" || m.Code != 400 || m.Message == "" {
				t.Fatalf("%v: %+v", start, m)
			}
			if _, _, err := c.conn.Read(c.ctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				t.Fatalf("%v: closed with %v", start, err)
			}
		}
	})
	t.Run("reattach a kept terminal", f.testReattach)
	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			id   string
			opts *websocket.DialOptions
			want int
		}{
			{"no auth", f.id, &websocket.DialOptions{}, 401},
			{"another team", f.id, &websocket.DialOptions{HTTPHeader: http.Header{"X-API-Key": {f.other}}}, 404},
			{"another team's token", f.id, &websocket.DialOptions{Subprotocols: []string{"capsule.exec.v1", "capsule.token." + f.other}}, 404},
			{"not running", f.paused, nil, 409},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, resp, err := f.dial(t, tc.id, tc.opts)
				if err == nil || resp == nil || resp.StatusCode != tc.want {
					t.Fatalf("%v %v, want %d", resp, err, tc.want)
				}
			})
		}
	})
}

// raw sends a request with a raw body and returns the response and its
// body.
func (f *sbxFixture) raw(t *testing.T, method, path, key, contentType string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, body)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
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

// testWatch: a recursive watch sees files made, written, renamed and
// removed below it, through the API and by a process in the guest, each
// once, in order; a non-recursive watch sees its own level only; a watch
// of a missing directory or a file is refused before the answer starts.
func (f *sbxFixture) testWatch(t *testing.T) {
	f.sh(t, "rm -rf /tmp/w && mkdir -p /tmp/w/sub")
	type event = struct{ Type, Name string }
	watch := func(t *testing.T, q ...string) (<-chan event, func()) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+f.filesURL(f.id, "/watch", q...), nil)
		req.Header.Set("X-API-Key", f.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			cancel()
			t.Fatalf("watch: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		events := make(chan event, 64)
		go func() {
			defer close(events)
			defer resp.Body.Close()
			dec := json.NewDecoder(resp.Body)
			for {
				var ev event
				if dec.Decode(&ev) != nil {
					return
				}
				events <- ev
			}
		}()
		return events, cancel
	}
	// next is the next event that is not a keepalive or a write of a
	// file being filled (one write or several: the guest decides).
	next := func(t *testing.T, events <-chan event, skip ...event) event {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("the watch ended")
				}
				if ev.Type == "keepalive" || slices.Contains(skip, ev) {
					continue
				}
				return ev
			case <-timeout:
				t.Fatal("no event within 30 s")
			}
		}
	}
	t.Run("changes below the directory", func(t *testing.T) {
		events, stop := watch(t, "path", "/tmp/w", "recursive", "true")
		defer stop()
		if resp, b := f.raw(t, "PUT", f.filesURL(f.id, "", "path", "/tmp/w/a.txt"), f.key, "", strings.NewReader("hello")); resp.StatusCode != 200 {
			t.Fatalf("upload: %d %s", resp.StatusCode, b)
		}
		if ev := next(t, events); ev != (event{"create", "a.txt"}) {
			t.Fatalf("after an upload: %+v", ev)
		}
		f.sh(t, "echo x > /tmp/w/sub/b.txt && mv /tmp/w/a.txt /tmp/w/c.txt && rm /tmp/w/sub/b.txt")
		for _, want := range []event{{"create", "sub/b.txt"}, {"rename", "a.txt"}, {"create", "c.txt"}, {"remove", "sub/b.txt"}} {
			if ev := next(t, events, event{"write", "a.txt"}, event{"write", "sub/b.txt"}); ev != want {
				t.Fatalf("event %+v, want %+v", ev, want)
			}
		}
	})
	t.Run("not recursive", func(t *testing.T) {
		events, stop := watch(t, "path", "/tmp/w")
		defer stop()
		f.sh(t, "echo x > /tmp/w/sub/deep.txt && echo y > /tmp/w/top.txt")
		if ev := next(t, events, event{"write", "top.txt"}); ev != (event{"create", "top.txt"}) {
			t.Fatalf("a non-recursive watch saw %+v first", ev)
		}
	})
	for _, tc := range []struct {
		name string
		q    []string
		want int
	}{
		{"a missing directory", []string{"path", "/tmp/nowhere"}, 404},
		{"a file", []string{"path", "/tmp/w/c.txt"}, 400},
		{"recursive not a boolean", []string{"path", "/tmp/w", "recursive", "yes please"}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := f.do(t, "GET", f.filesURL(f.id, "/watch", tc.q...), f.key, nil, nil); c != tc.want {
				t.Fatalf("%d, want %d", c, tc.want)
			}
		})
	}
}

func (f *sbxFixture) filesURL(id, route string, q ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(q); i += 2 {
		v.Set(q[i], q[i+1])
	}
	return "/v1/sandboxes/" + id + "/files" + route + "?" + v.Encode()
}

type multipartFile struct{ name, data string }

func multipartBody(files ...multipartFile) (string, *bytes.Buffer) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range files {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename=%q`, f.name))
		w, _ := mw.CreatePart(h)
		_, _ = w.Write([]byte(f.data))
	}
	_ = mw.Close()
	return mw.FormDataContentType(), &buf
}

func (f *sbxFixture) testFiles(t *testing.T) {
	// A streamed upload of a few MiB, downloaded back, checked on both
	// sides.
	data := make([]byte, 3<<20+4321)
	_, _ = rand.Read(data)
	sum := sha256.Sum256(data)
	resp, b := f.raw(t, "PUT", f.filesURL(f.id, "", "path", "/tmp/up/../up/deep/blob.bin"), f.key, "application/octet-stream", bytes.NewReader(data))
	var fi fileInfoJSON
	if resp.StatusCode != 200 || json.Unmarshal(b, &fi) != nil || fi.Path != "/tmp/up/deep/blob.bin" || fi.Size != uint64(len(data)) {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	if got := f.sh(t, "sha256sum /tmp/up/deep/blob.bin"); !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
		t.Fatalf("sha256 in the guest: %q", got)
	}
	resp, b = f.raw(t, "GET", f.filesURL(f.id, "", "path", "/tmp/up/deep/blob.bin"), f.key, "", nil)
	if resp.StatusCode != 200 || sha256.Sum256(b) != sum || resp.ContentLength != int64(len(data)) ||
		resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("download: %d, %d bytes, Content-Length %d", resp.StatusCode, len(b), resp.ContentLength)
	}
	// An empty file.
	if resp, b := f.raw(t, "PUT", f.filesURL(f.id, "", "path", "/tmp/empty"), f.key, "", nil); resp.StatusCode != 200 {
		t.Fatalf("empty upload: %d %s", resp.StatusCode, b)
	}
	if resp, b := f.raw(t, "GET", f.filesURL(f.id, "", "path", "/tmp/empty"), f.key, "", nil); resp.StatusCode != 200 || len(b) != 0 {
		t.Fatalf("empty download: %d %q", resp.StatusCode, b)
	}
	// Ownership.
	if resp, b := f.raw(t, "PUT", f.filesURL(f.id, "", "path", "/home/user/owned.txt", "user", "user"), f.key, "", strings.NewReader("mine")); resp.StatusCode != 200 {
		t.Fatalf("upload as user: %d %s", resp.StatusCode, b)
	}
	if got := f.sh(t, "stat -c %U /home/user/owned.txt /tmp/empty"); got != "user\nroot\n" {
		t.Fatalf("owners: %q", got)
	}

	// Multipart: two files, one in a subdirectory.
	ct, body := multipartBody(multipartFile{"a.txt", "alpha"}, multipartFile{"sub/b.txt", "beta"})
	resp, b = f.raw(t, "POST", f.filesURL(f.id, "", "dir", "/tmp/mp"), f.key, ct, body)
	var files []fileInfoJSON
	if resp.StatusCode != 200 || json.Unmarshal(b, &files) != nil || len(files) != 2 ||
		files[0] != (fileInfoJSON{"/tmp/mp/a.txt", 5}) || files[1] != (fileInfoJSON{"/tmp/mp/sub/b.txt", 4}) {
		t.Fatalf("multipart: %d %s", resp.StatusCode, b)
	}
	if got := f.sh(t, "cat /tmp/mp/a.txt /tmp/mp/sub/b.txt"); got != "alphabeta" {
		t.Fatalf("multipart content: %q", got)
	}

	// List.
	var list struct {
		Entries []fileEntryJSON `json:"entries"`
	}
	if c := f.do(t, "GET", f.filesURL(f.id, "/list", "path", "/tmp/mp"), f.key, nil, &list); c != 200 || len(list.Entries) != 2 {
		t.Fatalf("list: %d %+v", c, list)
	}
	a, sub := list.Entries[0], list.Entries[1]
	if a.Name != "a.txt" || a.Path != "/tmp/mp/a.txt" || a.Type != "file" || a.Size != 5 || a.Mode != 0o644 ||
		time.Since(a.ModifiedAt) > time.Hour || sub.Name != "sub" || sub.Type != "dir" {
		t.Fatalf("entries: %+v", list.Entries)
	}
	f.sh(t, "ln -s /tmp/mp/a.txt /tmp/mp/link")
	if c := f.do(t, "GET", f.filesURL(f.id, "/list", "path", "/tmp/mp", "depth", "2"), f.key, nil, &list); c != 200 || len(list.Entries) != 4 {
		t.Fatalf("list depth 2: %d %+v", c, list)
	}
	types := map[string]string{}
	for _, e := range list.Entries {
		types[e.Path] = e.Type
	}
	if types["/tmp/mp/sub/b.txt"] != "file" || types["/tmp/mp/link"] != "symlink" {
		t.Fatalf("entries: %+v", list.Entries)
	}

	// Mkdir.
	var entry fileEntryJSON
	if c := f.do(t, "POST", "/v1/sandboxes/"+f.id+"/files/mkdir", f.key, map[string]string{"path": "/tmp/made/deeper"}, &entry); c != 201 ||
		entry.Path != "/tmp/made/deeper" || entry.Type != "dir" {
		t.Fatalf("mkdir: %d %+v", c, entry)
	}
	if c := f.do(t, "POST", "/v1/sandboxes/"+f.id+"/files/mkdir", f.key, map[string]string{"path": "/tmp/made/deeper"}, nil); c != 409 {
		t.Fatalf("mkdir again: %d", c)
	}
	if c := f.do(t, "POST", "/v1/sandboxes/"+f.id+"/files/mkdir", f.key, map[string]string{"path": "/tmp/mp/a.txt"}, nil); c != 400 {
		t.Fatalf("mkdir over a file: %d", c)
	}
	if c := f.do(t, "POST", "/v1/sandboxes/"+f.id+"/files/mkdir", f.key, map[string]string{"path": "/home/user/mine", "user": "user"}, nil); c != 201 {
		t.Fatalf("mkdir as user: %d", c)
	}
	if got := f.sh(t, "stat -c %U /home/user/mine /tmp/made"); got != "user\nroot\n" {
		t.Fatalf("owners: %q", got)
	}

	// Remove.
	if c := f.do(t, "DELETE", f.filesURL(f.id, "", "path", "/tmp/mp"), f.key, nil, nil); c != 204 {
		t.Fatalf("remove: %d", c)
	}
	if got := f.sh(t, "ls /tmp/mp 2>&1 || true"); !strings.Contains(got, "No such file") {
		t.Fatalf("after remove: %q", got)
	}
	for _, tc := range []struct {
		name, method, url string
		want              int
	}{
		{"remove a missing path", "DELETE", f.filesURL(f.id, "", "path", "/tmp/mp"), 404},
		{"list a missing directory", "GET", f.filesURL(f.id, "/list", "path", "/tmp/mp"), 404},
		{"list a file", "GET", f.filesURL(f.id, "/list", "path", "/tmp/empty"), 400},
		{"download a missing file", "GET", f.filesURL(f.id, "", "path", "/tmp/nope"), 404},
		{"download a directory", "GET", f.filesURL(f.id, "", "path", "/tmp"), 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := f.do(t, tc.method, tc.url, f.key, nil, nil); c != tc.want {
				t.Fatalf("%d, want %d", c, tc.want)
			}
		})
	}
}

// testFilesRefused: bad input, another team's sandbox and a sandbox that
// is not running, on every file route; nothing changes in the guest.
func (f *sbxFixture) testFilesRefused(t *testing.T) {
	f.sh(t, "rm -rf /tmp/refused && mkdir /tmp/refused && echo keep > /tmp/refused/keep")
	type req struct {
		method, url, contentType string
		body                     func() io.Reader
	}
	mp := func(files ...multipartFile) (string, func() io.Reader) {
		ct, b := multipartBody(files...)
		data := b.Bytes()
		return ct, func() io.Reader { return bytes.NewReader(data) }
	}
	text := func(s string) func() io.Reader { return func() io.Reader { return strings.NewReader(s) } }
	okMP, okBody := mp(multipartFile{"x.txt", "x"})
	// routes are the file routes on dir (and file, a file in it).
	routes := func(id, dir, file string) []req {
		mkdir, _ := json.Marshal(map[string]string{"path": dir})
		return []req{
			{"PUT", f.filesURL(id, "", "path", file), "", text("x")},
			{"POST", f.filesURL(id, "", "dir", dir), okMP, okBody},
			{"GET", f.filesURL(id, "", "path", file), "", nil},
			{"GET", f.filesURL(id, "/list", "path", dir), "", nil},
			{"POST", "/v1/sandboxes/" + id + "/files/mkdir", "application/json", text(string(mkdir))},
			{"DELETE", f.filesURL(id, "", "path", file), "", nil},
			{"GET", f.filesURL(id, "/watch", "path", dir), "", nil},
		}
	}
	check := func(t *testing.T, r req, key string, want int) {
		t.Helper()
		var body io.Reader
		if r.body != nil {
			body = r.body()
		}
		resp, b := f.raw(t, r.method, r.url, key, r.contentType, body)
		var eb errorBody
		if resp.StatusCode != want || json.Unmarshal(b, &eb) != nil || eb.Code != want || eb.Message == "" {
			t.Fatalf("%s %s: %d %s, want %d", r.method, r.url, resp.StatusCode, b, want)
		}
	}
	for _, bad := range []string{"tmp/refused/keep", "", "/tmp/\x00refused", "/tmp/" + strings.Repeat("x", 5000)} {
		for _, r := range routes(f.id, bad, bad) {
			check(t, r, f.key, 400)
		}
	}
	for _, r := range routes(f.id, "/tmp/refused", "/tmp/refused/keep") {
		check(t, r, "", 401)
		check(t, r, f.other, 404)
	}
	for _, r := range routes(f.paused, "/tmp/refused", "/tmp/refused/keep") {
		check(t, r, f.key, 409)
	}
	for _, files := range [][]multipartFile{
		{{"../escape.txt", "x"}},
		{{"sub/../../escape.txt", "x"}},
		{{"/etc/escape.txt", "x"}},
		{{"", "x"}},
	} {
		ct, body := mp(files...)
		check(t, req{"POST", f.filesURL(f.id, "", "dir", "/tmp/refused"), ct, body}, f.key, 400)
	}
	check(t, req{"POST", f.filesURL(f.id, "", "dir", "/tmp/refused"), "text/plain", text("x")}, f.key, 400)
	check(t, req{"DELETE", f.filesURL(f.id, "", "path", "/"), "", nil}, f.key, 400)
	check(t, req{"GET", f.filesURL(f.id, "/list", "path", "/tmp", "depth", "99"), "", nil}, f.key, 400)
	check(t, req{"GET", f.filesURL(f.id, "", "path", "/tmp/refused/keep", "user", "x:y"), "", nil}, f.key, 400)
	if got := f.sh(t, "ls -A /tmp/refused /tmp | grep -c escape; ls -A /tmp/refused"); got != "0\nkeep\n" {
		t.Fatalf("a refused request changed the guest: %q", got)
	}
}

// attachURL dials the exec stream of sandbox id with ?pid=.
func (f *sbxFixture) attach(t *testing.T, id, pid, key string) (*wsClient, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	opts := &websocket.DialOptions{HTTPHeader: http.Header{"X-API-Key": {key}}}
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.srv.URL, "http")+"/v1/sandboxes/"+id+"/exec/stream?pid="+url.QueryEscape(pid), opts)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { conn.CloseNow() })
	conn.SetReadLimit(4 << 20)
	return &wsClient{t: t, conn: conn, ctx: ctx}, resp, nil
}

// testReattach: a kept terminal outlives its connection; an attach by pid
// gets its scrollback and the same shell; a second attach takes it over;
// another team's key (and a pid that is no kept terminal) is refused; the
// terminal nobody attaches to is killed after its keep time.
func (f *sbxFixture) testReattach(t *testing.T) {
	c, _, err := f.dial(t, f.id, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.send(map[string]any{"type": "start", "argv": []string{"sh"}, "pty": map[string]int{"cols": 100, "rows": 30}, "env": map[string]string{"PS1": "$ "}, "keep_sec": 3})
	m := c.recv()
	if m.Type != "started" || m.PID == 0 {
		t.Fatalf("%+v", m)
	}
	pid := fmt.Sprint(m.PID)
	c.send(map[string]any{"type": "stdin", "data": []byte("echo before-$((6*7))\n")})
	c.untilOutput("before-42")
	c.conn.CloseNow()
	if out := f.sh(t, "kill -0 "+pid+" && echo alive"); out != "alive\n" {
		t.Fatalf("the kept terminal died with its connection: %q", out)
	}

	t.Run("refused", func(t *testing.T) {
		// A plain streamed process is not kept: it has no attach.
		plain, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		plain.send(map[string]any{"type": "start", "cmd": "exec sleep 600"})
		pm := plain.recv()
		for _, tc := range []struct {
			name, id, pid, key string
			want               int
		}{
			{"another team's key, the terminal's sandbox and pid", f.id, pid, f.other, 404},
			{"no kept terminal with that pid", f.id, "999999", f.key, 404},
			{"a process that is not kept", f.id, fmt.Sprint(pm.PID), f.key, 404},
			{"not a pid", f.id, "abc", f.key, 400},
			{"pid 0", f.id, "0", f.key, 400},
			{"a paused sandbox", f.paused, pid, f.key, 409},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, resp, err := f.attach(t, tc.id, tc.pid, tc.key)
				if err == nil || resp == nil || resp.StatusCode != tc.want {
					t.Fatalf("%v %v, want %d", resp, err, tc.want)
				}
			})
		}
		plain.conn.CloseNow()
		f.waitDead(t, fmt.Sprint(pm.PID))
	})

	// The attached connection outlives its subtest (the next one takes it
	// over): dialled here, its t set to the subtest's.
	again, _, err := f.attach(t, f.id, pid, f.key)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("attach: the scrollback, then the same shell", func(t *testing.T) {
		again.t = t
		if m := again.recv(); m.Type != "attached" || fmt.Sprint(m.PID) != pid {
			t.Fatalf("%+v", m)
		}
		again.untilOutput("before-42") // the scrollback
		again.send(map[string]any{"type": "resize", "cols": 120, "rows": 40})
		again.send(map[string]any{"type": "stdin", "data": []byte("echo pid-$$; stty size\n")})
		if out := again.untilOutput("40 120"); !strings.Contains(out, "pid-"+pid) {
			t.Fatalf("another shell answers: %q", out)
		}
	})

	t.Run("a second attach takes over", func(t *testing.T) {
		again.t = t
		third, _, err := f.attach(t, f.id, pid, f.key)
		if err != nil {
			t.Fatal(err)
		}
		if m := third.recv(); m.Type != "attached" {
			t.Fatalf("%+v", m)
		}
		for {
			m := again.recv()
			if m.Type == "detached" {
				break
			}
			if m.Type != "pty" {
				t.Fatalf("the first connection got %+v", m)
			}
		}
		again.closedNormally()
		third.send(map[string]any{"type": "stdin", "data": []byte("echo third-$((7*6))\n")})
		third.untilOutput("third-42")
		third.conn.CloseNow()
	})

	t.Run("killed after its keep time", func(t *testing.T) {
		f.waitDead(t, pid)
		_, resp, err := f.attach(t, f.id, pid, f.key)
		if err == nil || resp == nil || resp.StatusCode != 404 {
			t.Fatalf("attach after the end: %v %v", resp, err)
		}
	})

	t.Run("exit ends it", func(t *testing.T) {
		c, _, err := f.dial(t, f.id, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.send(map[string]any{"type": "start", "argv": []string{"sh"}, "pty": map[string]int{"cols": 80, "rows": 24}, "keep_sec": 60})
		m := c.recv()
		c.send(map[string]any{"type": "stdin", "data": []byte("exit 3\n")})
		if x, _ := c.until("exit"); x.ExitCode == nil || *x.ExitCode != 3 {
			t.Fatalf("exit: %+v", x)
		}
		c.closedNormally()
		if _, resp, err := f.attach(t, f.id, fmt.Sprint(m.PID), f.key); err == nil || resp == nil || resp.StatusCode != 404 {
			t.Fatalf("attach to an exited terminal: %v %v", resp, err)
		}
	})
}
