package envd_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
	"github.com/capsulehq/capsule/internal/envd"
)

// TestInitRequiresToken performs the take-over of a sandbox's envd: once
// the host set an access token, a caller without it (no header, a wrong
// one, an empty one) re-initializes envd to a token, environment, default
// user and clock of its choosing. Each attempt must answer 401 and change
// nothing; the holder of the token can still hand over a new one.
func TestInitRequiresToken(t *testing.T) {
	srv := envd.New(envd.Config{})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ts.Close()
		srv.Close()
	})
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	initBody := func(token, user, global string, ts time.Time) string {
		b, _ := json.Marshal(map[string]any{
			"accessToken": token, "defaultUser": user,
			"envVars": map[string]string{"GLOBAL": global}, "timestamp": ts,
		})
		return string(b)
	}
	post := func(t *testing.T, body string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/init", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header[k] = []string{v}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// state is what envd answers to the holder of token: its global
	// environment and the default user's name (empty when token is refused).
	state := func(t *testing.T, token string) (global, user string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, ts.URL+"/envs", nil)
		req.Header.Set("X-Access-Token", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", ""
		}
		var env map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
			t.Fatal(err)
		}
		e := &procEnv{url: ts.URL, client: processconnect.NewProcessClient(ts.Client(), ts.URL)}
		cr := connect.NewRequest(sh("id -un"))
		cr.Header().Set("X-Access-Token", token)
		s, err := e.client.Start(t.Context(), cr)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r := collect(s)
		if r.err != nil || r.stderr.Len() > 0 {
			t.Logf("id -un: %v %s", r.err, r.stderr.String())
		}
		return env["GLOBAL"], strings.TrimSpace(r.stdout.String())
	}
	requireCond(t, os.Geteuid() == 0, "running processes as another default user needs root")

	t.Run("first init without a token applies", func(t *testing.T) {
		if st, body := post(t, initBody("s3cret", "root", "host", t0), nil); st != http.StatusNoContent {
			t.Fatalf("first /init: %d %s, want 204", st, body)
		}
		if g, u := state(t, "s3cret"); g != "host" || u != "root" {
			t.Fatalf("after the first /init: GLOBAL=%q user=%q, want host root", g, u)
		}
	})
	attacks := []struct {
		name string
		hdr  map[string]string
		body string
	}{
		{"no header", nil, initBody("mine", "daemon", "attacker", t0.Add(time.Hour))},
		{"wrong token", map[string]string{"X-Access-Token": "guess"}, initBody("mine", "daemon", "attacker", t0.Add(time.Hour))},
		{"empty header", map[string]string{"X-Access-Token": ""}, initBody("mine", "daemon", "attacker", t0.Add(time.Hour))},
		{"token prefix", map[string]string{"X-Access-Token": "s3cre"}, initBody("mine", "daemon", "attacker", t0.Add(time.Hour))},
		{"clears the token", nil, `{}`},
		{"empty body", nil, ``},
		{"bad JSON", nil, `{"accessToken":`},
	}
	for _, a := range attacks {
		t.Run("refused: "+a.name, func(t *testing.T) {
			st, body := post(t, a.body, a.hdr)
			if st != http.StatusUnauthorized || !strings.Contains(body, `"code":401`) {
				t.Fatalf("/init (%s): %d %s, want 401", a.name, st, body)
			}
			if g, u := state(t, "s3cret"); g != "host" || u != "root" {
				t.Fatalf("after a refused /init: GLOBAL=%q user=%q, want host root unchanged", g, u)
			}
			if g, _ := state(t, "mine"); g != "" {
				t.Fatalf("the attacker's token was accepted")
			}
		})
	}
	t.Run("the holder hands over a new token", func(t *testing.T) {
		// One second after t0: the refused requests (an hour later) did
		// not move the last-applied timestamp either.
		if st, body := post(t, initBody("next", "daemon", "restored", t0.Add(time.Second)), map[string]string{"X-Access-Token": "s3cret"}); st != http.StatusNoContent {
			t.Fatalf("/init with the current token: %d %s, want 204", st, body)
		}
		if g, u := state(t, "next"); g != "restored" || u != "daemon" {
			t.Fatalf("after the handover: GLOBAL=%q user=%q, want restored daemon", g, u)
		}
		if g, _ := state(t, "s3cret"); g != "" {
			t.Fatalf("the old token still works after the handover")
		}
		if st, _ := post(t, initBody("again", "root", "x", t0.Add(2*time.Second)), map[string]string{"X-Access-Token": "s3cret"}); st != http.StatusUnauthorized {
			t.Fatalf("/init with the replaced token: %d, want 401", st)
		}
	})
}
