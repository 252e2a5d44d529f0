package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/capsulehq/capsule/internal/agentreg"
)

func TestParseAgentFlags(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	o, err := parseAgentFlags(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:7070" || o.dataDir != "/var/lib/capsule" || o.tokenFile != "/var/lib/capsule/agent.token" ||
		!o.base || o.capacity.VCPUs != 0 || o.capacity.MemoryMB <= 0 || o.capacity.DiskMB != 0 {
		t.Fatalf("defaults: %+v", o)
	}

	o, err = parseAgentFlags([]string{"--listen", "127.0.0.1:9999", "--max-vcpus", "3"}, env(map[string]string{
		"CAPSULE_AGENT_LISTEN":    "10.0.0.1:1", // the flag wins
		"CAPSULE_DATA_DIR":        "/srv/capsule",
		"CAPSULE_AGENT_BASE":      "false",
		"CAPSULE_AGENT_MAX_VCPUS": "7", // the flag wins
	}))
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:9999" || o.dataDir != "/srv/capsule" || o.tokenFile != "/srv/capsule/agent.token" ||
		o.base || o.capacity.VCPUs != 3 {
		t.Fatalf("flags and env: %+v", o)
	}

	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"--max-vcpus", "-1"}, nil},
		{nil, map[string]string{"CAPSULE_AGENT_MAX_MEMORY_MB": "lots"}},
		{[]string{"extra"}, nil},
	} {
		if _, err := parseAgentFlags(tc.args, env(tc.env)); err == nil {
			t.Errorf("accepted %v %v", tc.args, tc.env)
		}
	}
}

func TestAgentToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "agent.token")

	// Concurrent first starts agree on one token.
	var wg sync.WaitGroup
	tokens := make([]string, 4)
	created := make([]bool, 4)
	for i := range tokens {
		wg.Go(func() {
			var err error
			tokens[i], created[i], err = loadOrCreateToken(path)
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	n := 0
	for i := range tokens {
		if tokens[i] != tokens[0] {
			t.Fatalf("different tokens: %q", tokens)
		}
		if created[i] {
			n++
		}
	}
	if n != 1 || len(tokens[0]) < 40 {
		t.Fatalf("%d creators, token %q", n, tokens[0])
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}

	// Reused as it is.
	again, made, err := loadOrCreateToken(path)
	if err != nil || made || again != tokens[0] {
		t.Fatalf("reload: %q %v %v", again, made, err)
	}

	// Readable by others: refused.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateToken(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a 0644 token file: %v", err)
	}

	// Too short: refused.
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateToken(short); err == nil {
		t.Fatal("a short token was accepted")
	}
}

// TestAgentFlagsDocumented: the README's `capsule agent` table lists every
// flag of the agent with its environment variable.
func TestAgentFlagsDocumented(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, env := range agentEnv {
		if !strings.Contains(string(readme), "| `--"+name+"` | `"+env+"` |") {
			t.Errorf("--%s [%s]: not in the README's capsule agent table", name, env)
		}
	}
}

// TestParseAgentRegistrationFlags: --control-plane needs --address, which
// is then the listen address unless --listen is set; the registration
// flags are refused without --control-plane.
func TestParseAgentRegistrationFlags(t *testing.T) {
	none := func(string) string { return "" }
	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		wantErr    bool
		wantListen string
	}{
		{name: "standalone", args: nil, wantListen: "127.0.0.1:7070"},
		{name: "registered listens on the address", args: []string{"--control-plane", "https://cp:8080", "--register", "tok", "--address", "10.0.0.5:7070"},
			wantListen: "10.0.0.5:7070"},
		{name: "an explicit listen wins", args: []string{"--control-plane", "https://cp:8080", "--address", "203.0.113.5:7070", "--listen", "0.0.0.0:7070"},
			wantListen: "0.0.0.0:7070"},
		{name: "from the environment", env: map[string]string{"CAPSULE_AGENT_CONTROL_PLANE": "https://cp", "CAPSULE_AGENT_ADDRESS": "10.0.0.6:7070"},
			wantListen: "10.0.0.6:7070"},
		{name: "control plane without address", args: []string{"--control-plane", "https://cp:8080"}, wantErr: true},
		{name: "bad address", args: []string{"--control-plane", "https://cp:8080", "--address", "nope"}, wantErr: true},
		{name: "register without control plane", args: []string{"--register", "tok"}, wantErr: true},
		{name: "address without control plane", args: []string{"--address", "10.0.0.5:7070"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := none
			if tc.env != nil {
				getenv = func(k string) string { return tc.env[k] }
			}
			o, err := parseAgentFlags(tc.args, getenv)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("accepted %v: %+v", tc.args, o)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.listen != tc.wantListen {
				t.Fatalf("listen %q, want %q", o.listen, tc.wantListen)
			}
		})
	}
}

// TestExitCodes: an agent whose host was deleted exits with its own status.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"success", nil, 0},
		{"usage", flag.ErrHelp, 2},
		{"host deleted", fmt.Errorf("agent: %w", errors.Join(agentreg.ErrHostDeleted, errors.New("destroy x: busy"))), exitHostDeleted},
		{"other", errors.New("boom"), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitCode(tc.err); got != tc.want {
				t.Fatalf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
	if exitHostDeleted == 1 || exitHostDeleted == 2 {
		t.Fatal("the host-deleted status must differ from the others")
	}
}
