package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/capsulehq/capsule/internal/controlplane/cptest"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

// asCapsule makes the test binary behave as `capsule` (for the terminal
// test, which runs it under a pseudo-terminal).
const asCapsule = "CAPSULE_CLI_TEST_AS_CAPSULE"

func TestMain(m *testing.M) {
	if os.Getenv(asCapsule) == "1" {
		os.Exit(Main(context.Background(), os.Args[1:], Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}))
	}
	testscript.Main(stopsPostgres{m}, map[string]func(){
		"capsule": func() {
			os.Exit(Main(context.Background(), os.Args[1:], Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}))
		},
	})
}

// stopsPostgres stops this process' PostgreSQL test server after the
// tests.
type stopsPostgres struct{ m *testing.M }

func (s stopsPostgres) Run() int {
	code := s.m.Run()
	pgtest.StopTestServer()
	return code
}

// TestScripts runs testdata/script/*.txtar against a real platform with
// a sandbox host (see runScripts).
func TestScripts(t *testing.T) {
	runScripts(t, cptest.Start(t, hosttest.CLIPool), filepath.Join("testdata", "script"))
}

// TestTeamScripts runs testdata/teams/*.txtar (teams, members,
// invitations, the admin commands: nothing that needs a sandbox) against
// a real control plane and PostgreSQL without a host agent.
func TestTeamScripts(t *testing.T) {
	runScripts(t, cptest.StartControlPlane(t), filepath.Join("testdata", "teams"))
}

// runScripts runs dir's scripts against s: each script gets $URL,
// $SESSION and $KEY (a session token and an API key of its own team,
// whose user is $EMAIL), $OTHERSESSION and $OTHERKEY (another user's,
// $OTHEREMAIL, of another team), $ADMIN (a platform admin's session) and
// its own configuration file.
func runScripts(t *testing.T, s *cptest.Stack, dir string) {
	scripts, err := filepath.Glob(filepath.Join(dir, "*.txtar"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	type account struct{ email, session, key, otherEmail, otherSession, other string }
	admin := s.Admin(t, "cli-admin@example.com")
	accounts := map[string]account{}
	for _, sc := range scripts {
		name := strings.TrimSuffix(filepath.Base(sc), ".txtar")
		a := account{email: name + "@example.com", otherEmail: name + "-other@example.com"}
		a.session, a.key = s.Account(t, a.email)
		a.otherSession, a.other = s.Account(t, a.otherEmail)
		accounts[name] = a
	}
	testscript.Run(t, testscript.Params{
		Dir: dir,
		Setup: func(env *testscript.Env) error {
			name := strings.TrimPrefix(filepath.Base(env.WorkDir), "script-")
			k, ok := accounts[name]
			if !ok {
				return fmt.Errorf("no account for script %q", name)
			}
			env.Setenv("URL", s.URL)
			env.Setenv("EMAIL", k.email)
			env.Setenv("SESSION", k.session)
			env.Setenv("KEY", k.key)
			env.Setenv("OTHEREMAIL", k.otherEmail)
			env.Setenv("OTHERSESSION", k.otherSession)
			env.Setenv("OTHERKEY", k.other)
			env.Setenv("ADMIN", admin)
			env.Setenv(envConfig, filepath.Join(env.WorkDir, "home", "config.yaml"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"stash":   cmdStash,
			"json":    cmdJSON,
			"perm":    cmdPerm,
			"bigfile": cmdBigFile,
		},
	})
}

// stash VAR [PATH]: sets $VAR to the last command's stdout, trimmed, or to
// the value at PATH of that stdout's JSON (see json).
func cmdStash(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: stash VAR [PATH]")
	}
	out := ts.ReadFile("stdout")
	if len(args) == 1 {
		ts.Setenv(args[0], strings.TrimSpace(out))
		return
	}
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		ts.Fatalf("stdout is not JSON: %v", err)
	}
	ts.Setenv(args[0], jsonPath(v, args[1]))
}

// json PATH=VALUE...: the last stdout is JSON and each dotted PATH
// (numbers index arrays, # is a length) has VALUE (compared as text).
func cmdJSON(ts *testscript.TestScript, neg bool, args []string) {
	var v any
	if err := json.Unmarshal([]byte(ts.ReadFile("stdout")), &v); err != nil {
		ts.Fatalf("stdout is not JSON: %v", err)
	}
	for _, a := range args {
		path, want, ok := strings.Cut(a, "=")
		if !ok {
			ts.Fatalf("json: %q: want PATH=VALUE", a)
		}
		got := jsonPath(v, path)
		if (got == want) == neg {
			ts.Fatalf("json %s = %q, want %s%q", path, got, map[bool]string{true: "not ", false: ""}[neg], want)
		}
	}
}

func jsonPath(v any, path string) string {
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			if p == "#" {
				return strconv.Itoa(len(x))
			}
			v = x[p]
		case []any:
			if p == "#" {
				return strconv.Itoa(len(x))
			}
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(x) {
				return "<missing>"
			}
			v = x[i]
		default:
			return "<missing>"
		}
	}
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return "<missing>"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// perm MODE FILE: FILE's permission bits are MODE (octal).
func cmdPerm(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: perm MODE FILE")
	}
	want, err := strconv.ParseUint(args[0], 8, 32)
	if err != nil {
		ts.Fatalf("perm: %v", err)
	}
	fi, err := os.Stat(ts.MkAbs(args[1]))
	ts.Check(err)
	if (uint64(fi.Mode().Perm()) == want) == neg {
		ts.Fatalf("%s has mode %o", args[1], fi.Mode().Perm())
	}
}

