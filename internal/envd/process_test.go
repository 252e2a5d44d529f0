package envd_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/envd/process"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
	"github.com/capsulehq/capsule/internal/envd"
)

// procEnv is a running envd with a process client.
type procEnv struct {
	url    string
	client processconnect.ProcessClient
}

func newProcEnv(t *testing.T) *procEnv {
	t.Helper()
	srv := envd.New(envd.Config{})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ts.Close()
		srv.Close()
	})
	return &procEnv{url: ts.URL, client: processconnect.NewProcessClient(ts.Client(), ts.URL)}
}

// result collects what a process stream produced.
type result struct {
	pid            uint32
	stdout, stderr bytes.Buffer
	pty            bytes.Buffer
	end            *pb.ProcessEvent_EndEvent
	keepalives     int
	err            error
}

func collect[T interface{ GetEvent() *pb.ProcessEvent }](s interface {
	Receive() bool
	Msg() T
	Err() error
}) *result {
	r := &result{}
	for s.Receive() {
		ev := s.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			r.pid = ev.GetStart().GetPid()
		case ev.GetData() != nil:
			d := ev.GetData()
			r.stdout.Write(d.GetStdout())
			r.stderr.Write(d.GetStderr())
			r.pty.Write(d.GetPty())
		case ev.GetEnd() != nil:
			r.end = ev.GetEnd()
		case ev.GetKeepalive() != nil:
			r.keepalives++
		}
	}
	r.err = s.Err()
	return r
}

func startReq(cmd string, args ...string) *pb.StartRequest {
	return &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: cmd, Args: args}}
}

func (e *procEnv) run(t *testing.T, req *pb.StartRequest) *result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := e.client.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer s.Close()
	return collect[*pb.StartResponse](s)
}

func sh(script string) *pb.StartRequest { return startReq("/bin/sh", "-c", script) }

func boolp(b bool) *bool    { return &b }
func strp(s string) *string { return &s }
func pidSel(pid uint32) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

func TestProcessExitStatus(t *testing.T) {
	e := newProcEnv(t)
	tests := []struct {
		name                   string
		script                 string
		code                   int32
		exited                 bool
		status, stdout, stderr string
	}{
		{"success", "echo hi", 0, true, "exit status 0", "hi\n", ""},
		{"failure", "echo oops >&2; exit 3", 3, true, "exit status 3", "", "oops\n"},
		{"signal", "kill -9 $$", -1, false, "signal: killed", "", ""},
		{"term", "kill -15 $$", -1, false, "signal: terminated", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.run(t, sh(tc.script))
			if r.err != nil {
				t.Fatalf("stream error: %v", r.err)
			}
			if r.pid == 0 || r.end == nil {
				t.Fatalf("pid %d end %v", r.pid, r.end)
			}
			if r.end.ExitCode != tc.code || r.end.Exited != tc.exited || r.end.Status != tc.status {
				t.Fatalf("end = %+v, want code %d exited %v status %q", r.end, tc.code, tc.exited, tc.status)
			}
			if (r.end.Error != nil) != (tc.code != 0) {
				t.Fatalf("error field %v for code %d", r.end.Error, tc.code)
			}
			if r.stdout.String() != tc.stdout || r.stderr.String() != tc.stderr {
				t.Fatalf("stdout %q stderr %q", r.stdout.String(), r.stderr.String())
			}
		})
	}
}

func TestProcessLargeBinaryOutput(t *testing.T) {
	e := newProcEnv(t)
	data := make([]byte, 24<<20+123)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run(t, startReq("/bin/cat", f))
	if r.err != nil || r.end == nil || r.end.ExitCode != 0 {
		t.Fatalf("err %v end %v", r.err, r.end)
	}
	if !bytes.Equal(r.stdout.Bytes(), data) {
		t.Fatalf("output differs: got %d bytes, want %d", r.stdout.Len(), len(data))
	}
}

