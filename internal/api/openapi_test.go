package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/service"
)

// The OpenAPI document as the tests read it.
type oaDoc struct {
	OpenAPI    string                    `yaml:"openapi"`
	Info       map[string]any            `yaml:"info"`
	Paths      map[string]map[string]any `yaml:"paths"`
	Components map[string]map[string]any `yaml:"components"`
	// raw is the whole document; ops its operations by "METHOD /path".
	raw map[string]any
	ops map[string]map[string]any
}

var oaMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadOpenAPI(t *testing.T) *oaDoc {
	t.Helper()
	var d oaDoc
	if err := yaml.Unmarshal(openAPIYAML, &d); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if err := yaml.Unmarshal(openAPIYAML, &d.raw); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	d.ops = map[string]map[string]any{}
	for p, item := range d.Paths {
		for k, v := range item {
			if !slices.Contains(oaMethods, k) {
				continue
			}
			op, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%s %s: not an object", k, p)
			}
			d.ops[strings.ToUpper(k)+" "+p] = op
		}
	}
	return &d
}

var (
	goWildcard = regexp.MustCompile(`\{[^{}]*\}`)
	oaParam    = regexp.MustCompile(`\{([^{}]+)\}`)
)

// routeKey normalizes a route to "METHOD /path/{}": parameter names do not
// matter, net/http's {name...} is a parameter and {$} (exactly this path)
// is dropped.
func routeKey(method, path string) string {
	path = strings.ReplaceAll(path, "{$}", "")
	return method + " " + goWildcard.ReplaceAllString(path, "{}")
}