// bigfile FILE MiB: writes MiB of pseudo-random bytes to FILE.
func cmdBigFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: bigfile FILE MiB")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	f, err := os.Create(ts.MkAbs(args[0]))
	ts.Check(err)
	defer f.Close()
	buf := make([]byte, 1<<20)
	x := uint64(88172645463325252)
	for range n {
		for i := range buf {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			buf[i] = byte(x)
		}
		_, err := f.Write(buf)
		ts.Check(err)
	}
}

// TestShellInATerminal drives `capsule sandbox shell` through a
// pseudo-terminal as a person would: type a command and read its output,
// resize the window (the sandbox's terminal follows), and exit with a
// code, which becomes capsule's.
func TestShellInATerminal(t *testing.T) {
	s := cptest.Start(t, hosttest.CLIPool)
	_, key := s.Account(t, "shell@example.com")
	env := append(os.Environ(), asCapsule+"=1", envAPIURL+"="+s.URL, envAPIKey+"="+key,
		envConfig+"="+filepath.Join(t.TempDir(), "config.yaml"))
	run := func(args ...string) string {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("capsule %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	id := run("sandbox", "create", "--template", "minimal", "--memory", "256")
	defer run("sandbox", "kill", id)

	cmd := exec.Command(os.Args[0], "sandbox", "shell", id, "sh")
	cmd.Env = env
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 100, Rows: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out lockedBuffer
	go func() { _, _ = io.Copy(&out, tty) }()
	waitOutput := func(want string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the terminal; it shows:\n%s", want, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	type step struct {
		name  string
		do    func() error
		wants string
	}
	for _, st := range []step{
		{"the terminal has the window's size", func() error { _, err := tty.WriteString("stty size\r"); return err }, "30 100"},
		{"typed command runs", func() error { _, err := tty.WriteString("echo hel''lo\r"); return err }, "hello"},
		{"resize follows the window", func() error {
			if err := pty.Setsize(tty, &pty.Winsize{Cols: 132, Rows: 43}); err != nil {
				return err
			}
			// SIGWINCH reaches capsule, which resizes the sandbox's
			// terminal; wait for it before asking.
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if _, err := tty.WriteString("stty size\r"); err != nil {
					return err
				}
				time.Sleep(300 * time.Millisecond)
				if strings.Contains(out.String(), "43 132") {
					return nil
				}
			}
			return nil
		}, "43 132"},
	} {
		t.Run(st.name, func(t *testing.T) {
			if err := st.do(); err != nil {
				t.Fatal(err)
			}
			waitOutput(st.wants)
		})
	}
	t.Run("exit code becomes capsule's", func(t *testing.T) {
		if _, err := tty.WriteString("exit 7\r"); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 7 {
				t.Fatalf("capsule ended with %v, want exit status 7", err)
			}
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("capsule did not end after exit")
		}
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