func TestProcessEnvCwdAndUser(t *testing.T) {
	e := newProcEnv(t)
	dir := t.TempDir()
	req := sh(`printf '%s|%s|%s|%s' "$FOO" "$(pwd)" "$E2B_SANDBOX" "$HOME"`)
	req.Process.Envs = map[string]string{"FOO": "bar baz"}
	req.Process.Cwd = &dir
	r := e.run(t, req)
	home, _ := os.UserHomeDir()
	want := fmt.Sprintf("bar baz|%s|true|%s", dir, home)
	if r.stdout.String() != want {
		t.Fatalf("got %q want %q", r.stdout.String(), want)
	}

	// A missing cwd is invalid_argument, before anything runs.
	req = sh("true")
	req.Process.Cwd = strp(filepath.Join(dir, "missing"))
	r = e.run(t, req)
	if connect.CodeOf(r.err) != connect.CodeInvalidArgument {
		t.Fatalf("missing cwd: %v", r.err)
	}

	// An unknown Basic user is unauthenticated with E2B's message.
	ctx := context.Background()
	cr := connect.NewRequest(sh("true"))
	cr.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("nosuchuser:")))
	s, err := e.client.Start(ctx, cr)
	if err == nil {
		r = collect[*pb.StartResponse](s)
		err = r.err
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "invalid username: 'nosuchuser'") {
		t.Fatalf("unknown user: %v", err)
	}

	// root, selected explicitly.
	if os.Getuid() == 0 {
		cr = connect.NewRequest(startReq("/usr/bin/id", "-un"))
		cr.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("root:")))
		s, err := e.client.Start(ctx, cr)
		if err != nil {
			t.Fatal(err)
		}
		if r := collect[*pb.StartResponse](s); r.stdout.String() != "root\n" {
			t.Fatalf("id -un = %q (%v)", r.stdout.String(), r.err)
		}
	}
}

func TestProcessStdin(t *testing.T) {
	e := newProcEnv(t)
	ctx := context.Background()

	// stdin enabled: input arrives, CloseStdin ends cat.
	s, err := e.client.Start(ctx, connect.NewRequest(sh("cat; sleep 0.3; echo .")))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("first event is not start: %v", s.Err())
	}
	pid := s.Msg().GetEvent().GetStart().GetPid()
	for _, chunk := range []string{"hello ", "world", "\x00\xff"} {
		_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
			Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(chunk)}},
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // closing twice is a no-op
		if _, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(pid)})); err != nil {
			t.Fatal(err)
		}
	}
	r := collect[*pb.StartResponse](s)
	if r.stdout.String() != "hello world\x00\xff.\n" || r.end == nil || r.end.ExitCode != 0 {
		t.Fatalf("stdout %q end %v err %v", r.stdout.String(), r.end, r.err)
	}

	// stdin disabled: cat sees EOF at once, SendInput is refused.
	req := startReq("/bin/sh", "-c", "cat; echo done")
	req.Stdin = boolp(false)
	r = e.run(t, req)
	if r.stdout.String() != "done\n" {
		t.Fatalf("stdin=false: %q", r.stdout.String())
	}
}

func TestProcessSendInputErrors(t *testing.T) {
	e := newProcEnv(t)
	ctx := context.Background()
	req := startReq("/bin/sleep", "30")
	req.Stdin = boolp(false)
	s, err := e.client.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Receive()
	pid := s.Msg().GetEvent().GetStart().GetPid()
	defer e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL}))

	tests := []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"stdin disabled", func() error {
			_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
			return err
		}, connect.CodeInternal},
		{"pty input to a pipe process", func() error {
			_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("x")}}}))
			return err
		}, connect.CodeInternal},
		{"no input member", func() error {
			_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{}}))
			return err
		}, connect.CodeUnimplemented},
		{"unknown pid", func() error {
			_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(1 << 30), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
			return err
		}, connect.CodeNotFound},
		{"unspecified signal", func() error {
			_, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid)}))
			return err
		}, connect.CodeUnimplemented},
		{"signal unknown pid", func() error {
			_, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(1 << 30), Signal: pb.Signal_SIGNAL_SIGKILL}))
			return err
		}, connect.CodeNotFound},
		{"resize a pipe process", func() error {
			_, err := e.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 10, Rows: 10}}}))
			return err
		}, connect.CodeInternal},
		{"connect unknown tag", func() error {
			s, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "nope"}}}))
			if err != nil {
				return err
			}
			return collect[*pb.ConnectResponse](s).err
		}, connect.CodeNotFound},
		{"empty selector", func() error {
			_, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: &pb.ProcessSelector{}}))
			return err
		}, connect.CodeInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := connect.CodeOf(tc.call()); got != tc.code {
				t.Fatalf("code %v, want %v", got, tc.code)
			}
		})
	}
}

