package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/capsulehq/capsule/"

// A rule forbids the packages matching From to depend, directly or not, on
// any package matching Not. Patterns are import paths (Capsule's relative
// to the module) and match the package and those below it.
type rule struct {
	Name   string
	From   []string
	Not    []string
	Except []string // packages of From the rule does not apply to
	Reason string
}

var (
	controlPlane = []string{"internal/controlplane", "internal/api", "internal/e2bapi", "internal/proxy", "internal/service",
		"internal/store", "internal/auth", "internal/pki", "internal/agentclient", "internal/wireid", "internal/scheduler", "internal/leader",
		"internal/telemetry", "internal/recipe", "internal/archive", "internal/builds", "internal/servetls"}
	// testSupport are the test helpers, which link testing (and, for
	// hosttest, real host code) by design.
	testSupport = []string{"internal/service/servicetest", "internal/hosttest", "internal/controlplane/cptest",
		"internal/auth/oauth/oauthtest", "internal/pgembed/pgtest", "internal/testenv", "internal/vmm/vmmtest"}
	hostAndGuest = []string{"internal/agent", "internal/agentreg", "internal/sandbox", "internal/vmm", "internal/netslot",
		"internal/envd", "github.com/google/nftables", "github.com/creack/pty"}
	testingPkgs = []string{"testing", "internal/testenv", "internal/pgembed/pgtest"}
)

var rules = []rule{
	{
		Name:   "control plane links no host or guest code",
		From:   controlPlane,
		Except: testSupport,
		Not:    hostAndGuest,
		Reason: "the control plane reaches hosts only through hostagent.v1 (agentclient) and the wire contracts (envdapi, agentproxy)",
	},
	{
		Name:   "the service learns the built-in templates from the agent",
		From:   controlPlane,
		Except: testSupport,
		Not:    []string{"internal/image"},
		Reason: "the built-in template names come from the host agent's GetHostInfo (builtin_templates), not from the image store",
	},
	{
		Name:   "control plane links no testing",
		From:   controlPlane,
		Except: testSupport,
		Not:    testingPkgs,
		Reason: "test helpers belong in test-support packages (pgembed/pgtest, service/servicetest), never in production code",
	},
	{
		Name: "envd links no control-plane or host code",
		From: []string{"internal/envd", "internal/guestinit", "internal/portfwd", "cmd/envd"},
		Not: append(append([]string{"internal/agent", "internal/agentclient", "internal/sandbox", "internal/vmm",
			"internal/netslot", "internal/pgembed", "github.com/jackc/pgx"}, controlPlane...), testingPkgs...),
		Reason: "envd runs inside guests: a static binary of the guest side only",
	},
	{
		Name: "host code links no envd server, control plane or testing",
		From: []string{"internal/agent", "internal/agentreg", "internal/sandbox", "internal/vmm", "internal/netslot", "internal/disk",
			"internal/image", "internal/envdclient"},
		Except: testSupport,
		Not: append(append([]string{"internal/envd", "github.com/creack/pty", "internal/pgembed",
			"github.com/jackc/pgx"}, controlPlane...), testingPkgs...),
		Reason: "the host agent talks to guests through envdapi and envdclient, and to nothing of the control plane",
	},
	{
		Name:   "wire contracts import nothing of Capsule's",
		From:   []string{"internal/envdapi", "internal/agentproxy", "internal/agentapi", "internal/hostapi", "internal/egress"},
		Not:    []string{"internal", "gen", "cmd"},
		Reason: "both sides of a contract import it; it must not pull either side in",
	},
	{
		Name:   "the Go SDK links nothing of the platform's",
		From:   []string{"sdk/go"},
		Not:    append([]string{"internal", "gen", "cmd"}, testingPkgs...),
		Reason: "users import the SDK: it speaks only the public API (its wire layer is generated from openapi.yaml)",
	},
	{
		Name:   "the command line is a client of the public API",
		From:   []string{"internal/cli"},
		Not:    append(append(append([]string{"gen"}, controlPlane...), hostAndGuest...), testingPkgs...),
		Reason: "capsule's client commands speak only the public API, through the Go SDK",
	},
	{
		Name:   "error classes import nothing of Capsule's",
		From:   []string{"internal/errdefs"},
		Except: []string{"internal/errdefs/errconnect"},
		Not:    []string{"internal", "gen", "cmd"},
		Reason: "every layer, from the store to the APIs and the host agent, classifies its errors with errdefs",
	},
	{
		Name:   "errdefs' Connect codec imports only errdefs",
		From:   []string{"internal/errdefs/errconnect"},
		Except: []string{},
		Not:    []string{"internal/agent", "internal/agentclient", "internal/agentapi", "internal/service", "internal/store", "gen", "cmd"},
		Reason: "the agent and agentclient both use the codec; it must not pull either side in",
	},
	{
		Name:   "binaries link no testing",
		From:   []string{"cmd/capsule", "cmd/envd"},
		Not:    testingPkgs,
		Reason: "the testing package and the test helpers stay out of production binaries",
	},
}

