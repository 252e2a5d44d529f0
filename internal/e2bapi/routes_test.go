package e2bapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// fixture is a database with two teams' sandboxes and templates in every
// state, and an agent that cannot be reached (routes that would call it
// answer 503).
type fixture struct {
	*env
	keyA, keyB string
	teamA      service.Principal
	// Team A's sandboxes by state (running2 has other metadata); team B's
	// running one.
	running, running2, paused, pausing, stopped, failed, otherTeam string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	e := newEnv(t, "", "")
	f := &fixture{env: e}
	var pB service.Principal
	f.teamA, f.keyA = e.account(t, "a@example.com")
	pB, f.keyB = e.account(t, "b@example.com")
	created := time.Now().Add(-time.Hour)
	// Every sandbox lives on the static host, whose agent is unreachable.
	local, err := e.st.Queries().GetHostByName(context.Background(), service.LocalHost)
	if err != nil {
		t.Fatal(err)
	}
	ins := func(teamID service.TeamID, state, meta string, autoPause bool) string {
		t.Helper()
		team := teamUUID(teamID)
		r, err := e.st.Queries().InsertSandbox(context.Background(), db.InsertSandboxParams{
			TeamID: team, Template: "minimal", State: state, VCPUs: 1, MemoryMB: 256, TimeoutSec: 60,
			Metadata: []byte(meta), AutoPause: autoPause, AllowInternetAccess: true, AllowPublicTraffic: true,
			HostID: local.ID,
		})
		if err != nil {
			t.Fatal(err)
		}
		// Distinct creation times, a millisecond apart in insertion
		// order: a stable order.
		created = created.Add(time.Millisecond)
		if _, err := e.st.Pool().Exec(context.Background(), "UPDATE sandboxes SET created_at = $2 WHERE id = $1", r.ID, created); err != nil {
			t.Fatal(err)
		}
		return service.ID(r.ID)
	}
	a := f.teamA.TeamID
	f.stopped = ins(a, store.SandboxStopped, `{"k":"v"}`, false)
	f.failed = ins(a, store.SandboxError, `{"k":"v"}`, false)
	f.pausing = ins(a, store.SandboxPausing, `{}`, false)
	f.paused = ins(a, store.SandboxPaused, `{"k":"v"}`, true)
	f.running2 = ins(a, store.SandboxRunning, `{"k":"v","x":"y"}`, false)
	f.running = ins(a, store.SandboxRunning, `{"a b":"c&d","k":"v"}`, true)
	f.otherTeam = ins(pB.TeamID, store.SandboxRunning, `{"k":"v"}`, false)
	return f
}

func TestHealthAuthAndRouting(t *testing.T) {
	f := newFixture(t)
	if r := f.do(t, "GET", "/health", "", nil); r.status != 200 {
		t.Fatalf("health: %d", r.status)
	}
	path := "/sandboxes/" + f.running
	for _, tc := range []struct {
		name, key string
		want      int
	}{
		{"no key", "", 401},
		{"malformed key", "e2b_nothex", 401},
		{"unknown key", auth.APIKeyPrefix + strings.Repeat("ab", 20), 401},
		{"another team's key", f.keyB, 404},
		{"the team's key", f.keyA, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := f.do(t, "GET", path, tc.key, nil); r.status != tc.want {
				t.Fatalf("%d, want %d: %s", r.status, tc.want, r.body)
			}
		})
	}
	// Any case of the header name.
	req, _ := http.NewRequest("GET", f.srv.URL+path, nil)
	req.Header["x-api-key"] = []string{f.keyA}
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != 200 {
		t.Fatalf("lower-case header: %v %v", r, err)
	}
	// Unknown E2B paths and unsupported features keep the error shape.
	f.do(t, "GET", "/sandboxes/"+f.running+"/nope", f.keyA, nil).expect(t, 404, nil)
	f.do(t, "PATCH", "/sandboxes/"+f.running, f.keyA, map[string]any{}).expect(t, 404, nil)
	f.do(t, "PUT", "/sandboxes/"+f.running+"/network", f.keyA, map[string]any{"allowOut": []string{"not a name"}}).expect(t, 400, nil)
	f.do(t, "POST", "/sandboxes/"+f.running+"/fork", "", nil).expect(t, 401, nil)
	// Volumes are not built: 501, never a 404 the SDK reads as an answer.
	f.do(t, "POST", "/volumes", f.keyA, map[string]any{"name": "data"}).expect(t, 501, nil)
	f.do(t, "GET", "/volumes", f.keyA, nil).expect(t, 501, nil)
	f.do(t, "GET", "/volumes/vol1", f.keyA, nil).expect(t, 501, nil)
	f.do(t, "DELETE", "/volumes/vol1", f.keyA, nil).expect(t, 501, nil)
	f.do(t, "GET", "/volumes/vol1", "", nil).expect(t, 401, nil)

	for _, tc := range []struct {
		path string
		want bool
	}{
		{"/sandboxes", true}, {"/sandboxes/x/pause", true}, {"/v2/sandboxes", true}, {"/snapshots", true},
		{"/templates/aliases/base", true}, {"/health", true}, {"/v3/templates", true}, {"/volumes/v", true},
		{"/v1/sandboxes", false}, {"/healthz", false}, {"/docs", false}, {"/openapi.yaml", false}, {"/", false},
		{"/sandboxesx", false},
	} {
		r := httptest.NewRequest("GET", tc.path, nil)
		if got := f.h.Matches(r); got != tc.want {
			t.Errorf("Matches(%s) = %v, want %v", tc.path, got, tc.want)
		}
	}
	for _, d := range []string{"e2b.app", "E2B.dev", "x.e2b-staging.dev", "e2b.pro.", "e2b.app:443", "x.e2b.dev:8081"} {
		if _, err := New(Config{Accounts: f.acc, Sandboxes: f.sbx, Domain: d}); err == nil {
			t.Errorf("domain %q accepted", d)
		}
	}
}