func TestProcessPTY(t *testing.T) {
	e := newProcEnv(t)
	ctx := context.Background()
	req := startReq("/bin/sh")
	req.Process.Envs = map[string]string{"PS1": "$ ", "TERM": "xterm"}
	req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}
	s, err := e.client.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Receive()
	pid := s.Msg().GetEvent().GetStart().GetPid()
	if pid == 0 {
		t.Fatalf("no start event: %v", s.Err())
	}
	events := make(chan []byte, 1024)
	go func() {
		defer close(events)
		for s.Receive() {
			if b := s.Msg().GetEvent().GetData().GetPty(); b != nil {
				events <- b
			}
		}
	}()
	var out bytes.Buffer
	waitFor := func(t *testing.T, want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for !strings.Contains(out.String(), want) {
			select {
			case b, ok := <-events:
				if !ok {
					t.Fatalf("stream ended waiting for %q; got %q", want, out.String())
				}
				out.Write(b)
			case <-deadline:
				t.Fatalf("timed out waiting for %q; got %q", want, out.String())
			}
		}
	}
	input := func(t *testing.T, s string) {
		t.Helper()
		_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte(s)}}}))
		if err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"input reaches the shell", func(t *testing.T) {
			input(t, "echo $((6*7))\n")
			waitFor(t, "42")
		}},
		{"the terminal is resized", func(t *testing.T) {
			if _, err := e.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 100, Rows: 30}}})); err != nil {
				t.Fatal(err)
			}
			input(t, "stty size\n")
			waitFor(t, "30 100")
		}},
		{"CloseStdin is unknown for a PTY", func(t *testing.T) {
			// Callers send EOT instead.
			if _, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(pid)})); connect.CodeOf(err) != connect.CodeUnknown {
				t.Fatalf("CloseStdin on a PTY: %v", err)
			}
		}},
		{"the exit code is kept after the exit", func(t *testing.T) {
			input(t, "exit 5\n")
			for range events {
			}
			r, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: pidSel(pid)}))
			if err != nil {
				t.Fatal(err)
			}
			if res := collect[*pb.ConnectResponse](r); res.end == nil || res.end.ExitCode != 5 {
				t.Fatalf("retained end after exit: %+v %v", res.end, res.err)
			}
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			return
		}
	}
}

func TestProcessBackgroundListConnectKill(t *testing.T) {
	e := newProcEnv(t)
	ctx := context.Background()
	req := sh("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
	req.Tag = strp("ticker")
	sctx, cancel := context.WithCancel(ctx)
	s, err := e.client.Start(sctx, connect.NewRequest(req))
	if err != nil {
		t.Fatal(err)
	}
	s.Receive()
	pid := s.Msg().GetEvent().GetStart().GetPid()
	cancel() // the client goes away; the process must not
	s.Close()

	time.Sleep(300 * time.Millisecond)
	list, err := e.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var found *pb.ProcessInfo
	for _, p := range list.Msg.Processes {
		if p.Pid == pid {
			found = p
		}
	}
	if found == nil || found.GetTag() != "ticker" || found.GetConfig().GetCmd() != "/bin/sh" {
		t.Fatalf("process %d not listed with its tag and config: %v", pid, list.Msg.Processes)
	}

	c, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "ticker"}}}))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *result)
	go func() { done <- collect[*pb.ConnectResponse](c) }()
	time.Sleep(500 * time.Millisecond)
	if _, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.pid != pid || !strings.Contains(r.stdout.String(), "tick") || r.end == nil || r.end.Status != "signal: killed" {
		t.Fatalf("connect saw pid %d out %q end %+v err %v", r.pid, r.stdout.String(), r.end, r.err)
	}
	list, _ = e.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	for _, p := range list.Msg.Processes {
		if p.Pid == pid {
			t.Fatalf("killed process still listed")
		}
	}
}