// TestOpenAPICoversRoutes: every registered route is documented, and every
// documented operation is registered.
func TestOpenAPICoversRoutes(t *testing.T) {
	d := loadOpenAPI(t)
	e := newAPI(t, "", "")
	routes := e.h.Routes()
	if len(routes) == 0 {
		t.Fatal("no routes registered")
	}
	registered := map[string]string{}
	for _, r := range routes {
		method, path, ok := strings.Cut(r, " ")
		if !ok || !strings.HasPrefix(path, "/") {
			t.Fatalf("route %q: want \"METHOD /path\"", r)
		}
		k := routeKey(method, path)
		if prev, dup := registered[k]; dup {
			t.Errorf("routes %q and %q are the same operation", prev, r)
		}
		registered[k] = r
	}
	documented := map[string]string{}
	for op := range d.ops {
		method, path, _ := strings.Cut(op, " ")
		documented[routeKey(method, path)] = op
	}
	var missing, extra []string
	for k, r := range registered {
		if _, ok := documented[k]; !ok {
			missing = append(missing, r)
		}
	}
	for k, op := range documented {
		if _, ok := registered[k]; !ok {
			extra = append(extra, op)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	for _, r := range missing {
		t.Errorf("route %q is not documented in internal/api/openapi.yaml", r)
	}
	for _, op := range extra {
		t.Errorf("openapi.yaml documents %q, which is not a registered route", op)
	}
}

// TestOpenAPIDocumentIsSound checks the document's structure: version,
// operations with responses, path parameters, operation IDs, security
// schemes, error responses in the one error shape, and that every $ref
// resolves.
func TestOpenAPIDocumentIsSound(t *testing.T) {
	d := loadOpenAPI(t)
	if !strings.HasPrefix(d.OpenAPI, "3.1.") {
		t.Errorf("openapi: %q, want 3.1.x", d.OpenAPI)
	}
	if d.Info["title"] == nil || d.Info["version"] == nil {
		t.Error("info needs title and version")
	}
	schemes := d.Components["securitySchemes"]
	checkSecurity := func(where string, reqs any) {
		list, ok := reqs.([]any)
		if !ok {
			t.Errorf("%s: security is not a list", where)
			return
		}
		for _, r := range list {
			m, _ := r.(map[string]any)
			for name := range m {
				if _, ok := schemes[name]; !ok {
					t.Errorf("%s: security scheme %q is not defined", where, name)
				}
			}
		}
	}
	checkSecurity("top level", d.raw["security"])
	for _, want := range []string{"ApiKeyAuth", "BearerAuth"} {
		if _, ok := schemes[want]; !ok {
			t.Errorf("securitySchemes: %s missing", want)
		}
	}

	ids := map[string]string{}
	for key, op := range d.ops {
		_, path, _ := strings.Cut(key, " ")
		if !strings.HasPrefix(path, "/") {
			t.Errorf("%s: path must start with /", key)
		}
		id, _ := op["operationId"].(string)
		if id == "" {
			t.Errorf("%s: no operationId", key)
		} else if prev, dup := ids[id]; dup {
			t.Errorf("%s: operationId %q is %s's too", key, id, prev)
		}
		ids[id] = key
		if s, ok := op["security"]; ok {
			checkSecurity(key, s)
		}

		// Path parameters: exactly the template's, each required.
		want := map[string]bool{}
		for _, m := range oaParam.FindAllStringSubmatch(path, -1) {
			want[m[1]] = true
		}
		params, _ := op["parameters"].([]any)
		if item, ok := d.Paths[path]["parameters"].([]any); ok {
			params = append(params, item...)
		}
		got := map[string]bool{}
		for i, p := range params {
			pm := d.deref(t, p)
			if pm == nil {
				t.Errorf("%s: parameter %d does not resolve", key, i)
				continue
			}
			if pm["in"] == "path" {
				got[pm["name"].(string)] = true
				if pm["required"] != true {
					t.Errorf("%s: path parameter %v must be required", key, pm["name"])
				}
			}
			if pm["schema"] == nil && pm["content"] == nil {
				t.Errorf("%s: parameter %v has no schema", key, pm["name"])
			}
		}
		if !reflect.DeepEqual(want, got) && (len(want) > 0 || len(got) > 0) {
			t.Errorf("%s: path parameters %v, the path has %v", key, keys(got), keys(want))
		}

		// Responses: at least one; status codes; errors in the error shape.
		resps, _ := op["responses"].(map[string]any)
		if len(resps) == 0 {
			t.Errorf("%s: no responses", key)
		}
		success := false
		for code, r := range resps {
			n, err := strconv.Atoi(code)
			if code != "default" && (err != nil || n < 100 || n > 599) {
				t.Errorf("%s: response %q is not a status code", key, code)
				continue
			}
			if n < 400 {
				success = true
				continue
			}
			rm := d.deref(t, r)
			if rm == nil {
				t.Errorf("%s: response %s does not resolve", key, code)
				continue
			}
			if !d.isErrorShape(rm) {
				t.Errorf("%s: response %s is not application/json #/components/schemas/Error", key, code)
			}
		}
		if !success {
			t.Errorf("%s: no success response", key)
		}
	}

	// Every $ref anywhere resolves.
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				if d.resolve(ref) == nil {
					t.Errorf("%s: $ref %q does not resolve", where, ref)
				}
			}
			for k, c := range x {
				walk(where+"/"+k, c)
			}
		case []any:
			for i, c := range x {
				walk(fmt.Sprintf("%s/%d", where, i), c)
			}
		}
	}
	walk("#", d.raw)
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// resolve follows a local JSON pointer ("#/components/…"); nil when it
// names nothing.
func (d *oaDoc) resolve(ref string) any {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil
	}
	var cur any = d.raw
	for _, part := range strings.Split(p, "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[part]; !ok {
			return nil
		}
	}
	return cur
}

// deref returns v as an object, following $refs.
func (d *oaDoc) deref(t *testing.T, v any) map[string]any {
	for range 10 {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		v = d.resolve(ref)
	}
	t.Fatal("$ref loop")
	return nil
}

func (d *oaDoc) isErrorShape(resp map[string]any) bool {
	content, _ := resp["content"].(map[string]any)
	if len(content) != 1 {
		return false
	}
	mt, _ := content["application/json"].(map[string]any)
	schema, _ := mt["schema"].(map[string]any)
	return schema["$ref"] == "#/components/schemas/Error"
}

// jsonFields returns the JSON names of a struct's fields (embedded structs
// flattened) and whether each is always present (no omitempty).
func jsonFields(typ reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out[name] = !strings.Contains(opts, "omitempty")
	}
	return out
}