func TestGetSandbox(t *testing.T) {
	f := newFixture(t)
	r := f.do(t, "GET", "/sandboxes/"+f.running, f.keyA, nil)
	var got sandboxDetailJSON
	r.expect(t, 200, &got)
	checkKeys(t, "SandboxDetail", r.body, detailKeys...)
	if got.SandboxID != f.running || got.TemplateID != "minimal" || got.Alias != "minimal" || got.ClientID != clientID ||
		got.State != "running" || got.EnvdVersion != envdapi.Version || got.CPUCount != 1 || got.MemoryMB != 256 ||
		got.EnvdAccessToken != auth.EnvdAccessToken(testSecret, f.running) || got.Domain == nil || *got.Domain != testDomain ||
		got.Metadata["a b"] != "c&d" || got.Lifecycle != (lifecycleJSON{OnTimeout: "pause"}) || !got.Network.AllowPublicTraffic ||
		!got.AllowInternetAccess || !got.EndAt.Equal(noDeadline) {
		t.Fatalf("detail %+v", got)
	}
	var raw map[string]any
	_ = json.Unmarshal(r.body, &raw)
	if s, _ := raw["startedAt"].(string); !strings.HasSuffix(s, "Z") {
		t.Fatalf("startedAt %q is not RFC 3339 UTC", s)
	}
	checkKeys(t, "lifecycle", mustJSON(t, raw["lifecycle"]), "autoResume", "onTimeout")

	// Legacy composite ID.
	f.do(t, "GET", "/sandboxes/"+f.running+"-"+clientID, f.keyA, nil).expect(t, 200, nil)
	got = sandboxDetailJSON{}
	f.do(t, "GET", "/sandboxes/"+f.running2, f.keyA, nil).expect(t, 200, &got)
	if got.Lifecycle.OnTimeout != "kill" {
		t.Fatalf("onTimeout of a sandbox killed at its timeout: %+v", got.Lifecycle)
	}
	got = sandboxDetailJSON{}
	f.do(t, "GET", "/sandboxes/"+f.paused, f.keyA, nil).expect(t, 200, &got)
	if got.State != "paused" {
		t.Fatalf("paused: %+v", got)
	}
	f.do(t, "GET", "/sandboxes/"+f.pausing, f.keyA, nil).expect(t, 200, &got)
	if got.State != "paused" {
		t.Fatalf("pausing: %+v", got)
	}
	for _, id := range []string{f.stopped, f.failed, f.otherTeam, strings.Repeat("0", 32), "nope", "UPPER"} {
		f.do(t, "GET", "/sandboxes/"+id, f.keyA, nil).expect(t, 404, nil)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ids returns the sandboxIDs of a listing.
func ids(t *testing.T, r resp) []string {
	t.Helper()
	var list []listedSandboxJSON
	r.expect(t, 200, &list)
	var raws []json.RawMessage
	_ = json.Unmarshal(r.body, &raws)
	for _, raw := range raws {
		checkKeys(t, "ListedSandbox", raw, listedKeys...)
	}
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.SandboxID
	}
	return out
}

func TestListSandboxes(t *testing.T) {
	f := newFixture(t)
	// Newest first; stopped and failed sandboxes and team B's are not
	// listed.
	all := []string{f.running, f.running2, f.paused, f.pausing}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", all},
		{"?state=running,paused", all},
		{"?state=running&state=paused", all},
		{"?state=running", []string{f.running, f.running2}},
		{"?state=paused", []string{f.paused, f.pausing}},
		// The spec's example: {"a b":"c&d","k":"v"}, double-encoded.
		{"?metadata=a%252520b%3Dc%252526d%26k%3Dv", []string{f.running}},
		{"?metadata=k%3Dv", []string{f.running, f.running2, f.paused}},
		{"?metadata=k%3Dv&state=paused", []string{f.paused}},
		{"?metadata=" + url.QueryEscape("x=y"), []string{f.running2}},
		{"?metadata=k%3Dother", []string{}},
		{"?limit=100&order=desc", all},
	} {
		t.Run(tc.query, func(t *testing.T) {
			r := f.do(t, "GET", "/v2/sandboxes"+tc.query, f.keyA, nil)
			if got := ids(t, r); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			if _, ok := r.header["X-Next-Token"]; ok {
				t.Fatal("X-Next-Token on the only page")
			}
		})
	}
	for _, q := range []string{"?state=stopped", "?state=running,bogus", "?limit=0", "?limit=101", "?limit=x",
		"?nextToken=garbage", "?metadata=a%3Db%3Dc", "?metadata=novalue", "?order=up", "?order=ASC", "?startedAfter=yesterday",
		"?startedAfter=2024-01-01", "?startedAfter=2024-01-01T00:00:00"} {
		f.do(t, "GET", "/v2/sandboxes"+q, f.keyA, nil).expect(t, 400, nil)
	}

	// Paging: X-Next-Token iff there is a next page.
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 4 {
			t.Fatal("too many pages")
		}
		q := "?limit=1"
		if token != "" {
			q += "&nextToken=" + url.QueryEscape(token)
		}
		r := f.do(t, "GET", "/v2/sandboxes"+q, f.keyA, nil)
		page := ids(t, r)
		if len(page) != 1 {
			t.Fatalf("page %d: %v", pages, page)
		}
		got = append(got, page...)
		token = r.header.Get("X-Next-Token")
		if token == "" {
			if _, ok := r.header["X-Next-Token"]; ok {
				t.Fatal("empty X-Next-Token header")
			}
			break
		}
	}
	if !slices.Equal(got, all) {
		t.Fatalf("pages %v, want %v", got, all)
	}
	r := f.do(t, "GET", "/v2/sandboxes?limit=3", f.keyA, nil)
	if page := ids(t, r); len(page) != 3 || r.header.Get("X-Next-Token") == "" {
		t.Fatalf("limit 3: %v, token %q", page, r.header.Get("X-Next-Token"))
	}
	r = f.do(t, "GET", "/v2/sandboxes?nextToken="+url.QueryEscape(r.header.Get("X-Next-Token")), f.keyA, nil)
	if page := ids(t, r); !slices.Equal(page, []string{f.pausing}) || r.header.Get("X-Next-Token") != "" {
		t.Fatalf("last page: %v", page)
	}

	// v1: running only, no paging.
	if got := ids(t, f.do(t, "GET", "/sandboxes", f.keyA, nil)); !slices.Equal(got, []string{f.running, f.running2}) {
		t.Fatalf("v1: %v", got)
	}
	if got := ids(t, f.do(t, "GET", "/sandboxes?metadata=x%3Dy", f.keyA, nil)); !slices.Equal(got, []string{f.running2}) {
		t.Fatalf("v1 metadata: %v", got)
	}
	if got := ids(t, f.do(t, "GET", "/sandboxes", f.keyB, nil)); !slices.Equal(got, []string{f.otherTeam}) {
		t.Fatalf("v1 team B: %v", got)
	}
	if r := f.do(t, "GET", "/v2/sandboxes", f.keyB, nil); !slices.Equal(ids(t, r), []string{f.otherTeam}) {
		t.Fatal("team B sees team A's sandboxes")
	}
}

func TestMetadataFilterDecoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		md   map[string]string
	}{
		{"spec example", map[string]string{"a b": "c&d", "k": "v"}},
		{"sdk test id", map[string]string{"sandboxTestId": "test-x1"}},
		{"reserved characters", map[string]string{"a=b": "c+d%e", "ключ": "värde/?#"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Encode as the SDK does: encodeURIComponent each key and value,
			// join as a form string, send that as the query value.
			var pairs []string
			for k, v := range tc.md {
				pairs = append(pairs, encodeURIComponent(k)+"="+encodeURIComponent(v))
			}
			form := url.Values{"x": {strings.Join(pairs, "&")}}.Encode()[2:]
			q, err := url.ParseQuery("metadata=" + url.QueryEscape(form))
			if err != nil {
				t.Fatal(err)
			}
			got, err := metadataFilter(q)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.md) {
				t.Fatalf("got %v, want %v", got, tc.md)
			}
			for k, v := range tc.md {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tc.md)
				}
			}
		})
	}
	// The spec's wire form, literally.
	q, _ := url.ParseQuery("metadata=a%252520b%3Dc%252526d%26k%3Dv")
	if got, err := metadataFilter(q); err != nil || len(got) != 2 || got["a b"] != "c&d" || got["k"] != "v" {
		t.Fatalf("spec example: %v %v", got, err)
	}
}

