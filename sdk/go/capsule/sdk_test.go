package capsule_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/controlplane/cptest"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/sdk/go/capsule"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}

// output collects a callback's chunks.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) add(b []byte) { o.mu.Lock(); o.buf.Write(b); o.mu.Unlock() }
func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSDKAgainstRealStack drives every SDK method against a real control
// plane, PostgreSQL and QEMU sandboxes, as a user's program would.
func TestSDKAgainstRealStack(t *testing.T) {
	s := cptest.Start(t, hosttest.SDKPool)
	ctx := context.Background()
	session, key := s.Account(t, "sdk@example.com")
	_, otherKey := s.Account(t, "intruder@example.com")
	c, err := capsule.New(s.URL, capsule.WithAPIKey(key))
	if err != nil {
		t.Fatal(err)
	}
	other, err := capsule.New(s.URL, capsule.WithAPIKey(otherKey))
	if err != nil {
		t.Fatal(err)
	}

	var sb capsule.Sandbox
	t.Run("create with every option", func(t *testing.T) {
		off := false
		sb, err = c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "minimal", VCPUs: 1, MemoryMB: 256, Timeout: 10 * time.Minute,
			EnvVars: map[string]string{"GREETING": "hello"}, Metadata: map[string]string{"suite": "sdk"}, AutoPause: &off})
		if err != nil {
			t.Fatal(err)
		}
		if sb.State != capsule.StateRunning || sb.ID == "" || sb.VCPUs != 1 || sb.MemoryMB != 256 || sb.AutoPause ||
			sb.Timeout != 10*time.Minute || sb.Metadata["suite"] != "sdk" || sb.EnvdAccessToken == "" || sb.EndAt.IsZero() {
			t.Fatalf("created %+v", sb)
		}
	})
	if sb.ID == "" {
		t.FailNow()
	}
	t.Cleanup(func() { _ = c.Sandboxes.Kill(context.Background(), sb.ID) })
	t.Run("bad input is ErrInvalid and another team's sandbox ErrNotFound", func(t *testing.T) {
		if _, err := c.Sandboxes.Create(ctx, capsule.CreateOptions{VCPUs: -1}); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("vcpus -1: %v", err)
		}
		if _, err := other.Sandboxes.Get(ctx, sb.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's get: %v", err)
		}
		if err := other.Sandboxes.Kill(ctx, sb.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's kill: %v", err)
		}
		if _, err := other.Commands.Run(ctx, sb.ID, "true", capsule.RunOptions{}); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's run: %v", err)
		}
		if _, err := other.Files.Read(ctx, sb.ID, "/etc/hostname", ""); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's read: %v", err)
		}
	})
	t.Run("get", func(t *testing.T) {
		got, err := c.Sandboxes.Get(ctx, sb.ID)
		if err != nil || got.ID != sb.ID || got.State != capsule.StateRunning {
			t.Fatalf("get = %+v, %v", got, err)
		}
	})
	t.Run("metrics: live samples, another team's 404", func(t *testing.T) {
		var ms capsule.MetricSeries
		waitFor(t, 30*time.Second, "a metric sample", func() bool {
			ms, err = c.Sandboxes.Metrics(ctx, sb.ID, capsule.Range5m)
			return err != nil || len(ms.Points) > 0
		})
		if err != nil || ms.Source != "live" || ms.Range != "5m" || ms.Step <= 0 || ms.Points[0].MemRSSBytes <= 0 {
			t.Fatalf("metrics = %+v, %v", ms, err)
		}
		if _, err := c.Sandboxes.Metrics(ctx, sb.ID, "7d"); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("range 7d: %v", err)
		}
		if _, err := other.Sandboxes.Metrics(ctx, sb.ID, ""); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's metrics: %v", err)
		}
	})
	t.Run("network rules: set, read back, refused input changes nothing", func(t *testing.T) {
		want := capsule.NetworkRules{AllowInternetAccess: false, AllowOut: []string{"10.0.0.0/8", "*.example.com"}, DenyOut: []string{}}
		got, err := c.Sandboxes.SetNetwork(ctx, sb.ID, want)
		if err != nil || got.AllowInternetAccess || len(got.AllowOut) != 2 {
			t.Fatalf("set network = %+v, %v", got, err)
		}
		if _, err := c.Sandboxes.SetNetwork(ctx, sb.ID, capsule.NetworkRules{AllowOut: []string{"not a rule!"}}); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("a bad rule: %v", err)
		}
		if _, err := other.Sandboxes.SetNetwork(ctx, sb.ID, capsule.NetworkRules{AllowInternetAccess: true}); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's network: %v", err)
		}
		got, err = c.Sandboxes.Network(ctx, sb.ID)
		if err != nil || got.AllowInternetAccess || strings.Join(got.AllowOut, ",") != "10.0.0.0/8,*.example.com" {
			t.Fatalf("network = %+v, %v", got, err)
		}
		if _, err := c.Sandboxes.SetNetwork(ctx, sb.ID, capsule.NetworkRules{AllowInternetAccess: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("run streams output and returns the exit code", func(t *testing.T) {
		var out, errOut output
		res, err := c.Commands.Run(ctx, sb.ID, `echo "$GREETING $X"; echo oops >&2; exit 3`, capsule.RunOptions{
			CommandOptions: capsule.CommandOptions{Env: map[string]string{"X": "world"}, OnStdout: out.add, OnStderr: errOut.add},
		})
		if err != nil || res.ExitCode != 3 || string(res.Stdout) != "hello world\n" || string(res.Stderr) != "oops\n" ||
			out.String() != "hello world\n" || errOut.String() != "oops\n" {
			t.Fatalf("run = %+v (callbacks %q %q), %v", res, out.String(), errOut.String(), err)
		}
	})
	t.Run("run with stdin", func(t *testing.T) {
		in := bytes.Repeat([]byte("0123456789abcdef"), 128<<10) // 2 MiB: several stdin messages
		res, err := c.Commands.Run(ctx, sb.ID, "wc -c", capsule.RunOptions{Stdin: in})
		if err != nil || res.ExitCode != 0 || strings.TrimSpace(string(res.Stdout)) != "2097152" {
			t.Fatalf("wc -c = %+v, %v", res, err)
		}
	})
	t.Run("start, send stdin, wait", func(t *testing.T) {
		var out output
		p, err := c.Commands.Start(ctx, sb.ID, `read line; echo "got:$line"`, capsule.StartOptions{Stdin: true,
			CommandOptions: capsule.CommandOptions{OnStdout: out.add}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if p.PID <= 1 {
			t.Fatalf("pid %d", p.PID)
		}
		if err := p.SendStdin(ctx, []byte("abc\n")); err != nil {
			t.Fatal(err)
		}
		res, err := p.Wait(ctx)
		if err != nil || res.ExitCode != 0 || out.String() != "got:abc\n" {
			t.Fatalf("wait = %+v %q, %v", res, out.String(), err)
		}
	})
	t.Run("signal", func(t *testing.T) {
		var out output
		p, err := c.Commands.Start(ctx, sb.ID, `trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 0.1; done`,
			capsule.StartOptions{CommandOptions: capsule.CommandOptions{OnStdout: out.add}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		waitFor(t, 30*time.Second, "ready", func() bool { return strings.Contains(out.String(), "ready") })
		if err := p.Signal(ctx, capsule.SIGTERM); err != nil {
			t.Fatal(err)
		}
		res, err := p.Wait(ctx)
		if err != nil || res.ExitCode != 7 || !strings.Contains(out.String(), "term") {
			t.Fatalf("after SIGTERM: %+v %q, %v", res, out.String(), err)
		}
	})
	t.Run("timeout kills the process", func(t *testing.T) {
		res, err := c.Commands.Run(ctx, sb.ID, "sleep 30", capsule.RunOptions{CommandOptions: capsule.CommandOptions{Timeout: time.Second}})
		if err != nil || !res.TimedOut {
			t.Fatalf("run = %+v, %v", res, err)
		}
	})
	t.Run("cancelling the context kills the process", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		var out output
		p, err := c.Commands.Start(cctx, sb.ID, `echo $$ > /tmp/victim; echo up; exec sleep 300`,
			capsule.StartOptions{CommandOptions: capsule.CommandOptions{OnStdout: out.add}})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "up", func() bool { return strings.Contains(out.String(), "up") })
		cancel()
		<-p.Done()
		waitFor(t, 30*time.Second, "the process to die", func() bool {
			res, err := c.Commands.Run(ctx, sb.ID, `kill -0 "$(cat /tmp/victim)" 2>/dev/null && echo alive || echo gone`, capsule.RunOptions{})
			return err == nil && strings.TrimSpace(string(res.Stdout)) == "gone"
		})
	})
	t.Run("terminal", func(t *testing.T) {
		var out output
		term, err := c.Commands.StartPTY(ctx, sb.ID, capsule.PTYOptions{Cols: 100, Rows: 30, Cmd: "sh",
			CommandOptions: capsule.CommandOptions{OnStdout: out.add}})
		if err != nil {
			t.Fatal(err)
		}
		defer term.Close()
		if _, err := term.Write([]byte("stty size\n")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "30 100", func() bool { return strings.Contains(out.String(), "30 100") })
		if err := term.Resize(ctx, 120, 40); err != nil {
			t.Fatal(err)
		}
		if _, err := term.Write([]byte("stty size; exit 5\n")); err != nil {
			t.Fatal(err)
		}
		res, err := term.Wait(ctx)
		if err != nil || res.ExitCode != 5 || !strings.Contains(out.String(), "40 120") {
			t.Fatalf("terminal = %+v %q, %v", res, out.String(), err)
		}
	})
	t.Run("kept terminal: attach after the session ends, same shell and scrollback", func(t *testing.T) {
		var out output
		sctx, end := context.WithCancel(ctx)
		term, err := c.Commands.StartPTY(sctx, sb.ID, capsule.PTYOptions{Cmd: "sh", Keep: time.Minute,
			CommandOptions: capsule.CommandOptions{OnStdout: out.add}})
		if err != nil {
			t.Fatal(err)
		}
		pid := term.PID
		if _, err := term.Write([]byte("echo before-$$\n")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "before-", func() bool { return strings.Contains(out.String(), fmt.Sprintf("before-%d", pid)) })
		end() // the connection goes; the shell stays
		<-term.Done()
		if _, err := other.Commands.AttachPTY(ctx, sb.ID, pid, capsule.CommandOptions{}); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("another team attaches: %v", err)
		}
		var again output
		term2, err := c.Commands.AttachPTY(ctx, sb.ID, pid, capsule.CommandOptions{OnStdout: again.add})
		if err != nil {
			t.Fatal(err)
		}
		defer term2.Close()
		if _, err := term2.Write([]byte("echo after-$$; exit 3\n")); err != nil {
			t.Fatal(err)
		}
		res, err := term2.Wait(ctx)
		if err != nil || res.ExitCode != 3 || term2.PID != pid ||
			!strings.Contains(again.String(), fmt.Sprintf("before-%d", pid)) || !strings.Contains(again.String(), fmt.Sprintf("after-%d", pid)) {
			t.Fatalf("attached terminal = %+v pid %d %q, %v", res, term2.PID, again.String(), err)
		}
		if _, err := c.Commands.AttachPTY(ctx, sb.ID, pid, capsule.CommandOptions{}); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("attach to an ended terminal: %v", err)
		}
	})
	t.Run("kept background command: attach with stdout and stderr apart, then its input", func(t *testing.T) {
		var out output
		sctx, end := context.WithCancel(ctx)
		pr, err := c.Commands.Start(sctx, sb.ID, "echo out1; echo err1 >&2; read x; echo got-$x", capsule.StartOptions{
			Stdin: true, Keep: time.Minute, CommandOptions: capsule.CommandOptions{OnStdout: out.add}})
		if err != nil {
			t.Fatal(err)
		}
		pid := pr.PID
		waitFor(t, 30*time.Second, "out1", func() bool { return strings.Contains(out.String(), "out1") })
		end()
		<-pr.Done()
		var out2, errs2 output
		pr2, err := c.Commands.Attach(ctx, sb.ID, pid, capsule.CommandOptions{OnStdout: out2.add, OnStderr: errs2.add})
		if err != nil {
			t.Fatal(err)
		}
		defer pr2.Close()
		waitFor(t, 30*time.Second, "the replayed output", func() bool { return out2.String() == "out1\n" && errs2.String() == "err1\n" })
		if err := pr2.SendStdin(ctx, []byte("yes\n")); err != nil {
			t.Fatal(err)
		}
		res, err := pr2.Wait(ctx)
		if err != nil || res.ExitCode != 0 || out2.String() != "out1\ngot-yes\n" || errs2.String() != "err1\n" {
			t.Fatalf("attached command = %+v %q %q, %v", res, out2.String(), errs2.String(), err)
		}
	})
	t.Run("files", func(t *testing.T) {
		data := make([]byte, 5<<20)
		_, _ = rand.Read(data)
		n, err := c.Files.Write(ctx, sb.ID, "/root/sdk/blob.bin", "", bytes.NewReader(data))
		if err != nil || n != int64(len(data)) {
			t.Fatalf("write = %d, %v", n, err)
		}
		f, err := c.Files.Open(ctx, sb.ID, "/root/sdk/blob.bin", "")
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil || f.Size != int64(len(data)) || !bytes.Equal(h.Sum(nil), sum(data)) {
			t.Fatalf("read back: size %d, %v", f.Size, err)
		}
		if err := c.Files.MakeDir(ctx, sb.ID, "/root/sdk/sub/deeper", ""); err != nil {
			t.Fatal(err)
		}
		entries, err := c.Files.List(ctx, sb.ID, "/root/sdk", "", 1)
		if err != nil || len(entries) != 2 {
			t.Fatalf("list = %+v, %v", entries, err)
		}
		types := map[string]string{}
		for _, e := range entries {
			types[e.Name] = e.Type
		}
		if types["blob.bin"] != "file" || types["sub"] != "dir" {
			t.Fatalf("entries %+v", entries)
		}
		if err := c.Files.Remove(ctx, sb.ID, "/root/sdk/blob.bin", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Files.Read(ctx, sb.ID, "/root/sdk/blob.bin", ""); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("read after remove: %v", err)
		}
		if _, err := c.Files.Write(ctx, sb.ID, "/root/keep.txt", "", strings.NewReader("kept\n")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("watch a directory", func(t *testing.T) {
		if _, err := c.Files.Watch(ctx, sb.ID, "/root/nowhere", capsule.WatchOptions{}); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("watch a missing directory: %v", err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		w, err := c.Files.Watch(wctx, sb.ID, "/root/sdk", capsule.WatchOptions{Recursive: true})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := c.Files.Write(ctx, sb.ID, "/root/sdk/sub/w.txt", "", strings.NewReader("w")); err != nil {
			t.Fatal(err)
		}
		if err := c.Files.Remove(ctx, sb.ID, "/root/sdk/sub/w.txt", ""); err != nil {
			t.Fatal(err)
		}
		var got []capsule.FileEvent
		for len(got) < 2 {
			ev, err := w.Next()
			if err != nil {
				t.Fatalf("after %+v: %v", got, err)
			}
			if ev.Op != "write" {
				got = append(got, ev)
			}
		}
		if want := []capsule.FileEvent{{Op: "create", Name: "sub/w.txt"}, {Op: "remove", Name: "sub/w.txt"}}; !slices.Equal(got, want) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
		w.Close()
		if _, err := w.Next(); err == nil {
			t.Fatal("Next after Close found an event")
		}
	})
	t.Run("timeout and keep-alive", func(t *testing.T) {
		got, err := c.Sandboxes.SetTimeout(ctx, sb.ID, time.Hour)
		if err != nil || got.Timeout != time.Hour || time.Until(got.EndAt) < 59*time.Minute {
			t.Fatalf("set timeout = %+v, %v", got, err)
		}
		got, err = c.Sandboxes.KeepAlive(ctx, sb.ID)
		if err != nil || time.Until(got.EndAt) < 59*time.Minute {
			t.Fatalf("keep alive = %+v, %v", got, err)
		}
	})
	t.Run("pause, connect resumes", func(t *testing.T) {
		got, err := c.Sandboxes.Pause(ctx, sb.ID)
		if err != nil || got.State != capsule.StatePaused {
			t.Fatalf("pause = %+v, %v", got, err)
		}
		if _, err := c.Commands.Run(ctx, sb.ID, "true", capsule.RunOptions{}); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("run while paused: %v", err)
		}
		got, err = c.Sandboxes.Connect(ctx, sb.ID)
		if err != nil || got.State != capsule.StateRunning {
			t.Fatalf("connect = %+v, %v", got, err)
		}
		b, err := c.Files.Read(ctx, sb.ID, "/root/keep.txt", "")
		if err != nil || string(b) != "kept\n" {
			t.Fatalf("file after resume = %q, %v", b, err)
		}
	})
	var second capsule.Sandbox
	t.Cleanup(func() {
		if second.ID != "" {
			_ = c.Sandboxes.Kill(context.Background(), second.ID)
		}
	})
	t.Run("snapshot and create from it", func(t *testing.T) {
		snap, err := c.Snapshots.Create(ctx, sb.ID, "sdk-snap", false)
		if err != nil || snap.Name != "sdk-snap" || snap.Kind != "snapshot" || snap.SourceSandboxID != sb.ID {
			t.Fatalf("snapshot = %+v, %v", snap, err)
		}
		if _, err := c.Snapshots.Create(ctx, sb.ID, "sdk-snap", false); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("second snapshot of the same name: %v", err)
		}
		list, err := c.Snapshots.List(ctx)
		if err != nil || !hasSnapshot(list, "sdk-snap") {
			t.Fatalf("snapshots = %+v, %v", list, err)
		}
		second, err = c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "sdk-snap", Metadata: map[string]string{"suite": "sdk"}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Files.Read(ctx, second.ID, "/root/keep.txt", "")
		if err != nil || string(b) != "kept\n" {
			t.Fatalf("the snapshot's file = %q, %v", b, err)
		}
	})
	t.Run("list with filters and paging", func(t *testing.T) {
		var ids []string
		for s, err := range c.Sandboxes.List(ctx, capsule.ListOptions{Metadata: map[string]string{"suite": "sdk"}, PageSize: 1}) {
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, s.ID)
		}
		if len(ids) != 2 || ids[0] != second.ID || ids[1] != sb.ID {
			t.Fatalf("listed %v, want [%s %s] (newest first)", ids, second.ID, sb.ID)
		}
		p, err := c.Sandboxes.ListPage(ctx, capsule.ListOptions{States: []capsule.State{capsule.StatePaused}}, "")
		if err != nil || len(p.Sandboxes) != 0 || p.Next != "" {
			t.Fatalf("paused page = %+v, %v", p, err)
		}
		n := 0
		for _, err := range other.Sandboxes.List(ctx, capsule.ListOptions{}) {
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n != 0 {
			t.Fatalf("the other team lists %d sandboxes", n)
		}
	})
	t.Run("kill", func(t *testing.T) {
		if err := c.Sandboxes.Kill(ctx, second.ID); err != nil {
			t.Fatal(err)
		}
		got, err := c.Sandboxes.Get(ctx, second.ID)
		if err != nil || got.State != capsule.StateStopped {
			t.Fatalf("after kill: %+v, %v", got, err)
		}
		if err := c.Sandboxes.Kill(ctx, second.ID); err != nil {
			t.Fatalf("second kill: %v", err)
		}
		if err := c.Snapshots.Delete(ctx, "sdk-snap"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Snapshots.Get(ctx, "sdk-snap"); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("deleted snapshot: %v", err)
		}
	})
	t.Run("API keys", func(t *testing.T) {
		admin, err := capsule.New(s.URL, capsule.WithAPIKey(session))
		if err != nil {
			t.Fatal(err)
		}
		teams, err := admin.Teams.List(ctx)
		if err != nil || len(teams) != 1 || teams[0].Role != "owner" {
			t.Fatalf("teams = %+v, %v", teams, err)
		}
		k, err := admin.Keys.Create(ctx, "ci")
		if err != nil || !strings.HasPrefix(k.Key, "e2b_") {
			t.Fatalf("key = %+v, %v", k, err)
		}
		ci, err := capsule.New(s.URL, capsule.WithAPIKey(k.Key))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ci.Sandboxes.Get(ctx, sb.ID); err != nil {
			t.Fatalf("the new key: %v", err)
		}
		keys, err := admin.Keys.List(ctx)
		if err != nil || len(keys) != 2 || keys[0].Key != "" || keys[1].Key != "" {
			t.Fatalf("keys = %+v, %v", keys, err)
		}
		if err := admin.Keys.Revoke(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := ci.Sandboxes.Get(ctx, sb.ID); !errors.Is(err, capsule.ErrUnauthorized) {
			t.Fatalf("a revoked key: %v", err)
		}
	})
	t.Run("build a template from a recipe and a context directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.MkdirAll(dir+"/site", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir+"/site/index.html", []byte("<h1>from the context</h1>\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("index.html", dir+"/site/home.html"); err != nil {
			t.Fatal(err)
		}
		recipe := "FROM minimal\nCOPY site /srv/site\nRUN echo built-by-sdk > /srv/built.txt && echo step-output\n"
		b, err := c.Templates.Build(ctx, "sdk-built", capsule.BuildOptions{Recipe: recipe, Context: capsule.ArchiveDir(dir), VCPUs: 1, MemoryMB: 256})
		if err != nil || b.ID == "" || b.Template != "sdk-built" {
			t.Fatalf("build = %+v, %v", b, err)
		}
		if _, err := other.Templates.GetBuild(ctx, "sdk-built", b.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("other team's build: %v", err)
		}
		var log output
		done, err := c.Templates.FollowBuildLog(ctx, "sdk-built", b.ID, 0, func(l capsule.BuildLogLine) { log.add([]byte(l.Line + "\n")) })
		if err != nil || done.Status != "success" || !done.Done() {
			t.Fatalf("build ended %+v, %v\nlog:\n%s", done, err, log.String())
		}
		if !strings.Contains(log.String(), "step-output") {
			t.Fatalf("the RUN step's output is not in the followed log:\n%s", log.String())
		}
		builds, err := c.Templates.ListBuilds(ctx, "sdk-built")
		if err != nil || len(builds) != 1 || builds[0].ID != b.ID {
			t.Fatalf("builds = %+v, %v", builds, err)
		}
		built, err := c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "sdk-built"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Sandboxes.Kill(context.Background(), built.ID)
		res, err := c.Commands.Run(ctx, built.ID, "cat /srv/site/home.html /srv/built.txt", capsule.RunOptions{})
		if err != nil || string(res.Stdout) != "<h1>from the context</h1>\nbuilt-by-sdk\n" {
			t.Fatalf("the built template's files: %+v, %v", res, err)
		}
		if err := c.Templates.Delete(ctx, "sdk-built"); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("deleting a template in use: %v", err)
		}
		if err := c.Sandboxes.Kill(ctx, built.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.Templates.Delete(ctx, "sdk-built"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Templates.Get(ctx, "sdk-built"); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("the deleted template: %v", err)
		}
	})
	t.Run("a failing build fails at its step; cancel ends a running one", func(t *testing.T) {
		b, err := c.Templates.Build(ctx, "sdk-broken", capsule.BuildOptions{Recipe: "FROM minimal\nRUN echo before\nRUN exit 7\n", MemoryMB: 256})
		if err != nil {
			t.Fatal(err)
		}
		done, err := c.Templates.FollowBuildLog(ctx, "sdk-broken", b.ID, 0, func(capsule.BuildLogLine) {})
		if err != nil || done.Status != "failed" || done.FailedLine != 3 || done.Error == "" {
			t.Fatalf("the failing build: %+v, %v", done, err)
		}
		b, err = c.Templates.Build(ctx, "sdk-slow", capsule.BuildOptions{Recipe: "FROM minimal\nRUN sleep 600\n", MemoryMB: 256})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 3*time.Minute, "the slow build to run", func() bool {
			cur, err := c.Templates.GetBuild(ctx, "sdk-slow", b.ID)
			return err != nil || cur.Status == "running"
		})
		if _, err := c.Templates.CancelBuild(ctx, "sdk-slow", b.ID); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		done, err = c.Templates.FollowBuildLog(cctx, "sdk-slow", b.ID, 0, func(capsule.BuildLogLine) {})
		if err != nil || done.Status != "cancelled" {
			t.Fatalf("the cancelled build: %+v, %v", done, err)
		}
	})
	t.Run("fork: running copies that diverge; logs outlive a kill", func(t *testing.T) {
		if _, err := c.Commands.Run(ctx, sb.ID, "echo before-fork > /root/fork.txt", capsule.RunOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Sandboxes.Fork(ctx, sb.ID, capsule.ForkOptions{}); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("another team's fork: %v", err)
		}
		if _, err := c.Sandboxes.Fork(ctx, sb.ID, capsule.ForkOptions{Count: 100}); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("100 forks: %v", err)
		}
		f, err := c.Sandboxes.Fork(ctx, sb.ID, capsule.ForkOptions{Count: 1, Timeout: 5 * time.Minute})
		if err != nil || len(f.Results) != 1 || f.Results[0].Sandbox == nil || f.SourceHold <= 0 {
			t.Fatalf("fork = %+v, %v", f, err)
		}
		fork := *f.Results[0].Sandbox
		defer c.Sandboxes.Kill(context.Background(), fork.ID)
		if fork.ID == sb.ID || fork.State != capsule.StateRunning {
			t.Fatalf("the fork: %+v", fork)
		}
		if _, err := c.Commands.Run(ctx, fork.ID, "echo fork-only > /root/fork.txt", capsule.RunOptions{}); err != nil {
			t.Fatal(err)
		}
		if b, err := c.Files.Read(ctx, sb.ID, "/root/fork.txt", ""); err != nil || string(b) != "before-fork\n" {
			t.Fatalf("the source after the fork wrote: %q, %v", b, err)
		}
		if err := c.Sandboxes.Kill(ctx, fork.ID); err != nil {
			t.Fatal(err)
		}
		var lifecycle []string
		for e, err := range c.Sandboxes.Logs(ctx, fork.ID, capsule.LogOptions{PageSize: 5}) {
			if err != nil {
				t.Fatal(err)
			}
			if e.Source == "lifecycle" {
				lifecycle = append(lifecycle, e.Message)
			}
		}
		if len(lifecycle) < 2 {
			t.Fatalf("the killed fork's lifecycle log: %q", lifecycle)
		}
		n := 0
		for _, err := range other.Sandboxes.Logs(ctx, fork.ID, capsule.LogOptions{}) {
			if n++; !errors.Is(err, capsule.ErrNotFound) {
				t.Fatalf("another team's logs: %v", err)
			}
		}
		if n != 1 {
			t.Fatalf("another team's logs yielded %d times, want one error", n)
		}
	})
	t.Run("hosts: an admin adds and removes one; a team without BYOC sees none", func(t *testing.T) {
		admin, err := capsule.New(s.URL, capsule.WithAPIKey(s.Admin(t, "root@example.com")))
		if err != nil {
			t.Fatal(err)
		}
		hosts, err := admin.Hosts.List(ctx)
		if err != nil || len(hosts) == 0 {
			t.Fatalf("the admin's hosts = %+v, %v", hosts, err)
		}
		nh, err := admin.Hosts.Create(ctx, capsule.CreateHostOptions{Name: "sdk-node", Type: "regular", Address: "127.0.0.1:7999"})
		if err != nil || nh.RegistrationToken == "" || nh.Host.Status != "pending" || nh.Host.Name != "sdk-node" {
			t.Fatalf("create host = %+v, %v", nh, err)
		}
		if h, err := admin.Hosts.Get(ctx, nh.Host.ID); err != nil || h.ID != nh.Host.ID {
			t.Fatalf("get host = %+v, %v", h, err)
		}
		user, err := capsule.New(s.URL, capsule.WithAPIKey(session))
		if err != nil {
			t.Fatal(err)
		}
		if list, err := user.Hosts.List(ctx); err != nil || len(list) != 0 {
			t.Fatalf("a non-BYOC team's hosts = %+v, %v", list, err)
		}
		if _, err := user.Hosts.Create(ctx, capsule.CreateHostOptions{Name: "mine", Type: "regular", Address: "127.0.0.1:7998"}); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("a user adding a platform host: %v", err)
		}
		if _, err := user.Hosts.Get(ctx, nh.Host.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("a user reading a platform host: %v", err)
		}
		if _, err := admin.Hosts.Delete(ctx, nh.Host.ID, false); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Hosts.Get(ctx, nh.Host.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("the deleted host: %v", err)
		}
	})
}

func sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func hasSnapshot(list []capsule.Snapshot, name string) bool {
	for _, s := range list {
		if s.Name == name {
			return true
		}
	}
	return false
}