// TestOpenAPISchemasMatchJSONTypes: the documented schemas have exactly the
// fields of the Go types the handlers encode and decode; in answers, the
// required fields are exactly those always present.
func TestOpenAPISchemasMatchJSONTypes(t *testing.T) {
	d := loadOpenAPI(t)
	schemas := d.Components["schemas"]
	for _, tc := range []struct {
		schema string
		v      any
		answer bool
	}{
		{"Error", errorBody{}, true},
		{"User", userJSON{}, true},
		{"Team", teamJSON{}, true},
		{"Account", accountJSON{}, true},
		{"Session", sessionJSON{}, true},
		{"CookieSession", cookieSessionJSON{}, true},
		{"AuthConfig", authConfigJSON{}, true},
		{"SessionRequest", sessionRequest{}, false},
		{"ApiKey", apiKeyJSON{}, true},
		{"Sandbox", sandboxJSON{}, true},
		{"AuditLog", auditLogJSON{}, true},
		{"SignupRequest", signupJSON{}, false},
		{"Invitation", invitationJSON{}, true},
		{"CreateInvitationRequest", createInvitationJSON{}, false},
		{"CreateSandboxRequest", createSandboxJSON{}, false},
		{"CreateApiKeyRequest", createKeyJSON{}, false},
		{"TeamDetail", teamDetailJSON{}, true},
		{"Member", memberJSON{}, true},
		{"Me", meJSON{}, true},
		{"UserHit", userHitJSON{}, true},
		{"TeamNameRequest", nameBody{}, false},
		{"UpdateMeRequest", nameBody{}, false},
		{"ChangePasswordRequest", changePasswordJSON{}, false},
		{"AddMemberRequest", addMemberJSON{}, false},
		{"SetMemberRoleRequest", memberRoleJSON{}, false},
		{"SwitchTeamRequest", switchTeamJSON{}, false},
		{"SetTimeoutRequest", timeoutJSON{}, false},
		{"ForkRequest", forkJSON{}, false},
		{"ForkResponse", forksJSON{}, true},
		{"ForkResult", forkResultJSON{}, true},
		{"MemoryRequest", memoryJSON{}, false},
		{"NetworkRules", networkJSON{}, true},
		{"ExecRequest", execJSON{}, false},
		{"ExecResult", execResultJSON{}, true},
		{"ExecStreamPTY", wsPTY{}, false},
		{"ExecStreamClientMessage", wsClientMessage{}, false},
		{"ExecStreamServerMessage", wsServerMessage{}, true},
		{"FileInfo", fileInfoJSON{}, true},
		{"FileEntry", fileEntryJSON{}, true},
		{"MakeDirRequest", mkdirJSON{}, false},
		{"CreateSnapshotRequest", createSnapshotJSON{}, false},
		{"Snapshot", snapshotJSON{}, true},
		{"CreateBuildRequest", createBuildJSON{}, false},
		{"Build", buildJSON{}, true},
		{"BuildStep", buildStepJSON{}, true},
		{"BuildLogLine", buildLogJSON{}, true},
		{"BuildLogs", buildLogsJSON{}, true},
		{"SandboxLogs", sandboxLogsJSON{}, true},
		{"SandboxLogEntry", sandboxLogEntryJSON{}, true},
		{"AdminTeam", adminTeamJSON{}, true},
		{"TeamBYOC", teamBYOCJSON{}, true},
		{"SetTeamBYOCRequest", enabledJSON{}, false},
		{"AdminUser", adminUserJSON{}, true},
		{"UserState", userStateJSON{}, true},
		{"SetUserDisabledRequest", disabledJSON{}, false},
		{"AdminHost", adminHostJSON{}, true},
		{"AdminAuditLog", adminAuditLogJSON{}, true},
		{"Host", hostJSON{}, true},
		{"HostResources", hostResourcesJSON{}, true},
		{"CreateHostRequest", createHostJSON{}, false},
		{"CreatedHost", createdHostJSON{}, true},
		{"UpdateHostRequest", updateHostJSON{}, false},
		{"HostSandbox", hostSandboxJSON{}, true},
		{"HostDeletion", hostDeletionJSON{}, true},
		{"HostEvacuation", hostEvacuationJSON{}, true},
		{"HostRegisterRequest", hostapi.RegisterRequest{}, false},
		{"HostRegisterResponse", hostapi.RegisterResponse{}, true},
		{"HostCredentials", hostapi.Credentials{}, true},
		{"HostRefreshRequest", hostapi.RefreshRequest{}, false},
		{"HostHeartbeat", hostapi.Heartbeat{}, false},
		{"HostHeartbeatResponse", hostapi.HeartbeatResponse{}, true},
		{"HostResources", hostapi.Resources{}, true},
		{"SandboxMetricSeries", metricSeriesJSON{}, true},
		{"SandboxMetricPoint", metricPointJSON{}, true},
		{"SandboxGuestMetric", guestMetricJSON{}, true},
		{"TeamFigures", teamFiguresJSON{}, true},
		{"TeamStatsPoint", teamStatsPointJSON{}, true},
		{"TeamStats", teamStatsJSON{}, true},
		{"TeamUsageDay", usageDayJSON{}, true},
		{"TeamUsageTotal", usageTotalJSON{}, true},
		{"TeamUsage", usageJSON{}, true},
	} {
		t.Run(tc.schema, func(t *testing.T) {
			s, _ := schemas[tc.schema].(map[string]any)
			if s == nil {
				t.Fatalf("components/schemas/%s missing", tc.schema)
			}
			props, _ := s["properties"].(map[string]any)
			fields := jsonFields(reflect.TypeOf(tc.v))
			for name := range fields {
				if _, ok := props[name]; !ok {
					t.Errorf("field %q is not documented", name)
				}
			}
			for name := range props {
				if _, ok := fields[name]; !ok {
					t.Errorf("documented property %q does not exist", name)
				}
			}
			if !tc.answer {
				return
			}
			var req []string
			for _, r := range s["required"].([]any) {
				req = append(req, r.(string))
			}
			for name, always := range fields {
				if always != slices.Contains(req, name) {
					t.Errorf("field %q: always present %v, but required %v", name, always, !always)
				}
			}
		})
	}
}