func TestProcessTimeoutKills(t *testing.T) {
	e := newProcEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	s, err := e.client.Start(ctx, connect.NewRequest(sh("echo started; exec sleep 30")))
	if err != nil {
		t.Fatal(err)
	}
	r := collect[*pb.StartResponse](s)
	if connect.CodeOf(r.err) != connect.CodeDeadlineExceeded {
		t.Fatalf("stream error %v, want deadline_exceeded", r.err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		list, err := e.client.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Msg.Processes) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process outlived its timeout: %v", list.Msg.Processes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestProcessKeepalive(t *testing.T) {
	e := newProcEnv(t)
	cr := connect.NewRequest(startReq("/bin/sleep", "2.5"))
	cr.Header().Set("Keepalive-Ping-Interval", "1")
	s, err := e.client.Start(context.Background(), cr)
	if err != nil {
		t.Fatal(err)
	}
	r := collect[*pb.StartResponse](s)
	if r.keepalives < 1 || r.end == nil {
		t.Fatalf("keepalives %d end %v err %v", r.keepalives, r.end, r.err)
	}
}

func TestProcessConcurrent(t *testing.T) {
	e := newProcEnv(t)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.run(t, sh(fmt.Sprintf("echo out-%d; echo err-%d >&2; exit %d", i, i, i%7)))
			switch {
			case r.err != nil:
				errs <- r.err
			case r.stdout.String() != fmt.Sprintf("out-%d\n", i) || r.stderr.String() != fmt.Sprintf("err-%d\n", i):
				errs <- fmt.Errorf("%d: stdout %q stderr %q", i, r.stdout.String(), r.stderr.String())
			case r.end == nil || r.end.ExitCode != int32(i%7):
				errs <- fmt.Errorf("%d: end %+v", i, r.end)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestProcessStreamInput(t *testing.T) {
	e := newProcEnv(t)
	ctx := context.Background()
	s, err := e.client.Start(ctx, connect.NewRequest(startReq("/bin/cat")))
	if err != nil {
		t.Fatal(err)
	}
	s.Receive()
	pid := s.Msg().GetEvent().GetStart().GetPid()
	in := e.client.StreamInput(ctx)
	msgs := []*pb.StreamInputRequest{
		{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: pidSel(pid)}}},
		{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("a")}}}}},
		{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}},
		{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("b")}}}}},
	}
	for _, m := range msgs {
		if err := in.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := in.CloseAndReceive(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(pid)})); err != nil {
		t.Fatal(err)
	}
	if r := collect[*pb.StartResponse](s); r.stdout.String() != "ab" {
		t.Fatalf("stdout %q", r.stdout.String())
	}
}

// envelope frames one Connect streaming message.
func envelope(flags byte, payload []byte) []byte {
	b := make([]byte, 5+len(payload))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:5], uint32(len(payload)))
	copy(b[5:], payload)
	return b
}

// readFrames parses Connect streaming frames until the end-stream frame.
func readFrames(t *testing.T, r io.Reader) (msgs []map[string]any, end map[string]any) {
	t.Helper()
	br := bufio.NewReader(r)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("reading frame header: %v", err)
		}
		payload := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatalf("reading frame: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(payload, &m); err != nil {
			t.Fatalf("frame is not JSON: %q", payload)
		}
		if hdr[0]&0x02 != 0 {
			return msgs, m
		}
		msgs = append(msgs, m)
	}
}