// encodeURIComponent is JavaScript's: everything but letters, digits and
// -_.!~*'() is percent-encoded (a space as %20).
func encodeURIComponent(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

func TestLifecycleRoutesWithoutAgent(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	get := func(id string) service.Sandbox {
		t.Helper()
		sb, err := f.sbx.Get(ctx, f.teamA, uuidOf(t, id))
		if err != nil {
			t.Fatal(err)
		}
		return sb
	}
	unknown := strings.Repeat("ab", 16)
	for _, tc := range []struct {
		name, method, path, key string
		body                    any
		want                    int
	}{
		{"kill stopped", "DELETE", "/sandboxes/" + f.stopped, f.keyA, nil, 404},
		{"kill unknown", "DELETE", "/sandboxes/" + unknown, f.keyA, nil, 404},
		{"kill other team", "DELETE", "/sandboxes/" + f.otherTeam, f.keyA, nil, 404},
		{"kill no key", "DELETE", "/sandboxes/" + f.running, "", nil, 401},
		{"kill, agent down", "DELETE", "/sandboxes/" + f.running2, f.keyA, nil, 503},
		{"timeout zero", "POST", "/sandboxes/" + f.running + "/timeout", f.keyA, map[string]any{"timeout": 0}, 400},
		{"timeout missing", "POST", "/sandboxes/" + f.running + "/timeout", f.keyA, map[string]any{}, 400},
		{"timeout bad JSON", "POST", "/sandboxes/" + f.running + "/timeout", f.keyA, `{"timeout":`, 400},
		{"timeout wrong type", "POST", "/sandboxes/" + f.running + "/timeout", f.keyA, `{"timeout":"60"}`, 400},
		{"timeout stopped", "POST", "/sandboxes/" + f.stopped + "/timeout", f.keyA, map[string]any{"timeout": 60}, 404},
		{"timeout other team", "POST", "/sandboxes/" + f.otherTeam + "/timeout", f.keyA, map[string]any{"timeout": 60}, 404},
		{"pause paused", "POST", "/sandboxes/" + f.paused + "/pause", f.keyA, nil, 409},
		{"pause pausing", "POST", "/sandboxes/" + f.pausing + "/pause", f.keyA, map[string]any{"memory": false}, 409},
		{"pause stopped", "POST", "/sandboxes/" + f.stopped + "/pause", f.keyA, nil, 404},
		{"pause unknown", "POST", "/sandboxes/" + unknown + "/pause", f.keyA, map[string]any{}, 404},
		{"pause other team", "POST", "/sandboxes/" + f.otherTeam + "/pause", f.keyA, nil, 404},
		{"resume running", "POST", "/sandboxes/" + f.running + "/resume", f.keyA, map[string]any{"timeout": 60}, 409},
		{"resume stopped", "POST", "/sandboxes/" + f.stopped + "/resume", f.keyA, nil, 404},
		{"connect v2 stopped", "POST", "/v2/sandboxes/" + f.stopped + "/connect", f.keyA, map[string]any{}, 404},
		{"connect v2 failed", "POST", "/v2/sandboxes/" + f.failed + "/connect", f.keyA, nil, 404},
		{"connect v2 pausing", "POST", "/v2/sandboxes/" + f.pausing + "/connect", f.keyA, nil, 409},
		{"connect v2 other team", "POST", "/v2/sandboxes/" + f.otherTeam + "/connect", f.keyA, nil, 404},
		{"connect v2 negative", "POST", "/v2/sandboxes/" + f.running + "/connect", f.keyA, map[string]any{"timeout": -1}, 400},
		{"connect v1 no timeout", "POST", "/sandboxes/" + f.running + "/connect", f.keyA, map[string]any{}, 400},
		{"connect v1 unknown", "POST", "/sandboxes/" + unknown + "/connect", f.keyA, map[string]any{"timeout": 5}, 404},
		{"refresh too long", "POST", "/sandboxes/" + f.running + "/refreshes", f.keyA, map[string]any{"duration": 3601}, 400},
		{"refresh paused", "POST", "/sandboxes/" + f.paused + "/refreshes", f.keyA, map[string]any{"duration": 30}, 404},
		{"refresh other team", "POST", "/sandboxes/" + f.otherTeam + "/refreshes", f.keyA, nil, 404},
		{"metrics stopped", "GET", "/sandboxes/" + f.stopped + "/metrics", f.keyA, nil, 404},
		{"metrics unknown", "GET", "/sandboxes/" + unknown + "/metrics", f.keyA, nil, 404},
		{"metrics other team", "GET", "/sandboxes/" + f.otherTeam + "/metrics", f.keyA, nil, 404},
		{"metrics, agent down", "GET", "/sandboxes/" + f.running + "/metrics", f.keyA, nil, 503},
		{"metrics many, none", "GET", "/sandboxes/metrics", f.keyA, nil, 400},
		{"metrics many, too many", "GET", "/sandboxes/metrics?sandbox_ids=" + strings.TrimSuffix(strings.Repeat(unknown+",", 101), ","), f.keyA, nil, 400},
		{"snapshot paused", "POST", "/sandboxes/" + f.paused + "/snapshots", f.keyA, map[string]any{}, 409},
		{"snapshot stopped", "POST", "/sandboxes/" + f.stopped + "/snapshots", f.keyA, map[string]any{"name": "x"}, 404},
		{"snapshot other team", "POST", "/sandboxes/" + f.otherTeam + "/snapshots", f.keyA, nil, 404},
		{"snapshot bad name", "POST", "/sandboxes/" + f.running + "/snapshots", f.keyA, map[string]any{"name": "../x"}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.do(t, tc.method, tc.path, tc.key, tc.body).expect(t, tc.want, nil)
		})
	}

	// Timeout: the deadline is now + timeout.
	f.do(t, "POST", "/sandboxes/"+f.running+"/timeout", f.keyA, map[string]any{"timeout": 120}).expect(t, 204, nil)
	if sb := get(f.running); sb.EndAt.IsZero() || time.Until(sb.EndAt) < 110*time.Second || time.Until(sb.EndAt) > 130*time.Second {
		t.Fatalf("end_at after setTimeout(120): %v", sb.EndAt)
	}
	// ... and may shorten it.
	f.do(t, "POST", "/sandboxes/"+f.running+"-"+clientID+"/timeout", f.keyA, map[string]any{"timeout": 30}).expect(t, 204, nil)
	if sb := get(f.running); time.Until(sb.EndAt) > 40*time.Second {
		t.Fatalf("end_at after setTimeout(30): %v", sb.EndAt)
	}
	// Connect v2 on a running sandbox: 200, the deadline moves to now + 300
	// (the default), never earlier.
	r := f.do(t, "POST", "/v2/sandboxes/"+f.running+"/connect", f.keyA, nil)
	var sb sandboxJSON
	r.expect(t, 200, &sb)
	checkKeys(t, "Sandbox", r.body, sandboxKeys...)
	if sb.SandboxID != f.running || sb.EnvdAccessToken != auth.EnvdAccessToken(testSecret, f.running) || sb.TrafficAccessToken != nil ||
		sb.Domain == nil || *sb.Domain != testDomain || sb.EnvdVersion != envdapi.Version || sb.ClientID != clientID {
		t.Fatalf("connect: %+v", sb)
	}
	if end := get(f.running).EndAt; time.Until(end) < 290*time.Second {
		t.Fatalf("end_at after connect: %v", end)
	}
	f.do(t, "POST", "/sandboxes/"+f.running+"/connect", f.keyA, map[string]any{"timeout": 10}).expect(t, 200, nil)
	if end := get(f.running).EndAt; time.Until(end) < 290*time.Second {
		t.Fatalf("connect shortened the deadline: %v", end)
	}
	// Refresh: at least now + duration.
	f.do(t, "POST", "/sandboxes/"+f.running2+"/refreshes", f.keyA, map[string]any{"duration": 600}).expect(t, 204, nil)
	if end := get(f.running2).EndAt; time.Until(end) < 590*time.Second {
		t.Fatalf("end_at after refresh: %v", end)
	}
	f.do(t, "POST", "/sandboxes/"+f.running2+"/refreshes", f.keyA, nil).expect(t, 204, nil)

	// Metrics of a paused sandbox: none (no agent call).
	r = f.do(t, "GET", "/sandboxes/"+f.paused+"/metrics", f.keyA, nil)
	if r.expect(t, 200, nil); strings.TrimSpace(string(r.body)) != "[]" {
		t.Fatalf("metrics of a paused sandbox: %s", r.body)
	}
	r = f.do(t, "GET", "/sandboxes/metrics?sandbox_ids="+f.paused+","+f.stopped+","+unknown+",nope,"+f.otherTeam, f.keyA, nil)
	if r.expect(t, 200, nil); strings.TrimSpace(string(r.body)) != `{"sandboxes":{}}` {
		t.Fatalf("metrics many: %s", r.body)
	}
}

