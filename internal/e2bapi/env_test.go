package e2bapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestMain stops this process's PostgreSQL test server after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}

var testSecret = servicetest.Secret

const testDomain = "sbx.example.test"

type env struct {
	st  *store.Store
	acc *service.Accounts
	sbx *service.Sandboxes
	h   *Handler
	srv *httptest.Server
	se  *servicetest.Env
}

// newEnv serves the facade over a fresh database; agentURL/token name the
// host agent ("": a closed port, for tests that never reach it).
func newEnv(t *testing.T, agentURL, agentToken string) *env {
	t.Helper()
	se := servicetest.New(t, agentURL, agentToken)
	h, err := New(Config{Accounts: se.Accounts, Sandboxes: se.Sandboxes, Domain: testDomain})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{st: se.Store, acc: se.Accounts, sbx: se.Sandboxes, h: h, srv: srv, se: se}
}

// account signs up a user and returns its team's principal and an API key.
func (e *env) account(t *testing.T, email string) (service.Principal, string) {
	t.Helper()
	return e.se.Account(t, email)
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with the API key in X-API-KEY (as the SDK spells
// it); body is JSON-encoded unless it is a string. Error answers must have
// E2B's shape.
func (e *env) do(t *testing.T, method, path, key string, body any) resp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
		req.ContentLength = -1 // chunked, as the JS SDK sends
	}
	if key != "" {
		req.Header["X-API-KEY"] = []string{key}
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	data, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode >= 400 {
		var eb map[string]any
		if err := json.Unmarshal(data, &eb); err != nil || eb["code"] != float64(r.StatusCode) || eb["message"] == "" ||
			!strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("%s %s: %d with a body not in E2B's error shape: %s", method, path, r.StatusCode, data)
		}
		if len(eb) != 2 {
			t.Fatalf("%s %s: error body with other keys: %s", method, path, data)
		}
	}
	if r.StatusCode == http.StatusNoContent && len(data) != 0 {
		t.Fatalf("%s %s: 204 with a body: %q", method, path, data)
	}
	return resp{status: r.StatusCode, header: r.Header, body: data}
}

// expect checks the status and decodes the body into out (when not nil).
func (r resp) expect(t *testing.T, status int, out any) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("decode %s: %v", r.body, err)
		}
	}
}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %s", raw)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkKeys fails unless the JSON object raw has exactly the keys want.
func checkKeys(t *testing.T, what string, raw []byte, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := keysOf(t, raw); !slices.Equal(got, want) {
		t.Fatalf("%s keys %v, want %v", what, got, want)
	}
}

// Field names of E2B's schemas (spec §4.4).
var (
	sandboxKeys = []string{"templateID", "sandboxID", "clientID", "envdVersion", "alias", "envdAccessToken",
		"trafficAccessToken", "domain"}
	listedKeys = []string{"templateID", "alias", "sandboxID", "clientID", "startedAt", "endAt", "cpuCount",
		"memoryMB", "diskSizeMB", "metadata", "state", "envdVersion"}
	detailKeys = append(slices.Clone(listedKeys), "envdAccessToken", "allowInternetAccess", "domain", "network",
		"lifecycle")
	metricKeys = []string{"timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed", "memTotal",
		"memCache", "diskUsed", "diskTotal"}
	snapshotKeys = []string{"snapshotID", "names"}
)

// uuidOf parses a sandbox's wire ID.
func uuidOf(t *testing.T, id string) service.SandboxID {
	t.Helper()
	u, err := wireid.ParseSandboxID(id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
