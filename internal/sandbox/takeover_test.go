package sandbox_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/testenv"
)

// TestGuestCannotBeTakenOver performs, against real VMs, the two ways a
// local process that is not the agent could take a sandbox over: send its
// envd a new /init (its own token, environment, user, clock), and connect
// to the guest's address at all as an unprivileged user. Both must fail,
// while the agent keeps driving the sandbox, and creating from a snapshot
// template and pause/resume (which re-init envd with the held token)
// still work.
func TestGuestCannotBeTakenOver(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 8*time.Minute)
	srcToken := "tok-" + sandbox.NewID()
	src, c := e.create(ctx, sandbox.CreateOptions{AccessToken: srcToken, EnvVars: map[string]string{"OWNER": "host"}})
	attack := `{"accessToken":"evil","envVars":{"OWNER":"attacker"},"defaultUser":"root","timestamp":"2001-01-01T00:00:00Z"}`

	// initAs posts /init to the guest directly with the given token
	// header (none when empty) and returns the status.
	initAs := func(t *testing.T, base, token, body string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/init", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("X-Access-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST %s/init: %v", base, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// untouched checks that the agent's client still works and that the
	// sandbox kept its environment, token and clock.
	untouched := func(t *testing.T, c *envdclient.Client) {
		t.Helper()
		if got := sh(t, ctx, c, `echo "$OWNER $(date -u +%Y)"`); got != "host "+time.Now().UTC().Format("2006") {
			t.Fatalf("environment and clock after the attack: %q, want host and this year", got)
		}
		if _, err := envdclient.New(c.Base(), "evil").Shell(ctx, "true"); err == nil {
			t.Fatal("the attacker's token is accepted")
		}
	}

	t.Run("init without the token is refused", func(t *testing.T) {
		for _, tok := range []string{"", "wrong"} {
			if st := initAs(t, c.Base(), tok, attack); st != http.StatusUnauthorized {
				t.Fatalf("/init with token %q: %d, want 401", tok, st)
			}
			untouched(t, c)
		}
	})

	t.Run("an unprivileged process cannot connect", func(t *testing.T) {
		addr := netip.AddrPortFrom(netip.MustParseAddr(src.HostAddr), 49983)
		if line, err := connectAs(t, 0, 0, addr); err != nil || !strings.Contains(line, "204") {
			t.Fatalf("root process -> %s: %q %v, want envd's health answer", addr, line, err)
		}
		const nobody = 65534
		line, err := connectAs(t, nobody, nobody, addr)
		if err == nil {
			t.Fatalf("uid %d -> %s: connected (%q), want refused", nobody, addr, line)
		}
		if !strings.Contains(err.Error(), "Connection refused") {
			t.Fatalf("uid %d -> %s: %v, want connection refused", nobody, addr, err)
		}
		untouched(t, c)
	})

	e.step("clones and resumes hand over their own tokens", func(t *testing.T) {
		if _, err := e.mgr.CreateSnapshot(ctx, src.ID, "takeover"); err != nil {
			t.Fatal(err)
		}
		clone, cc := e.create(ctx, sandbox.CreateOptions{Template: "takeover", EnvVars: map[string]string{"OWNER": "host"}})
		untouched(t, cc)
		// The clone's envd holds its own token now, not the template's.
		for _, tok := range []string{"", srcToken} {
			if st := initAs(t, cc.Base(), tok, attack); st != http.StatusUnauthorized {
				t.Fatalf("clone: /init with token %q: %d, want 401", tok, st)
			}
		}
		if err := e.mgr.Pause(ctx, clone.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := e.mgr.Resume(ctx, clone.ID); err != nil {
			t.Fatal(err)
		}
		rc := mustClient(t, e, clone.ID)
		untouched(t, rc)
		if st := initAs(t, rc.Base(), "", attack); st != http.StatusUnauthorized {
			t.Fatalf("resumed: /init without the token: %d, want 401", st)
		}
		untouched(t, rc)
	})
}

// connectAs runs, as user uid, a process on the host that asks the envd at
// addr for /health over a raw TCP connection and prints the status line;
// it returns that line or the process's error output.
func connectAs(t *testing.T, uid, gid uint32, addr netip.AddrPort) (string, error) {
	t.Helper()
	bash := testenv.RequireCommand(t, "bash")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%d && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3`, addr.Addr(), addr.Port())
	cmd := exec.CommandContext(ctx, bash, "-c", script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}
