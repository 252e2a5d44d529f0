package service

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
)

// TestForkRealAgent forks a real sandbox (network slot pool cfk,
// 198.18.150.0/24 + 198.18.151.0/24): a file and a running process with
// in-memory state carry over into two forks, which get their own IDs,
// envd tokens (the source's is refused), hostnames, environment and RNG
// output, and then diverge from the source and from each other. Refusals:
// a count out of bounds, the team's quota (nothing is made), another
// team, a killed source. The forks outlive their source, and the hidden
// fork template's files go with the last fork.
func TestForkRealAgent(t *testing.T) {
	agent := hosttest.StartAgent(t, hosttest.ServiceForkPool)
	e := newEnvAgent(t, agent.URL, hosttest.AgentToken)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	_, p := e.signup(t, "fork@example.com")
	_, other := e.signup(t, "other@example.com")
	envd := func(sb Sandbox) *envdclient.Client {
		t.Helper()
		c := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
		t.Cleanup(c.Close)
		return c
	}
	sh := func(sb Sandbox, script string) string {
		t.Helper()
		res, err := envd(sb).Shell(ctx, script)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%s in %s: %+v, %v", script, sb.ID, res, err)
		}
		return string(res.Stdout)
	}
	forkTemplateDirs := func() []string {
		t.Helper()
		dirs, err := filepath.Glob(filepath.Join(agent.DataDir, "templates", "fork-*"))
		if err != nil {
			t.Fatal(err)
		}
		return dirs
	}

	src, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256, TimeoutSec: 600,
		EnvVars: map[string]string{"FORK_VAR": "inherited"}, Metadata: map[string]string{"role": "source"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, src.ID) })
	// A file on disk, and a process whose counter lives in its memory.
	pid := strings.TrimSpace(sh(src, `printf 'from the source' > /tmp/mark
(n=0; while :; do n=$((n+1)); echo $n > /tmp/tick.new; mv /tmp/tick.new /tmp/tick; sleep 0.05; done) </dev/null >/dev/null 2>&1 &
echo $!; while [ ! -s /tmp/tick ]; do sleep 0.05; done`))
	srcHost := strings.TrimSpace(sh(src, `cat /proc/sys/kernel/hostname`))
	before, _ := strconv.Atoi(strings.TrimSpace(sh(src, `cat /tmp/tick`)))

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			p    Principal
			req  ForkRequest
			want error
		}{
			{"count 0", p, ForkRequest{Count: 0}, ErrInvalid},
			{"count over the bound", p, ForkRequest{Count: MaxForks + 1}, ErrInvalid},
			{"negative timeout", p, ForkRequest{Count: 1, TimeoutSec: -1}, ErrInvalid},
			{"another team", other, ForkRequest{Count: 1}, ErrNotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := e.sbx.Fork(ctx, tc.p, src.ID, tc.req); !errors.Is(err, tc.want) {
					t.Fatalf("Fork = %v, want %v", err, tc.want)
				}
			})
		}
		t.Run("over the team's quota", func(t *testing.T) {
			// Two running sandboxes at most: the source and one fork.
			if _, err := e.st.Pool().Exec(ctx, "UPDATE teams SET max_running_sandboxes = 2 WHERE id = $1", pgUUID(p.TeamID)); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if _, err := e.st.Pool().Exec(ctx, "UPDATE teams SET max_running_sandboxes = NULL WHERE id = $1", pgUUID(p.TeamID)); err != nil {
					t.Fatal(err)
				}
			}()
			_, err := e.sbx.Fork(ctx, p, src.ID, ForkRequest{Count: 2})
			if !errors.Is(err, ErrQuota) {
				t.Fatalf("Fork of 2 with room for 1 = %v, want ErrQuota", err)
			}
			items, _, err := e.sbx.List(ctx, p, ListFilter{})
			if err != nil || len(items) != 1 {
				t.Fatalf("after a refused fork the team has %d sandboxes (%v), want 1", len(items), err)
			}
		})
	})

	res, err := e.sbx.Fork(ctx, p, src.ID, ForkRequest{Count: 2, TimeoutSec: 300})
	if err != nil {
		t.Fatalf("Fork: %v", err)
	}
	if len(res.Forks) != 2 || res.SourceHold <= 0 {
		t.Fatalf("Fork = %d forks, source hold %v", len(res.Forks), res.SourceHold)
	}
	forks := make([]Sandbox, 2)
	for i, f := range res.Forks {
		if f.Err != nil {
			t.Fatalf("fork %d: %v", i, f.Err)
		}
		forks[i] = f.Sandbox
		t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, f.Sandbox.ID) })
	}
	if len(forkTemplateDirs()) != 1 {
		t.Fatalf("fork template directories while forks run: %v, want 1", forkTemplateDirs())
	}

	t.Run("records", func(t *testing.T) {
		if forks[0].ID == forks[1].ID || forks[0].ID == src.ID {
			t.Fatalf("IDs: source %s, forks %s %s", src.ID, forks[0].ID, forks[1].ID)
		}
		for _, f := range forks {
			if f.State != StateRunning || f.HostID != src.HostID || f.Template != "minimal" || f.TimeoutSec != 300 ||
				f.Metadata["role"] != "source" || f.EnvdURL == "" || f.EnvdURL == src.EnvdURL {
				t.Errorf("fork %+v", f)
			}
			if f.EnvdAccessToken == src.EnvdAccessToken || f.EnvdAccessToken == "" {
				t.Errorf("fork %s has the source's envd token", f.ID)
			}
		}
		if forks[0].EnvdAccessToken == forks[1].EnvdAccessToken {
			t.Error("the two forks share an envd token")
		}
		if now, err := e.sbx.Get(ctx, p, src.ID); err != nil || now.State != StateRunning {
			t.Errorf("source after the fork: %v, %v", now.State, err)
		}
	})

	t.Run("own identity", func(t *testing.T) {
		// First, before the guests' kernels reseed on their own timers:
		// the forks' RNG differs because /init reseeded it.
		rnd := map[string]string{}
		hosts := map[string]string{src.ID.String(): srcHost}
		for _, sb := range []Sandbox{src, forks[0], forks[1]} {
			r := sh(sb, `head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n'`)
			if len(r) != 32 {
				t.Fatalf("%s: random bytes %q", sb.ID, r)
			}
			for id, seen := range rnd {
				if seen == r {
					t.Errorf("%s and %s read the same random bytes %s", id, sb.ID, r)
				}
			}
			rnd[sb.ID.String()] = r
		}
		for _, f := range forks {
			h := strings.TrimSpace(sh(f, `cat /proc/sys/kernel/hostname /etc/hostname`))
			if h != f.ID.String()+"\n"+f.ID.String() {
				t.Errorf("fork %s: hostname and /etc/hostname %q", f.ID, h)
			}
			for id, seen := range hosts {
				if seen == f.ID.String() {
					t.Errorf("fork %s has the hostname of %s", f.ID, id)
				}
			}
			hosts[f.ID.String()] = f.ID.String()
			// The source's token opens nothing in the fork.
			c := envdclient.New(f.EnvdURL, src.EnvdAccessToken)
			if _, err := c.Shell(ctx, "true"); err == nil {
				t.Errorf("fork %s accepted the source's envd token", f.ID)
			}
			c.Close()
		}
	})

	t.Run("state carried over", func(t *testing.T) {
		for _, f := range forks {
			if got := sh(f, `cat /tmp/mark`); got != "from the source" {
				t.Errorf("fork %s: /tmp/mark = %q", f.ID, got)
			}
			// The source's process runs on in the fork, its counter
			// continuing from what it had in memory.
			out := sh(f, `kill -0 `+pid+` && a=$(cat /tmp/tick) && sleep 0.5 && echo $a $(cat /tmp/tick)`)
			var a, b int
			if fs := strings.Fields(out); len(fs) == 2 {
				a, _ = strconv.Atoi(fs[0])
				b, _ = strconv.Atoi(fs[1])
			}
			if a < before || b <= a {
				t.Errorf("fork %s: the counter went %q (it was %d in the source before the fork)", f.ID, out, before)
			}
			if got := sh(f, `printf %s "$FORK_VAR $E2B_SANDBOX_ID"`); got != "inherited "+f.ID.String() {
				t.Errorf("fork %s: environment %q", f.ID, got)
			}
		}
	})

	t.Run("diverge", func(t *testing.T) {
		sh(forks[0], `printf fork0 > /tmp/div`)
		sh(src, `printf source > /tmp/mark`)
		for _, tc := range []struct {
			sb   Sandbox
			want string
		}{
			{src, "absent source"},
			{forks[0], "fork0 from the source"},
			{forks[1], "absent from the source"},
		} {
			if got := sh(tc.sb, `cat /tmp/div 2>/dev/null || printf absent; printf ' '; cat /tmp/mark`); got != tc.want {
				t.Errorf("%s: %q, want %q", tc.sb.ID, got, tc.want)
			}
		}
	})

	t.Run("a killed source", func(t *testing.T) {
		if err := e.sbx.Destroy(ctx, p, src.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.sbx.Fork(ctx, p, src.ID, ForkRequest{Count: 1}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Fork of a killed sandbox = %v, want ErrNotFound", err)
		}
		// The forks live on without it.
		if got := sh(forks[1], `cat /tmp/mark`); got != "from the source" {
			t.Fatalf("fork after the source's end: %q", got)
		}
	})

	t.Run("no leftovers", func(t *testing.T) {
		for _, f := range forks {
			if err := e.sbx.Destroy(ctx, p, f.ID); err != nil {
				t.Fatal(err)
			}
		}
		if dirs := forkTemplateDirs(); len(dirs) != 0 {
			t.Fatalf("fork template directories after the last fork: %v", dirs)
		}
		idx, _ := filepath.Glob(filepath.Join(agent.DataDir, "templates", "fork-*.json"))
		if len(idx) != 0 {
			t.Fatalf("fork template index files left: %v", idx)
		}
	})
}