// TestProcessRawConnectJSON drives envd the way the JS SDK does: a chunked
// application/connect+json request with one envelope, and a plain
// application/json unary call.
func TestProcessRawConnectJSON(t *testing.T) {
	e := newProcEnv(t)
	body := envelope(0, []byte(`{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi; exit 2"]},"stdin":false}`))
	req, _ := http.NewRequest(http.MethodPost, e.url+"/process.Process/Start", io.MultiReader(bytes.NewReader(body))) // no length: chunked
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	req.Header.Set("Connect-Timeout-Ms", "60000")
	req.Header.Set("Keepalive-Ping-Interval", "50")
	req.Header.Set("E2b-Sandbox-Id", "debug_sandbox_id")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	msgs, end := readFrames(t, resp.Body)
	if len(end) != 0 {
		t.Fatalf("end-stream %v, want {}", end)
	}
	if len(msgs) < 3 {
		t.Fatalf("messages %v", msgs)
	}
	first, _ := json.Marshal(msgs[0])
	if !strings.HasPrefix(string(first), `{"event":{"start":{"pid":`) {
		t.Fatalf("first message %s", first)
	}
	last, _ := json.Marshal(msgs[len(msgs)-1])
	if string(last) != `{"event":{"end":{"error":"exit status 2","exitCode":2,"exited":true,"status":"exit status 2"}}}` {
		t.Fatalf("last message %s", last)
	}
	data, _ := json.Marshal(msgs[1])
	if string(data) != `{"event":{"data":{"stdout":"aGkK"}}}` {
		t.Fatalf("data message %s", data)
	}

	// Unary errors carry the string code and the mapped HTTP status.
	tests := []struct {
		path, body string
		status     int
		code       string
	}{
		{"/process.Process/SendSignal", `{"process":{"pid":999999999},"signal":"SIGNAL_SIGKILL"}`, 404, "not_found"},
		{"/process.Process/SendSignal", `{"process":{"pid":1},"signal":"SIGNAL_UNSPECIFIED"}`, 501, "unimplemented"},
		{"/process.Process/List", `{not json`, 400, "invalid_argument"},
		{"/process.Process/List", `{"unknownField":1}`, 200, ""},
		{"/process.Process/SendInput", `{"process":{"pid":"abc"}}`, 400, "invalid_argument"},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest(http.MethodPost, e.url+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Connect-Protocol-Version", "1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if resp.StatusCode != tc.status || (tc.code != "" && m["code"] != tc.code) {
			t.Errorf("%s %s: status %d body %v, want %d %s", tc.path, tc.body, resp.StatusCode, m, tc.status, tc.code)
		}
	}
}

func TestProcessAccessToken(t *testing.T) {
	e := newProcEnv(t)
	post := func(path, body string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := post("/init", `{"accessToken":"s3cret","envVars":{"GLOBAL":"g"}}`, nil); st != 204 {
		t.Fatalf("init: %d", st)
	}
	st, body := post("/process.Process/List", `{}`, nil)
	if st != 401 || !strings.Contains(body, `"code":401`) {
		t.Fatalf("no token: %d %s", st, body)
	}
	if st, _ := post("/process.Process/List", `{}`, map[string]string{"X-Access-Token": "wrong"}); st != 401 {
		t.Fatalf("wrong token: %d", st)
	}
	if st, _ := post("/process.Process/List", `{}`, map[string]string{"X-Access-Token": "s3cret"}); st != 200 {
		t.Fatalf("right token: %d", st)
	}

	// The global environment reaches processes, and the connect-go client
	// is refused without the token.
	_, err := e.client.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("client without token: %v", err)
	}
	cr := connect.NewRequest(sh(`printf %s "$GLOBAL"`))
	cr.Header().Set("X-Access-Token", "s3cret")
	s, err := e.client.Start(context.Background(), cr)
	if err != nil {
		t.Fatal(err)
	}
	if r := collect[*pb.StartResponse](s); r.stdout.String() != "g" {
		t.Fatalf("global env: %q %v", r.stdout.String(), r.err)
	}
}

// A descendant that keeps the inherited stdout open must not hold the
// stream open after the command itself exited.
func TestProcessEndsDespiteInheritedPipes(t *testing.T) {
	e := newProcEnv(t)
	began := time.Now()
	r := e.run(t, sh("sleep 5 & echo hi"))
	if r.stdout.String() != "hi\n" || r.end == nil || r.end.ExitCode != 0 {
		t.Fatalf("stdout %q end %+v err %v", r.stdout.String(), r.end, r.err)
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Fatalf("stream lasted %v: it waited for the background child", d)
	}
}

// After SendSignal(SIGKILL) returns, the pid is already gone: a process the
// client starts next (E2B's SDK tests run `kill -0 <pid>`) cannot see it.
func TestProcessKillReapsBeforeReturning(t *testing.T) {
	e := newProcEnv(t)
	ctx := context.Background()
	for i := range 20 {
		sctx, cancel := context.WithCancel(ctx)
		s, err := e.client.Start(sctx, connect.NewRequest(startReq("/bin/sleep", "30")))
		if err != nil {
			t.Fatal(err)
		}
		s.Receive()
		pid := s.Msg().GetEvent().GetStart().GetPid()
		if _, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(int(pid), 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("round %d: pid %d right after the kill: %v, want ESRCH", i, pid, err)
		}
		cancel()
		s.Close()
	}
}

// E2B_SANDBOX says whether envd runs in a sandbox VM; RunDir gets the same
// facts as files.
func TestSandboxMarker(t *testing.T) {
	for _, outside := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "e2b")
		// A read-only file left by an earlier run is replaced.
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ".E2B_SANDBOX"), []byte("stale"), 0o444); err != nil {
			t.Fatal(err)
		}
		srv := envd.New(envd.Config{NotInSandbox: outside, RunDir: dir, SandboxID: "isbx1"})
		ts := httptest.NewServer(srv.Handler())
		e := &procEnv{url: ts.URL, client: processconnect.NewProcessClient(ts.Client(), ts.URL)}
		r := e.run(t, sh(`printf '%s' "$E2B_SANDBOX"`))
		ts.Close()
		srv.Close()
		want := fmt.Sprint(!outside)
		if r.stdout.String() != want {
			t.Fatalf("outside=%v: E2B_SANDBOX=%q, want %q", outside, r.stdout.String(), want)
		}
		for name, v := range map[string]string{".E2B_SANDBOX": want, ".E2B_SANDBOX_ID": "isbx1"} {
			p := filepath.Join(dir, name)
			b, err := os.ReadFile(p)
			if err != nil || string(b) != v {
				t.Fatalf("outside=%v: %s = %q (%v), want %q", outside, name, b, err, v)
			}
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o444 {
				t.Fatalf("%s: %v %v", name, fi, err)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, ".E2B_TEMPLATE_ID")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf(".E2B_TEMPLATE_ID without a template id: %v", err)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, "*tmp*")); len(left) != 0 {
			t.Fatalf("temporary files left: %v", left)
		}
	}
}

// A clone of a snapshot template is told its own identity by /init: the
// run files and the E2B_* variables follow it.
func TestInitRenamesSandbox(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "e2b")
	srv := envd.New(envd.Config{RunDir: dir, SandboxID: "isource", TemplateID: "tpl1"})
	defer srv.Close()
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	resp, err := http.Post(ts.URL+"/init", "application/json",
		strings.NewReader(`{"envVars":{"E2B_SANDBOX_ID":"iclone","E2B_TEMPLATE_ID":"tpl1","K":"v"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/init: %d", resp.StatusCode)
	}
	for name, want := range map[string]string{".E2B_SANDBOX_ID": "iclone", ".E2B_TEMPLATE_ID": "tpl1"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Fatalf("%s = %q (%v), want %q", name, b, err, want)
		}
	}
	e := &procEnv{url: ts.URL, client: processconnect.NewProcessClient(ts.Client(), ts.URL)}
	if r := e.run(t, sh(`printf '%s %s' "$E2B_SANDBOX_ID" "$K"`)); r.stdout.String() != "iclone v" {
		t.Fatalf("environment: %q", r.stdout.String())
	}
}
