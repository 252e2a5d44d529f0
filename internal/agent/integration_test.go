package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/vmm"
)

// The agent's tests run their own pool of network slots, with names and
// address ranges that no other package's tests use.
var testPool = hosttest.AgentPool

const token = hosttest.AgentToken

// env is an agent over a real sandbox manager, served over h2c, and a
// client of it.
type env struct {
	client  *agentclient.Client
	url     string
	driver  vmm.Driver
	dataDir string
	runDir  string
	logs    *hosttest.SyncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	a := hosttest.StartAgent(t, testPool)
	e := &env{url: a.URL, driver: a.Driver, dataDir: a.DataDir, runDir: a.RunDir, logs: a.Logs}
	e.client = e.newClient(t, token)
	return e
}

func (e *env) newClient(t *testing.T, tok string) *agentclient.Client {
	t.Helper()
	c, err := agentclient.New(agentclient.Endpoint{URL: e.url, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// execResult is a collected Exec stream.
type execResult struct {
	pid                 uint32
	stdout, stderr, pty string
	ended               *pb.ExecEnded
}

func run(ctx context.Context, c *agentclient.Client, req *pb.ExecRequest) (*execResult, error) {
	st, err := c.Exec(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return collect(st)
}

func collect(st *connect.ServerStreamForClient[pb.ExecResponse]) (*execResult, error) {
	r := &execResult{}
	var out, errb, pty strings.Builder
	for st.Receive() {
		switch ev := st.Msg().Event.(type) {
		case *pb.ExecResponse_Started:
			r.pid = ev.Started.Pid
		case *pb.ExecResponse_Output:
			out.Write(ev.Output.GetStdout())
			errb.Write(ev.Output.GetStderr())
			pty.Write(ev.Output.GetPty())
		case *pb.ExecResponse_Ended:
			r.ended = ev.Ended
		}
	}
	if err := st.Err(); err != nil {
		return nil, err
	}
	if r.ended == nil {
		return nil, errors.New("no end event")
	}
	r.stdout, r.stderr, r.pty = out.String(), errb.String(), pty.String()
	return r, nil
}

func shell(t *testing.T, ctx context.Context, c *agentclient.Client, id, script string) string {
	t.Helper()
	r, err := run(ctx, c, &pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh", Args: []string{"-c", script}})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	if r.ended.ExitCode != 0 {
		t.Fatalf("exec %q: exit %d: %s%s", script, r.ended.ExitCode, r.stdout, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

func writeFile(ctx context.Context, c *agentclient.Client, id, path string, data []byte, chunk int) (*pb.WriteFileResponse, error) {
	return writeFileSized(ctx, c, id, path, data, chunk, nil)
}

// writeFileSized is writeFile with the header's size (nil: none).
func writeFileSized(ctx context.Context, c *agentclient.Client, id, path string, data []byte, chunk int, size *uint64) (*pb.WriteFileResponse, error) {
	ws := c.WriteFile(ctx)
	if err := ws.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Header{Header: &pb.WriteFileHeader{SandboxId: id, Path: path, Size: size}}}); err != nil {
		_, err = ws.CloseAndReceive()
		return nil, err
	}
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		if err := ws.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Chunk{Chunk: data[off:end]}}); err != nil {
			break // the error comes with CloseAndReceive
		}
	}
	res, err := ws.CloseAndReceive()
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func readFile(ctx context.Context, c *agentclient.Client, id, path string) ([]byte, int, error) {
	st, err := c.ReadFile(ctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: id, Path: path}))
	if err != nil {
		return nil, 0, err
	}
	defer st.Close()
	var b bytes.Buffer
	msgs := 0
	for st.Receive() {
		b.Write(st.Msg().Chunk)
		msgs++
	}
	return b.Bytes(), msgs, st.Err()
}

// must returns a call's response message, failing the test on an error:
// must(c.Call(ctx, req))(t, "call").
func must[T any](res *connect.Response[T], err error) func(t *testing.T, what string) *T {
	return func(t *testing.T, what string) *T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return res.Msg
	}
}

func wantErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: got %v, want %v", what, err, kind)
	}
}

