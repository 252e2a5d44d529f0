package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/service"
)

func TestParseServeFlags(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		listen     string
		dsn        string
		wantErr    bool
		adminEmail string
	}{
		{name: "defaults", listen: ":8080", adminEmail: "admin@capsule.local"},
		{name: "env", env: map[string]string{"CAPSULE_LISTEN": "127.0.0.1:9090", "DATABASE_URL": "postgres://x"}, listen: "127.0.0.1:9090", dsn: "postgres://x", adminEmail: "admin@capsule.local"},
		{name: "flag beats env", args: []string{"--listen", ":1"}, env: map[string]string{"CAPSULE_LISTEN": ":2"}, listen: ":1", adminEmail: "admin@capsule.local"},
		{name: "admin e-mail", args: []string{"--admin-email", "me@example.com"}, listen: ":8080", adminEmail: "me@example.com"},
		{name: "negative capacity", args: []string{"--max-vcpus", "-1"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
		{name: "sandbox traffic on the API's listener", args: []string{"--sandbox-listen", ":8080"}, wantErr: true},
		{name: "sandbox listener set apart", args: []string{"--sandbox-listen", ":9000"}, listen: ":8080", adminEmail: "admin@capsule.local"},
		{name: "domain with a port", args: []string{"--domain", "sandbox.example.com:443"}, listen: ":8080", adminEmail: "admin@capsule.local"},
		{name: "domain with a bad port", args: []string{"--domain", "sandbox.example.com:x"}, wantErr: true},
		{name: "scheduler and monitor settings", args: []string{"--cpu-overcommit", "2", "--affinity-weight", "0.5",
			"--host-heartbeat-interval", "2s", "--host-unreachable-after", "10s"}, listen: ":8080", adminEmail: "admin@capsule.local"},
		{name: "no overcommit ratio", args: []string{"--cpu-overcommit", "0"}, wantErr: true},
		{name: "affinity weight above 1", args: []string{"--affinity-weight", "1.5"}, wantErr: true},
		{name: "heartbeat under a second", args: []string{"--host-heartbeat-interval", "500ms"}, wantErr: true},
		{name: "unreachable within two beats", args: []string{"--host-heartbeat-interval", "15s", "--host-unreachable-after", "20s"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseServeFlags(tc.args, func(k string) string { return tc.env[k] }, "")
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.listen != tc.listen || o.databaseURL != tc.dsn || o.adminEmail != tc.adminEmail || o.capacity.VCPUs != 0 {
				t.Fatalf("%+v", o)
			}
		})
	}
}

// TestServeConfigFile: precedence flag > environment > file > default, and
// which file is read (-config, CAPSULE_CONFIG, the default path when it
// exists).
func TestServeConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	full := write("full.yaml", `# every kind of value
listen: :7000
data-dir: /srv/capsule
database-url: "postgres://file"
base: false
max-vcpus: 6
net-name: capsule-file
v: true
`)
	other := write("other.yaml", "listen: 127.0.0.1:7100\n")
	empty := write("empty.yaml", "")
	comments := write("comments.yaml", "# nothing set\n")
	def := write("default.yaml", "listen: :7200\nadmin-email: ops@example.com\n")
	missing := filepath.Join(dir, "missing.yaml")

	type want struct {
		listen, dataDir, dsn, netName, adminEmail, config string
		base, verbose                                     bool
		vcpus                                             int
	}
	defaults := want{listen: ":8080", dataDir: "/var/lib/capsule", adminEmail: "admin@capsule.local", base: true}
	fromFull := want{listen: ":7000", dataDir: "/srv/capsule", dsn: "postgres://file", netName: "capsule-file",
		adminEmail: "admin@capsule.local", vcpus: 6, verbose: true, config: full}
	with := func(w want, f func(*want)) want { f(&w); return w }

	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		defaultCfg string
		want       want
		err        string
	}{
		{name: "no file", want: defaults},
		{name: "default path missing", defaultCfg: missing, want: defaults},
		{name: "default path exists", defaultCfg: def,
			want: with(defaults, func(w *want) { w.listen, w.adminEmail, w.config = ":7200", "ops@example.com", def })},
		{name: "file", args: []string{"-config", full}, want: fromFull},
		{name: "CAPSULE_CONFIG", env: map[string]string{"CAPSULE_CONFIG": full}, want: fromFull},
		{name: "-config wins over CAPSULE_CONFIG", args: []string{"-config", other}, env: map[string]string{"CAPSULE_CONFIG": full},
			want: with(defaults, func(w *want) { w.listen, w.config = "127.0.0.1:7100", other })},
		{name: "a named file replaces the default one", args: []string{"-config", other}, defaultCfg: def,
			want: with(defaults, func(w *want) { w.listen, w.config = "127.0.0.1:7100", other })},
		{name: "env wins over file", args: []string{"-config", full},
			env:  map[string]string{"CAPSULE_LISTEN": ":7300", "DATABASE_URL": "postgres://env", "CAPSULE_AGENT_BASE": "true"},
			want: with(fromFull, func(w *want) { w.listen, w.dsn, w.base = ":7300", "postgres://env", true })},
		{name: "flag wins over env and file", args: []string{"-config", full, "-listen", ":7400", "-v=false", "-max-vcpus", "2"},
			env:  map[string]string{"CAPSULE_LISTEN": ":7300"},
			want: with(fromFull, func(w *want) { w.listen, w.verbose, w.vcpus = ":7400", false, 2 })},
		{name: "empty file", args: []string{"-config", empty}, want: with(defaults, func(w *want) { w.config = empty })},
		{name: "only comments", args: []string{"-config", comments}, want: with(defaults, func(w *want) { w.config = comments })},
		{name: "named file missing", args: []string{"-config", missing}, err: "missing.yaml"},
		{name: "CAPSULE_CONFIG missing", env: map[string]string{"CAPSULE_CONFIG": missing}, err: "missing.yaml"},
		{name: "unknown key", args: []string{"-config", write("unknown.yaml", "listen: :1\nlisten_addr: :2\n")}, err: `line 2: unknown key "listen_addr"`},
		{name: "config key", args: []string{"-config", write("config.yaml", "config: /x.yaml\n")}, err: `unknown key "config"`},
		{name: "bad value", args: []string{"-config", write("bad.yaml", "max-vcpus: many\n")}, err: "line 1: max-vcpus"},
		{name: "bad boolean", args: []string{"-config", write("bool.yaml", "base: maybe\n")}, err: "base"},
		{name: "list value", args: []string{"-config", write("list.yaml", "listen: [a, b]\n")}, err: "listen: want a single value"},
		{name: "null value", args: []string{"-config", write("null.yaml", "listen:\n")}, err: "listen: want a single value"},
		{name: "twice", args: []string{"-config", write("twice.yaml", "listen: :1\nlisten: :2\n")}, err: `"listen" is set twice`},
		{name: "not a mapping", args: []string{"-config", write("list-doc.yaml", "- listen\n")}, err: "want a mapping"},
		{name: "not YAML", args: []string{"-config", write("broken.yaml", "listen: \"unterminated\n")}, err: "broken.yaml"},
		{name: "negative capacity from the file", args: []string{"-config", write("neg.yaml", "max-vcpus: -1\n")}, err: "capacities"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseServeFlags(tc.args, func(k string) string { return tc.env[k] }, tc.defaultCfg)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := tc.want
			got := want{listen: o.listen, dataDir: o.dataDir, dsn: o.databaseURL, netName: o.netName, adminEmail: o.adminEmail,
				config: o.configFile, base: o.base, verbose: o.verbose, vcpus: o.capacity.VCPUs}
			if got != w {
				t.Fatalf("got  %+v\nwant %+v", got, w)
			}
		})
	}
}