// pkg is what `go list -json` says of a package.
type pkg struct {
	ImportPath string
	Imports    []string
}

// graph is the import graph: package → its direct imports.
type graph map[string][]string

// expand turns a rule pattern into an import path.
func expand(p string) string {
	if strings.HasPrefix(p, "internal") || strings.HasPrefix(p, "cmd") || strings.HasPrefix(p, "gen") || strings.HasPrefix(p, "sdk") {
		return mod + p
	}
	return p
}

func matches(path string, patterns []string) bool {
	for _, p := range patterns {
		p = expand(p)
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// path returns the import chain from → … → a package matching not, or nil.
func (g graph) path(from string, not []string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p != from && matches(p, not) {
			var chain []string
			for q := p; q != ""; q = prev[q] {
				chain = append([]string{q}, chain...)
			}
			return chain
		}
		for _, d := range g[p] {
			if _, seen := prev[d]; !seen {
				prev[d] = p
				queue = append(queue, d)
			}
		}
	}
	return nil
}

// violations checks every rule against g (whose keys include the module's
// packages) and describes each broken one.
func violations(g graph, rules []rule) []string {
	var out []string
	for _, r := range rules {
		for p := range g {
			if !strings.HasPrefix(p, mod) || !matches(p, r.From) || matches(p, r.Except) {
				continue
			}
			if chain := g.path(p, r.Not); chain != nil {
				out = append(out, fmt.Sprintf("package %s must not depend on %s (%s): %s [rule %q]",
					short(p), short(chain[len(chain)-1]), shortChain(chain), r.Reason, r.Name))
			}
		}
	}
	slices.Sort(out)
	return out
}

func short(p string) string { return strings.TrimPrefix(p, mod) }

func shortChain(chain []string) string {
	s := make([]string, len(chain))
	for i, p := range chain {
		s[i] = short(p)
	}
	return strings.Join(s, " → ")
}

// loadGraph lists the module's packages and everything they import.
func loadGraph(t *testing.T) graph {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("deptest: the go command is needed to read the import graph: %v", err)
	}
	cmd := exec.Command(goBin, "list", "-deps", "-json=ImportPath,Imports", mod+"...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		g[p.ImportPath] = p.Imports
	}
	return g
}

func TestDependencyRules(t *testing.T) {
	g := loadGraph(t)
	for _, r := range rules {
		t.Run(r.Name, func(t *testing.T) {
			n := 0
			for p := range g {
				if strings.HasPrefix(p, mod) && matches(p, r.From) && !matches(p, r.Except) {
					n++
				}
			}
			if n == 0 {
				t.Fatalf("rule %q applies to no package: are its package names out of date?", r.Name)
			}
			for _, v := range violations(g, []rule{r}) {
				t.Error(v)
			}
		})
	}
}

// The checker itself finds a forbidden import, however deep, and names the
// rule; a package outside a rule, or excepted from it, is left alone.
func TestViolationsFindForbiddenImports(t *testing.T) {
	proxy, agentproxy, agent, sandbox := mod+"internal/proxy", mod+"internal/agentproxy", mod+"internal/agent", mod+"internal/sandbox"
	servicetest, image, disk, service := mod+"internal/service/servicetest", mod+"internal/image", mod+"internal/disk", mod+"internal/service"
	for _, tc := range []struct {
		name string
		g    graph
		want []string // substrings of the one violation; none: no violation
	}{
		{name: "contract only", g: graph{proxy: {agentproxy, "net/http"}, agentproxy: {"net/http"}}},
		{name: "direct import", g: graph{proxy: {agent}, agent: {}},
			want: []string{"package internal/proxy must not depend on internal/agent (internal/proxy → internal/agent)", "control plane links no host or guest code"}},
		{name: "through another package", g: graph{proxy: {disk}, disk: {agent}, agent: {sandbox}, sandbox: {}},
			want: []string{"internal/proxy → internal/disk → internal/agent"}},
		{name: "built-in templates from the image store", g: graph{service: {image}, image: {}},
			want: []string{"package internal/service must not depend on internal/image", "the service learns the built-in templates from the agent"}},
		{name: "testing", g: graph{proxy: {"testing"}, "testing": {}},
			want: []string{"package internal/proxy must not depend on testing", "control plane links no testing"}},
		{name: "test support excepted", g: graph{servicetest: {"testing", agent}, agent: {}, "testing": {}}},
		{name: "prefix is not a parent", g: graph{proxy: {mod + "internal/envdapi"}, mod + "internal/envdapi": {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := violations(tc.g, rules)
			if len(tc.want) == 0 {
				if len(got) != 0 {
					t.Fatalf("violations: %q", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("want one violation, got %q", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("%q lacks %q", got[0], w)
				}
			}
		})
	}
}