// TestAgentLifecycle drives a real sandbox through the agent, as the
// control plane will: create → exec → files → pause → resume → snapshot
// template → create from it → destroy.
func TestAgentLifecycle(t *testing.T) {
	e := newEnv(t)
	c := e.client
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// Authentication: a wrong or missing token gets nothing.
	for _, tok := range []string{"wrong-token-0123456789", token + "x"} {
		_, err := e.newClient(t, tok).ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
		wantErr(t, "list with a wrong token", err, agentclient.ErrUnauthenticated)
	}

	hi := must(c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})))(t, "host info")
	if hi.Revision != agent.Revision || hi.Vmm != "qemu" || hi.Accel == "" || hi.Capacity.GetVcpus() != 8 ||
		hi.Capacity.GetMemoryMb() != 2048 || hi.Used.GetVcpus() != 0 || hi.EnvdVersion == "" ||
		!slices.Equal(hi.BuiltinTemplates, image.Templates()) {
		t.Fatalf("host info: %v", hi)
	}

	// Create.
	id := "agt" + strings.ToLower(rand.Text()[:12])
	create := &pb.CreateSandboxRequest{
		SandboxId: id, Template: "minimal", Vcpus: 1, MemoryMb: 256,
		EnvVars:     map[string]string{"GREETING": "hello"},
		AccessToken: "envd-token-" + id,
		Metadata:    map[string]string{"team": "t1"},
		Timeout:     durationpb.New(time.Hour),
	}
	created := must(c.CreateSandbox(ctx, connect.NewRequest(create)))(t, "create")
	checkPhases(t, created.Phases, "prepare", "slot", "boot", "envd", "init", "commit")
	sb := created.Sandbox
	if sb.Id != id || sb.State != pb.SandboxState_SANDBOX_STATE_RUNNING || sb.EnvdUrl == "" ||
		sb.HostAddr == "" || sb.Metadata["team"] != "t1" || sb.Template != "minimal" || sb.Vcpus != 1 || sb.MemoryMb != 256 {
		t.Fatalf("created: %v", sb)
	}
	_, err := c.CreateSandbox(ctx, connect.NewRequest(create))
	wantErr(t, "create with a used ID", err, agentclient.ErrAlreadyExists)
	_, err = c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "Bad-ID"}))
	wantErr(t, "create with a bad ID", err, agentclient.ErrInvalid)
	_, err = c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{Template: "no-such-template"}))
	wantErr(t, "create from a missing template", err, agentclient.ErrNotFound)
	_, err = c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{MemoryMb: 4096}))
	wantErr(t, "create beyond capacity", err, agentclient.ErrCapacity)
	hi = must(c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})))(t, "host info")
	if hi.Used.GetVcpus() != 1 || hi.Used.GetMemoryMb() != 256 || hi.RunningSandboxes != 1 {
		t.Fatalf("host info with a sandbox: %v", hi)
	}

	// Exec: output, exit code, environment.
	r, err := run(ctx, c, &pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh",
		Args: []string{"-c", `echo "$GREETING $E2B_SANDBOX_ID $EXTRA"; echo oops >&2; exit 3`},
		Envs: map[string]string{"EXTRA": "x"}, Cwd: "/tmp"})
	if err != nil {
		t.Fatal(err)
	}
	if r.pid == 0 || r.stdout != "hello "+id+" x\n" || r.stderr != "oops\n" || r.ended.ExitCode != 3 || !r.ended.Exited {
		t.Fatalf("exec: pid %d stdout %q stderr %q end %v", r.pid, r.stdout, r.stderr, r.ended)
	}
	_, err = run(ctx, c, &pb.ExecRequest{SandboxId: id, Cmd: "/no/such/binary"})
	wantErr(t, "exec of a missing binary", err, agentclient.ErrInvalid)
	_, err = run(ctx, c, &pb.ExecRequest{SandboxId: "nosuchsandbox", Cmd: "true"})
	wantErr(t, "exec in a missing sandbox", err, agentclient.ErrNotFound)

	// Exec with stdin, fed through SendExecInput and closed.
	st, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh",
		Args: []string{"-c", "tr a-z A-Z"}, Stdin: true}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || st.Msg().GetStarted() == nil {
		t.Fatalf("no start event: %v", st.Err())
	}
	pid := st.Msg().GetStarted().Pid
	for _, chunk := range []string{"hello ", "stdin\n"} {
		must(c.SendExecInput(ctx, connect.NewRequest(&pb.SendExecInputRequest{SandboxId: id, Pid: pid, Data: []byte(chunk)})))(t, "send input")
	}
	must(c.CloseExecInput(ctx, connect.NewRequest(&pb.CloseExecInputRequest{SandboxId: id, Pid: pid})))(t, "close input")
	r, err = collect(st)
	st.Close()
	if err != nil || r.stdout != "HELLO STDIN\n" || r.ended.ExitCode != 0 {
		t.Fatalf("stdin exec: %+v %v", r, err)
	}

	// A PTY, resized while the process runs.
	st, err = c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh",
		Args: []string{"-c", "read x; stty size"}, Pty: &pb.PtySize{Cols: 80, Rows: 24}}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || st.Msg().GetStarted() == nil {
		t.Fatalf("no start event: %v", st.Err())
	}
	pid = st.Msg().GetStarted().Pid
	must(c.ResizeExec(ctx, connect.NewRequest(&pb.ResizeExecRequest{SandboxId: id, Pid: pid, Size: &pb.PtySize{Cols: 100, Rows: 30}})))(t, "resize")
	must(c.SendExecInput(ctx, connect.NewRequest(&pb.SendExecInputRequest{SandboxId: id, Pid: pid, Data: []byte("go\n"), Pty: true})))(t, "pty input")
	r, err = collect(st)
	st.Close()
	if err != nil || !strings.Contains(r.pty, "30 100") || r.ended.ExitCode != 0 {
		t.Fatalf("pty exec: %+v %v", r, err)
	}

	// A signal ends a process; a timeout kills one.
	st, err = c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: "sleep", Args: []string{"600"}}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || st.Msg().GetStarted() == nil {
		t.Fatalf("no start event: %v", st.Err())
	}
	must(c.SignalExec(ctx, connect.NewRequest(&pb.SignalExecRequest{SandboxId: id, Pid: st.Msg().GetStarted().Pid, Signal: pb.Signal_SIGNAL_SIGKILL})))(t, "signal")
	r, err = collect(st)
	st.Close()
	if err != nil || r.ended.Exited {
		t.Fatalf("killed exec: %+v %v", r, err)
	}
	_, err = c.SignalExec(ctx, connect.NewRequest(&pb.SignalExecRequest{SandboxId: id, Pid: 999999, Signal: pb.Signal_SIGNAL_SIGTERM}))
	wantErr(t, "signal to a missing process", err, agentclient.ErrNotFound)
	started := time.Now()
	r, err = run(ctx, c, &pb.ExecRequest{SandboxId: id, Cmd: "sleep", Args: []string{"600"}, Timeout: durationpb.New(2 * time.Second)})
	if err != nil || !r.ended.TimedOut || time.Since(started) > time.Minute {
		t.Fatalf("exec with a timeout: %+v %v after %v", r, err, time.Since(started))
	}

	// Files: a multi-chunk upload, read back in chunks.
	data := make([]byte, 3<<20+12345)
	_, _ = rand.Read(data)
	wres, err := writeFile(ctx, c, id, "/root/dir/blob.bin", data, 1<<20)
	if err != nil || wres.BytesWritten != uint64(len(data)) || wres.Path != "/root/dir/blob.bin" {
		t.Fatalf("write: %v %v", wres, err)
	}
	got, msgs, err := readFile(ctx, c, id, "/root/dir/blob.bin")
	if err != nil || !bytes.Equal(got, data) || msgs < 2 {
		t.Fatalf("read: %d bytes in %d messages (want %d), %v", len(got), msgs, len(data), err)
	}
	if sum := shell(t, ctx, c, id, "wc -c < /root/dir/blob.bin"); sum != fmt.Sprint(len(data)) {
		t.Fatalf("size in the guest: %s", sum)
	}
	// With its size announced, the same content (envd splices it: over
	// 1 MiB); a size the stream does not match is refused, and the new
	// file is not left behind.
	size := func(n int) *uint64 { u := uint64(n); return &u }
	wres, err = writeFileSized(ctx, c, id, "/root/dir/sized.bin", data, 1<<20, size(len(data)))
	if err != nil || wres.BytesWritten != uint64(len(data)) {
		t.Fatalf("sized write: %v %v", wres, err)
	}
	if got, _, err := readFile(ctx, c, id, "/root/dir/sized.bin"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("sized write read back: %d bytes (want %d), %v", len(got), len(data), err)
	}
	for _, tc := range []struct {
		name string
		size int
	}{
		{"a content shorter than its size", len(data) + 1},
		{"a content longer than its size", len(data) - 1},
		{"a content longer than its size, by whole chunks", 3 << 20},
		{"a content where none was announced", 0},
	} {
		_, err := writeFileSized(ctx, c, id, "/root/dir/mismatch.bin", data, 1<<20, size(tc.size))
		wantErr(t, tc.name, err, agentclient.ErrInvalid)
		// (envd removes the file once it sees the request cut short.)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			out := shell(t, ctx, c, id, "ls /root/dir")
			if out == "blob.bin\nsized.bin" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s: /root/dir holds %q", tc.name, out)
			}
		}
	}
	if _, err := writeFileSized(ctx, c, id, "/root/empty", nil, 1, size(0)); err != nil {
		t.Fatal(err)
	}
	if got, _, err := readFile(ctx, c, id, "/root/empty"); err != nil || len(got) != 0 {
		t.Fatalf("empty file: %q %v", got, err)
	}
	_, _, err = readFile(ctx, c, id, "/root/missing")
	wantErr(t, "read of a missing file", err, agentclient.ErrNotFound)
	_, _, err = readFile(ctx, c, id, "/root/dir")
	wantErr(t, "read of a directory", err, agentclient.ErrInvalid)

	// Ping and timeout.
	must(c.PingSandbox(ctx, connect.NewRequest(&pb.PingSandboxRequest{SandboxId: id})))(t, "ping")
	must(c.SetSandboxTimeout(ctx, connect.NewRequest(&pb.SetSandboxTimeoutRequest{SandboxId: id, Timeout: durationpb.New(30 * time.Minute)})))(t, "set timeout")
	_, err = c.PingSandbox(ctx, connect.NewRequest(&pb.PingSandboxRequest{SandboxId: "nosuchsandbox"}))
	wantErr(t, "ping of a missing sandbox", err, agentclient.ErrNotFound)

	// Pause: the machine stops; exec and a second pause are refused.
	shell(t, ctx, c, id, "echo before-pause > /root/state.txt")
	sb = must(c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id})))(t, "pause").Sandbox
	if sb.State != pb.SandboxState_SANDBOX_STATE_PAUSED || sb.EnvdUrl != "" {
		t.Fatalf("paused: %v", sb)
	}
	_, err = c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id}))
	wantErr(t, "pause of a paused sandbox", err, agentclient.ErrConflict)
	_, err = run(ctx, c, &pb.ExecRequest{SandboxId: id, Cmd: "true"})
	wantErr(t, "exec in a paused sandbox", err, agentclient.ErrConflict)
	_, err = writeFile(ctx, c, id, "/root/x", []byte("x"), 1)
	wantErr(t, "write in a paused sandbox", err, agentclient.ErrConflict)
	list := must(c.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{})))(t, "list").Sandboxes
	if len(list) != 1 || list[0].Id != id || list[0].State != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("list: %v", list)
	}
	hi = must(c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})))(t, "host info")
	if hi.Used.GetVcpus() != 0 || hi.PausedSandboxes != 1 || hi.Used.GetDiskMb() == 0 {
		t.Fatalf("host info with a paused sandbox: %v", hi)
	}

	// Resume: memory and files as they were.
	sb = must(c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id, Timeout: durationpb.New(time.Hour)})))(t, "resume").Sandbox
	if sb.State != pb.SandboxState_SANDBOX_STATE_RUNNING || sb.EnvdUrl == "" {
		t.Fatalf("resumed: %v", sb)
	}
	_, err = c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id}))
	wantErr(t, "resume of a running sandbox", err, agentclient.ErrConflict)
	if got := shell(t, ctx, c, id, "cat /root/state.txt"); got != "before-pause" {
		t.Fatalf("after resume: %q", got)
	}
	if got, _, err := readFile(ctx, c, id, "/root/dir/blob.bin"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob after resume: %d bytes, %v", len(got), err)
	}

	// Snapshot template, and a sandbox from it that sees the state.
	shell(t, ctx, c, id, "echo in-template > /root/tpl.txt")
	tpl := must(c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: id, Name: "agent-test-tpl"})))(t, "snapshot").Template
	if tpl.Name != "agent-test-tpl" || tpl.Kind != pb.TemplateKind_TEMPLATE_KIND_SNAPSHOT || tpl.FromSandbox != id ||
		tpl.Vcpus != 1 || tpl.MemoryMb != 256 || tpl.DiskSizeBytes == 0 || tpl.StoredBytes == 0 || tpl.Builtin {
		t.Fatalf("template: %v", tpl)
	}
	_, err = c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: id, Name: "../etc"}))
	wantErr(t, "snapshot with a bad name", err, agentclient.ErrInvalid)
	tpls := must(c.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{})))(t, "templates").Templates
	var names []string
	for _, tp := range tpls {
		names = append(names, fmt.Sprintf("%s/%v/%v", tp.Name, tp.Kind, tp.Builtin))
	}
	if strings.Join(names, " ") != "agent-test-tpl/TEMPLATE_KIND_SNAPSHOT/false minimal/TEMPLATE_KIND_IMAGE/true" {
		t.Fatalf("templates: %v", names)
	}
	cloned := must(c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{
		Template: "agent-test-tpl", AccessToken: "clone-token",
	})))(t, "create from the template")
	checkPhases(t, cloned.Phases, "prepare", "slot", "restore", "envd", "init", "commit")
	clone := cloned.Sandbox
	if clone.Id == "" || clone.Id == id || clone.Template != "agent-test-tpl" || clone.State != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("clone: %v", clone)
	}
	if got := shell(t, ctx, c, clone.Id, "cat /root/tpl.txt /root/state.txt"); got != "in-template\nbefore-pause" {
		t.Fatalf("clone sees %q", got)
	}
	shell(t, ctx, c, clone.Id, "echo clone > /root/tpl.txt")
	if got := shell(t, ctx, c, id, "cat /root/tpl.txt"); got != "in-template" {
		t.Fatalf("the source sees the clone's write: %q", got)
	}

	// Built-in images are not deletable; a template is, once.
	_, err = c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: "minimal"}))
	wantErr(t, "delete of a built-in image", err, agentclient.ErrConflict)
	must(c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: "agent-test-tpl"})))(t, "delete template")
	_, err = c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: "agent-test-tpl"}))
	wantErr(t, "second delete of a template", err, agentclient.ErrNotFound)
	if got := shell(t, ctx, c, clone.Id, "cat /root/tpl.txt"); got != "clone" {
		t.Fatalf("the clone after its template was deleted: %q", got)
	}

	// Destroy is idempotent.
	for _, sid := range []string{clone.Id, id, id, "neverexisted"} {
		must(c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: sid})))(t, "destroy "+sid)
	}
	_, err = c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: id}))
	wantErr(t, "get of a destroyed sandbox", err, agentclient.ErrNotFound)
	if list := must(c.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{})))(t, "list").Sandboxes; len(list) != 0 {
		t.Fatalf("left after destroy: %v", list)
	}
	hosttest.AssertNoVMM(t, e.runDir, e.dataDir)
	if strings.Contains(e.logs.String(), "envd-token-") {
		t.Fatal("an access token was logged")
	}
}

// checkPhases asserts that a create answered its phases, in order, each
// with a duration.
func checkPhases(t *testing.T, got []*pb.CreatePhase, want ...string) {
	t.Helper()
	var names []string
	for _, p := range got {
		names = append(names, p.GetName())
		if p.GetTook() == nil || p.GetTook().AsDuration() < 0 {
			t.Errorf("phase %s took %v", p.GetName(), p.GetTook())
		}
	}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("create phases %v, want %v", names, want)
	}
}
