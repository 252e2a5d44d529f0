package e2bapi

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/recipe"
	"github.com/capsulehq/capsule/internal/wireid"
)

func TestToRecipe(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name    string
		in      triggerJSON
		want    []string // lines of the recipe
		steps   []int
		copies  map[int]string
		baseErr string
		err     string
	}{
		{name: "default base, every step", in: triggerJSON{StartCmd: "python3 -m http.server 8000", ReadyCmd: "curl -s localhost:8000",
			Steps: []stepJSON{
				{Type: "RUN", Args: []string{"echo hi"}},
				{Type: "COPY", Args: []string{"src/*.py", "app/", "user", "493"}, FilesHash: hash},
				{Type: "ENV", Args: []string{"A", "1", "B", "two words"}},
				{Type: "WORKDIR", Args: []string{"/app"}},
				{Type: "USER", Args: []string{"root", "true"}},
				{Type: "RUN", Args: []string{"whoami", "user"}},
			}},
			want: []string{"FROM base", "USER user", "RUN echo hi", `COPY --chown=user --chmod=0755 "src" "app/"`, `ENV A="1" B="two words"`,
				`WORKDIR "/app"`, "USER root", "USER user", "RUN whoami", "USER root", "START python3 -m http.server 8000",
				"HEALTHCHECK --interval=2s --timeout=60s --start-period=0 --retries=300 curl -s localhost:8000"},
			steps: []int{0, 1, 2, 3, 4, 5, 6, 6, 6}, copies: map[int]string{3: hash}},
		{name: "from a template, start without ready", in: triggerJSON{FromTemplate: "team/app:default", StartCmd: "srv"},
			want: []string{"FROM app", "START srv", "HEALTHCHECK --interval=2s --timeout=60s --start-period=0 --retries=300 sleep 20"}},
		{name: "multi-line command", in: triggerJSON{FromTemplate: "base", Steps: []stepJSON{{Type: "RUN", Args: []string{"a\nb"}}}},
			want:  []string{"FROM base", "RUN echo YQpi | base64 -d | sh", "HEALTHCHECK --interval=2s --timeout=60s --start-period=0 --retries=300 true"},
			steps: []int{1}},
		{name: "an image no registry serves", in: triggerJSON{FromImage: "ubuntu:22.04"}, baseErr: `the image "ubuntu:22.04" cannot be pulled`},
		{name: "COPY without hash", in: triggerJSON{Steps: []stepJSON{{Type: "COPY", Args: []string{"a", "b"}}}}, err: "filesHash"},
		{name: "odd ENV", in: triggerJSON{Steps: []stepJSON{{Type: "ENV", Args: []string{"A"}}}}, err: "pairs"},
		{name: "unknown step", in: triggerJSON{Steps: []stepJSON{{Type: "ADD", Args: []string{"a"}}}}, err: `"ADD" is not supported`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := toRecipe(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.baseErr != "" {
				if !strings.Contains(got.baseErr, tc.baseErr) {
					t.Fatalf("baseErr = %q", got.baseErr)
				}
				return
			}
			if lines := strings.Split(strings.TrimSpace(got.text), "\n"); strings.Join(lines, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("recipe:\n%s\nwant:\n%s", got.text, strings.Join(tc.want, "\n"))
			}
			if _, err := recipe.Parse(got.text); err != nil {
				t.Fatalf("the recipe does not parse: %v", err)
			}
			if tc.steps != nil && !equalInts(got.steps, tc.steps) {
				t.Errorf("steps = %v, want %v", got.steps, tc.steps)
			}
			for k, v := range tc.copies {
				if got.copies[k] != v {
					t.Errorf("copies = %v, want %v", got.copies, tc.copies)
				}
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestTemplateBuildFlow walks E2B's HTTP flow up to the queued build (the
// workers, with VMs, are package builds' tests): create, the file check,
// the self-authorising upload (and its forgeries), the trigger, the status
// with logsOffset, an image that cannot be pulled failing at "base", and
// another team's build answering 404.
func TestTemplateBuildFlow(t *testing.T) {
	e := newEnv(t, "", "")
	svc, err := builds.New(builds.Config{Store: e.st, Sandboxes: e.sbx, Audit: e.se.Audit})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Accounts: e.acc, Sandboxes: e.sbx, Domain: testDomain, Builds: svc, Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e.srv = srv
	_, key := e.account(t, "owner@example.com")
	_, otherKey := e.account(t, "other@example.com")

	var created struct {
		TemplateID, BuildID string
		Names               []string
	}
	r := e.do(t, "POST", "/v3/templates", key, map[string]any{"name": "app", "cpuCount": 1, "memoryMB": 512})
	r.expect(t, 202, &created)
	if created.TemplateID != "app" || !strings.HasPrefix(created.BuildID, wireid.Build) {
		t.Fatalf("created %+v", created)
	}
	for _, bad := range []string{":invalid-tag", "app:", "", "app:-x", "app:a/b"} {
		if c := e.do(t, "POST", "/v3/templates", key, map[string]any{"name": bad}).status; c < 400 || c >= 500 {
			t.Errorf("name %q: %d, want 4xx", bad, c)
		}
	}
	// The COPY's files: a gzipped tar, as the SDK sends it.
	var tb bytes.Buffer
	zw := gzip.NewWriter(&tb)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "main.py", Mode: 0o644, Size: 6, Typeflag: tar.TypeReg})
	tw.Write([]byte("print\n"))
	tw.Close()
	zw.Close()
	hash := strings.Repeat("0f", 32)
	var file struct {
		Present bool
		URL     string
	}
	e.do(t, "GET", "/templates/app/files/"+hash, key, nil).expect(t, 201, &file)
	if file.Present || !strings.Contains(file.URL, "/templates/app/files/"+hash+"/upload?") {
		t.Fatalf("file check = %+v", file)
	}
	put := func(u string) int {
		req, _ := http.NewRequest("PUT", u, bytes.NewReader(tb.Bytes()))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	t.Run("forged upload URLs", func(t *testing.T) {
		for _, forged := range []string{
			strings.Replace(file.URL, "token=", "token=00", 1),
			strings.Replace(file.URL, hash, strings.Repeat("1f", 32), 1),
			strings.Replace(file.URL, "expires=", "expires=9", 1),
		} {
			if c := put(forged); c != 403 {
				t.Errorf("PUT %s: %d, want 403", forged, c)
			}
		}
	})
	if c := put(file.URL); c != 201 {
		t.Fatalf("upload: %d", c)
	}
	e.do(t, "GET", "/templates/app/files/"+hash, key, nil).expect(t, 201, &file)
	if !file.Present {
		t.Fatal("the uploaded files are not present")
	}
	e.do(t, "GET", "/templates/app/files/"+hash, otherKey, nil).expect(t, 201, &file)
	if file.Present {
		t.Fatal("another team sees the team's files")
	}
	status := func(key, build string, offset int) (int, map[string]any) {
		r := e.do(t, "GET", "/templates/app/builds/"+build+"/status?logsOffset="+itoa(offset), key, nil)
		var m map[string]any
		json.Unmarshal(r.body, &m)
		return r.status, m
	}
	if c, m := status(key, created.BuildID, 0); c != 200 || m["status"] != "waiting" {
		t.Fatalf("status before the trigger: %d %v", c, m)
	}
	trigger := map[string]any{"steps": []map[string]any{
		{"type": "COPY", "args": []string{"main.py", "/app/"}, "filesHash": hash},
		{"type": "RUN", "args": []string{"python3 /app/main.py"}},
	}, "startCmd": "sleep 1000", "readyCmd": "true"}
	e.do(t, "POST", "/v2/templates/app/builds/"+created.BuildID, otherKey, trigger).expect(t, 404, nil)
	e.do(t, "POST", "/v2/templates/app/builds/"+created.BuildID, key, trigger).expect(t, 202, nil)
	c, m := status(key, created.BuildID, 0)
	if c != 200 || m["status"] != "building" || len(m["logEntries"].([]any)) != 0 {
		t.Fatalf("status after the trigger: %d %v", c, m)
	}
	if c, _ := status(otherKey, created.BuildID, 0); c != 404 {
		t.Errorf("another team's status: %d, want 404", c)
	}
	t.Run("the queued recipe", func(t *testing.T) {
		id, _ := wireid.Parse(wireid.Build, created.BuildID)
		var rec string
		if err := e.st.Pool().QueryRow(context.Background(), "SELECT recipe FROM builds WHERE id = $1", id).Scan(&rec); err != nil {
			t.Fatal(err)
		}
		want := "FROM base\nUSER user\nCOPY \"main.py\" \"/app/\"\nRUN python3 /app/main.py\nSTART sleep 1000\n" +
			"HEALTHCHECK --interval=2s --timeout=60s --start-period=0 --retries=300 true\n"
		if rec != want {
			t.Errorf("recipe:\n%s\nwant:\n%s", rec, want)
		}
	})

	t.Run("an image that cannot be pulled fails at base", func(t *testing.T) {
		var c2 struct{ BuildID string }
		e.do(t, "POST", "/v3/templates", key, map[string]any{"name": "ubuntu-app"}).expect(t, 202, &c2)
		r := e.do(t, "POST", "/v2/templates/ubuntu-app/builds/"+c2.BuildID, key, map[string]any{"fromImage": "ubuntu:22.04", "steps": []any{}})
		r.expect(t, 202, nil)
		r = e.do(t, "GET", "/templates/ubuntu-app/builds/"+c2.BuildID+"/status", key, nil)
		var st struct {
			Status string
			Reason struct{ Message, Step string }
		}
		r.expect(t, 200, &st)
		if st.Status != "error" || st.Reason.Step != "base" || !strings.Contains(st.Reason.Message, "no container registry") {
			t.Fatalf("status = %+v", st)
		}
	})
}

func itoa(n int) string { return strconv.Itoa(n) }