// TestOpenAPIServed: /openapi.yaml is the embedded document, /openapi.json
// the same document as JSON.
func TestOpenAPIServed(t *testing.T) {
	e := newAPI(t, "", "")
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Get(e.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	resp, body := get("/openapi.yaml")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/yaml" || string(body) != string(openAPIYAML) {
		t.Fatalf("/openapi.yaml: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
	}
	resp, body = get("/openapi.json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/openapi.json: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var fromJSON, fromYAML any
	if err := json.Unmarshal(body, &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(openAPIYAML, &fromYAML); err != nil {
		t.Fatal(err)
	}
	// Through JSON once, so that both have JSON's types.
	b, _ := json.Marshal(fromYAML)
	_ = json.Unmarshal(b, &fromYAML)
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Fatal("/openapi.json is not openapi.yaml")
	}
	if resp, _ := get("/openapi.yml"); resp.StatusCode != 404 {
		t.Fatalf("/openapi.yml: %d", resp.StatusCode)
	}
}

// TestOpenAPIServerTimingHeader: the create answer's Server-Timing value
// has the documented form.
func TestOpenAPIServerTimingHeader(t *testing.T) {
	d := loadOpenAPI(t)
	h, _ := d.Components["headers"]["ServerTimingAgent"].(map[string]any)
	schema, _ := h["schema"].(map[string]any)
	pattern, _ := schema["pattern"].(string)
	re, err := regexp.Compile(pattern)
	if err != nil || pattern == "" {
		t.Fatalf("components/headers/ServerTimingAgent pattern %q: %v", pattern, err)
	}
	for _, tc := range []struct {
		name   string
		phases []service.Phase
		total  time.Duration
		want   string
	}{
		{"no phases", nil, 0, ""},
		{"agent only", []service.Phase{{Name: "agent", Took: 1234567 * time.Nanosecond}}, 0, "agent;dur=1.235"},
		{"with the API's share", []service.Phase{{Name: "db", Took: time.Millisecond}, {Name: "agent", Took: 3 * time.Second},
			{Name: "host-restore", Took: 2 * time.Second}}, 3002 * time.Millisecond,
			"api;dur=1.000, db;dur=1.000, agent;dur=3000.000, host-restore;dur=2000.000, total;dur=3002.000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := service.ServerTiming(tc.phases, tc.total)
			if v != tc.want {
				t.Errorf("ServerTiming = %q, want %q", v, tc.want)
			}
			if v != "" && !re.MatchString(v) {
				t.Errorf("%q does not match %q", v, pattern)
			}
		})
	}
}