// TestServeConfigDocumented: deploy/capsule.example.yaml is a valid
// configuration naming every setting, and the README's configuration table
// lists every flag with its environment variable.
func TestServeConfigDocumented(t *testing.T) {
	example := filepath.Join("..", "..", "deploy", "capsule.example.yaml")
	if _, err := parseServeFlags([]string{"-config", example}, func(string) string { return "" }, ""); err != nil {
		t.Fatalf("the example configuration: %v", err)
	}
	ex, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, env := range serveEnv {
		if !strings.Contains(string(ex), "\n"+name+":") && !strings.Contains(string(ex), "\n# "+name+":") {
			t.Errorf("%s: not in the example configuration", name)
		}
		if !strings.Contains(string(readme), "| `"+name+"` | `"+env+"` |") {
			t.Errorf("%s [%s]: not in the README's configuration table", name, env)
		}
	}
	if !strings.Contains(string(readme), "`CAPSULE_CONFIG`") {
		t.Error("CAPSULE_CONFIG: not in the README")
	}
}

// TestServeSignupAndProxies: -signup defaults to invite and takes only the
// three policies; -trusted-proxies takes CIDRs and bare addresses.
func TestServeSignupAndProxies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		signup  service.SignupPolicy
		proxies string
		wantErr bool
	}{
		{name: "defaults", signup: service.SignupInvite, proxies: "[]"},
		{name: "open", args: []string{"-signup", "open"}, signup: service.SignupOpen, proxies: "[]"},
		{name: "closed from the environment", env: map[string]string{"CAPSULE_SIGNUP": "closed"}, signup: service.SignupClosed, proxies: "[]"},
		{name: "unknown policy", args: []string{"-signup", "yes"}, wantErr: true},
		{name: "proxies", args: []string{"-trusted-proxies", " 10.1.2.3/8, 192.0.2.7 ,2001:db8::/32,::ffff:198.51.100.1"}, signup: service.SignupInvite,
			proxies: "[10.0.0.0/8 192.0.2.7/32 2001:db8::/32 198.51.100.1/32]"},
		{name: "bad proxy", args: []string{"-trusted-proxies", "10.0.0.0/8,example.com"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseServeFlags(tc.args, func(k string) string { return tc.env[k] }, "")
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.signupMode != tc.signup || fmt.Sprint(o.proxies) != tc.proxies {
				t.Fatalf("signup %q, proxies %v; want %q, %s", o.signupMode, o.proxies, tc.signup, tc.proxies)
			}
		})
	}
}