func TestCreateValidation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	count := func() int {
		t.Helper()
		n := 0
		for _, st := range []string{store.SandboxRunning, store.SandboxStarting, store.SandboxError} {
			items, _, err := f.sbx.List(ctx, f.teamA, service.ListFilter{States: []string{st}})
			if err != nil {
				t.Fatal(err)
			}
			n += len(items)
		}
		return n
	}
	before := count()
	for _, tc := range []struct {
		name string
		body any
		want int
	}{
		{"no body", nil, 400},
		{"bad JSON", `{"templateID":`, 400},
		{"no templateID", map[string]any{"timeout": 30}, 400},
		{"empty templateID", map[string]any{"templateID": ""}, 400},
		{"timeout zero", map[string]any{"templateID": "minimal", "timeout": 0}, 400},
		{"timeout negative", map[string]any{"templateID": "minimal", "timeout": -5}, 400},
		{"timeout too long", map[string]any{"templateID": "minimal", "timeout": 31 * 24 * 3600}, 400},
		{"unknown template", map[string]any{"templateID": "nope"}, 404},
		{"another tag", map[string]any{"templateID": "minimal:v2"}, 404},
		{"mcp", map[string]any{"templateID": "minimal", "mcp": map[string]any{"github": map[string]any{}}}, 400},
		{"volumes", map[string]any{"templateID": "minimal", "volumeMounts": []any{map[string]any{"name": "v", "path": "/v"}}}, 400},
		{"filesystem-only pause without autoPause", map[string]any{"templateID": "minimal", "autoPauseMemory": false}, 400},
		{"filesystem-only pause with autoResume", map[string]any{"templateID": "minimal", "autoPause": true, "autoPauseMemory": false,
			"autoResume": map[string]any{"enabled": true}}, 400},
		{"allowOut: bad entry", map[string]any{"templateID": "minimal", "network": map[string]any{"allowOut": []string{"1.1.1.1/40"}}}, 400},
		{"denyOut: bad domain", map[string]any{"templateID": "minimal", "network": map[string]any{"denyOut": []string{"-x.example.com"}}}, 400},
		{"allowOut domain with internet allowed", map[string]any{"templateID": "minimal", "network": map[string]any{"allowOut": []string{"example.com"}}}, 400},
		{"too many rules", map[string]any{"templateID": "minimal", "network": map[string]any{"denyOut": manyCIDRs(257)}}, 400},
		{"header transforms", map[string]any{"templateID": "minimal", "network": map[string]any{"rules": map[string]any{"example.com": []any{map[string]any{"transform": map[string]any{}}}}}}, 400},
		{"egress proxy", map[string]any{"templateID": "minimal", "network": map[string]any{"egressProxy": map[string]any{"address": "socks5://x:1080"}}}, 400},
		{"bad env var", map[string]any{"templateID": "minimal", "envVars": map[string]string{"1X": "y"}}, 400},
		{"wrong type", map[string]any{"templateID": "minimal", "metadata": []string{"x"}}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.do(t, "POST", "/v2/sandboxes", f.keyA, tc.body).expect(t, tc.want, nil)
		})
	}
	f.do(t, "POST", "/sandboxes", "", map[string]any{"templateID": "minimal"}).expect(t, 401, nil)
	if n := count(); n != before {
		t.Fatalf("refused creates left sandboxes: %d, was %d", n, before)
	}
	// A valid request with unknown fields and a default tag reaches the
	// agent, which is down here: 503, and nothing listed.
	f.do(t, "POST", "/v2/sandboxes", f.keyA, map[string]any{"templateID": "minimal:default", "somethingNew": 1,
		"network": map[string]any{"denyOut": []string{"0.0.0.0/0"}}}).expect(t, 503, nil)
	if got := ids(t, f.do(t, "GET", "/v2/sandboxes", f.keyA, nil)); len(got) != 4 {
		t.Fatalf("a failed create is listed: %v", got)
	}

	// createRequest's defaults, which the VM test sees at work.
	for _, tc := range []struct {
		name    string
		body    string
		def     int32
		want    service.CreateSandbox
		noInet  bool
		private bool
	}{
		{"v2 defaults", `{"templateID":"base"}`, defaultTimeoutV2,
			service.CreateSandbox{Template: "base", TimeoutSec: 300, PublicTraffic: true}, false, false},
		{"v1 defaults", `{"templateID":"base:default","secure":true}`, defaultTimeoutV1,
			service.CreateSandbox{Template: "base", TimeoutSec: 15, PublicTraffic: true}, false, false},
		{"sdk lifecycle", `{"templateID":"base","allow_internet_access":false,"autoPause":true,"autoResume":{"enabled":true},"timeout":60}`, 300,
			service.CreateSandbox{Template: "base", TimeoutSec: 60, AutoResume: true, PublicTraffic: true}, true, false},
		{"private traffic, deny all", `{"templateID":"base","network":{"allowPublicTraffic":false,"denyOut":["0.0.0.0/0"]}}`, 300,
			service.CreateSandbox{Template: "base", TimeoutSec: 300}, true, true},
		{"allowed domains only", `{"templateID":"base","network":{"allowOut":["api.example.com","*.pypi.org","1.1.1.1"],"denyOut":["0.0.0.0/0"]}}`, 300,
			service.CreateSandbox{Template: "base", TimeoutSec: 300, PublicTraffic: true}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body newSandboxJSON
			if err := json.Unmarshal([]byte(tc.body), &body); err != nil {
				t.Fatal(err)
			}
			got, err := createRequest(body, tc.def)
			if err != nil {
				t.Fatal(err)
			}
			wantPause := strings.Contains(tc.body, `"autoPause":true`)
			if got.AutoPause == nil || *got.AutoPause != wantPause {
				t.Fatalf("autoPause %v, want %v", got.AutoPause, wantPause)
			}
			closed := got.Internet != nil && !*got.Internet
			if got.Network != nil {
				p, err := egress.Parse(*got.Network)
				if err != nil {
					t.Fatal(err)
				}
				closed = p.DenyByDefault && len(p.AllowNets) == 0 && len(p.AllowNames) == 0
			}
			if tc.noInet != closed {
				t.Fatalf("internet %v, network %+v", got.Internet, got.Network)
			}
			if strings.Contains(tc.body, "allowOut") && (got.Network == nil || len(got.Network.AllowOut) == 0) {
				t.Fatalf("network %+v: allowOut lost", got.Network)
			}
			if got.Template != tc.want.Template || got.TimeoutSec != tc.want.TimeoutSec || got.AutoResume != tc.want.AutoResume ||
				got.PublicTraffic != tc.want.PublicTraffic {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSnapshotsAndTemplates(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	keyB := f.keyB
	srcA := uuidOf(t, f.running)
	n := byte(0)
	// Made a second apart in this order, but s4 and s5 at the same time
	// as s3 (a tie: the ID decides, s5 > s4 > s3).
	made := time.Now().Add(-time.Hour)
	mk := func(team pgtype.UUID, name string, src service.SandboxID, meta string) {
		t.Helper()
		n++
		if name != "s4" && name != "s5" {
			made = made.Add(time.Second)
		}
		srcBytes, srcValid := src.UUID()
		row, err := f.st.Queries().InsertTemplate(ctx, db.InsertTemplateParams{ID: pgtype.UUID{Bytes: [16]byte{15: n}, Valid: true},
			TeamID: team, Name: name, Kind: store.TemplateSnapshot, VCPUs: 2, MemoryMB: 512, DiskMB: 128, SizeBytes: 4096,
			SourceSandboxID: pgtype.UUID{Bytes: srcBytes, Valid: srcValid}, Metadata: []byte(meta)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.st.Pool().Exec(ctx, "UPDATE templates SET created_at = $2 WHERE id = $1", row.ID, made); err != nil {
			t.Fatal(err)
		}
	}
	teamB, err := f.acc.AuthenticateAPIKey(ctx, keyB)
	if err != nil {
		t.Fatal(err)
	}
	mk(teamUUID(f.teamA.TeamID), "s1", srcA, `{}`)
	mk(teamUUID(f.teamA.TeamID), "s2", uuidOf(t, f.running2), `{}`)
	mk(teamUUID(f.teamA.TeamID), "s3", srcA, `{}`)
	mk(teamUUID(f.teamA.TeamID), "s4", srcA, `{}`)
	mk(teamUUID(f.teamA.TeamID), "s5", uuidOf(t, f.running2), `{}`)
	mk(store.PlatformTeamID, "pub", service.SandboxID{}, `{}`)
	mk(teamUUID(teamB.TeamID), "sb", uuidOf(t, f.otherTeam), `{}`)
	// A template the team's build made is no snapshot.
	mk(teamUUID(f.teamA.TeamID), "built", service.SandboxID{}, `{"build_id":"bld-x"}`)
	slugA, err := f.sbx.TeamSlug(ctx, f.teamA)
	if err != nil {
		t.Fatal(err)
	}
	slugB, err := f.sbx.TeamSlug(ctx, teamB)
	if err != nil {
		t.Fatal(err)
	}
	// Snapshot IDs are full names: "<team slug>/<name>:default".
	full := func(slug string, names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, slug+"/"+n+":default")
		}
		return out
	}
	// E2B's SDK puts them in paths with encodeURIComponent.
	enc := strings.NewReplacer("/", "%2F", ":", "%3A").Replace

	list := func(q, key string) ([]string, string) {
		t.Helper()
		r := f.do(t, "GET", "/snapshots"+q, key, nil)
		var infos []snapshotInfoJSON
		r.expect(t, 200, &infos)
		var raws []json.RawMessage
		_ = json.Unmarshal(r.body, &raws)
		var out []string
		for i, raw := range raws {
			checkKeys(t, "SnapshotInfo", raw, snapshotKeys...)
			if !slices.Equal(infos[i].Names, []string{infos[i].SnapshotID}) {
				t.Fatalf("names %v", infos[i].Names)
			}
			out = append(out, infos[i].SnapshotID)
		}
		if _, ok := r.header["X-Next-Token"]; ok != (r.header.Get("X-Next-Token") != "") {
			t.Fatal("empty X-Next-Token")
		}
		return out, r.header.Get("X-Next-Token")
	}
	for _, tc := range []struct {
		q    string
		want []string
	}{
		// Newest first, the tie by ID.
		{"", full(slugA, "s5", "s4", "s3", "s2", "s1")},
		{"?sandboxID=" + f.running, full(slugA, "s4", "s3", "s1")},
		{"?sandboxID=" + f.running2 + "-" + clientID, full(slugA, "s5", "s2")},
		{"?sandboxID=nope", nil},
		{"?sandboxID=" + f.otherTeam, nil},
		{"?name=s2", full(slugA, "s2")},
		{"?name=s2:default", full(slugA, "s2")},
		{"?name=" + enc(slugA+"/s2:default"), full(slugA, "s2")},
		{"?name=" + enc(slugB+"/s2:default"), nil},
		{"?name=s2:v1", nil},
		{"?name=pub", nil},
		{"?name=sb", nil},
		{"?name=built", nil},
		{"?name=unknown", nil},
	} {
		if got, next := list(tc.q, f.keyA); !slices.Equal(got, tc.want) || next != "" {
			t.Fatalf("%q: %v (next %q), want %v", tc.q, got, next, tc.want)
		}
	}
	if got, _ := list("", keyB); !slices.Equal(got, full(slugB, "sb")) {
		t.Fatalf("team B: %v", got)
	}
	// Pages of 1 and 2 through the tie: every snapshot once, in order,
	// the last page without a token.
	for _, limit := range []string{"1", "2"} {
		var pages []string
		tok := ""
		for i := 0; i < 6; i++ {
			q := "?limit=" + limit
			if tok != "" {
				q += "&nextToken=" + url.QueryEscape(tok)
			}
			var got []string
			got, tok = list(q, f.keyA)
			pages = append(pages, got...)
			if tok == "" {
				break
			}
		}
		if want := full(slugA, "s5", "s4", "s3", "s2", "s1"); !slices.Equal(pages, want) || tok != "" {
			t.Fatalf("paged by %s: %v (token %q), want %v", limit, pages, tok, want)
		}
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?nextToken=%21%21"} {
		f.do(t, "GET", "/snapshots"+q, f.keyA, nil).expect(t, 400, nil)
	}

	// Templates: built-in images, the team's and the public snapshots.
	r := f.do(t, "GET", "/templates", f.keyA, nil)
	var tpls []templateJSON
	r.expect(t, 200, &tpls)
	var names []string
	for _, tp := range tpls {
		names = append(names, tp.TemplateID)
		if tp.TemplateID == "pub" && !tp.Public || tp.TemplateID == "s1" && (tp.Public || tp.CPUCount != 2 || tp.MemoryMB != 512) {
			t.Fatalf("template %+v", tp)
		}
	}
	for _, want := range append(image.Templates(), "s1", "s2", "s3", "s4", "s5", "pub") {
		if !slices.Contains(names, want) {
			t.Fatalf("templates %v lack %s", names, want)
		}
	}
	if slices.Contains(names, "sb") {
		t.Fatalf("team B's template listed for team A: %v", names)
	}
	for _, tc := range []struct {
		alias  string
		status int
		public bool
	}{
		{"base", 200, true}, {"minimal", 200, true}, {"s1", 200, false}, {"pub", 200, true},
		{"sb", 404, false}, {"nope", 404, false}, {"-x", 404, false},
	} {
		r := f.do(t, "GET", "/templates/aliases/"+tc.alias, f.keyA, nil)
		var got map[string]any
		r.expect(t, tc.status, &got)
		if tc.status == 200 && (got["templateID"] != tc.alias || got["public"] != tc.public || len(got) != 2) {
			t.Fatalf("alias %s: %v", tc.alias, got)
		}
	}
	f.do(t, "GET", "/templates/aliases/base", "", nil).expect(t, 401, nil)

	// Delete: 404 for what the team cannot delete by that name; a public
	// one is 403. (Deleting its own needs the agent: the VM test.)
	for _, tc := range []struct {
		id   string
		want int
	}{
		{"nope", 404}, {"sb", 404}, {"s1:v2", 404}, {"pub", 403}, {"pub:default", 403},
		{enc(slugA + "/pub:default"), 403}, {enc(slugB + "/sb:default"), 404}, {enc(slugA + "/sb:default"), 404},
		{enc(slugA + "/s1:v2"), 404}, {enc("a/b/c"), 404}, {enc(slugA + "/"), 404},
	} {
		f.do(t, "DELETE", "/templates/"+tc.id, f.keyA, nil).expect(t, tc.want, nil)
	}
	if got, _ := list("", keyB); !slices.Equal(got, full(slugB, "sb")) {
		t.Fatalf("team B's snapshot after team A's delete: %v", got)
	}
}

func manyCIDRs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("198.51.%d.%d/32", i/256, i%256)
	}
	return out
}

// teamUUID is the store's UUID of a team (for rows the test inserts).
func teamUUID(id service.TeamID) pgtype.UUID {
	b, ok := id.UUID()
	return pgtype.UUID{Bytes: b, Valid: ok}
}
