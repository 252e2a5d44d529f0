package api

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// multipartBuild sends a build as multipart/form-data.
func (e *apiEnv) multipartBuild(t *testing.T, path, key string, fields map[string]string, archive []byte) (int, []byte) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	if archive != nil {
		fw, _ := mw.CreateFormFile("archive", "context.tar")
		fw.Write(archive)
	}
	mw.Close()
	req, _ := http.NewRequest("POST", e.srv.URL+path, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func smallTar(t *testing.T, size int) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "app.py", Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg})
	tw.Write(bytes.Repeat([]byte("x"), size))
	tw.Close()
	return b.Bytes()
}

// TestBuildRoutes: owners build (JSON or multipart with an archive),
// members read but may not build or cancel, another team's build answers
// like a missing one, a big archive is 413, and a template in use cannot
// be deleted.
func TestBuildRoutes(t *testing.T) {
	var svc *builds.Service
	e := newAPIWith(t, "", "", func(c *Config) {
		var err error
		svc, err = builds.New(builds.Config{Store: c.Store, Sandboxes: c.Sandboxes, Audit: c.Audit, MaxArchiveBytes: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		c.Builds = svc
	})
	owner := e.user(t, "owner@example.com")
	member := e.user(t, "member@example.com")
	e.join(t, member, owner.team, "member")
	memberKey := e.teamKey(t, owner.team, member)
	other := e.user(t, "other@example.com")

	var b buildJSON
	t.Run("owner builds with JSON", func(t *testing.T) {
		if c := e.do(t, "POST", "/v1/templates/app/builds", owner.key, map[string]any{"recipe": "FROM base\nRUN echo hi\nHEALTHCHECK true"}, &b); c != 202 {
			t.Fatalf("create: %d", c)
		}
		if b.Status != "pending" || b.Template != "app" || b.Kind != "snapshot" || b.TotalSteps != 1 || len(b.Steps) != 1 || b.Steps[0].Line != 2 {
			t.Fatalf("build = %+v", b)
		}
	})
	t.Run("owner builds with a multipart archive", func(t *testing.T) {
		c, data := e.multipartBuild(t, "/v1/templates/app/builds", owner.key,
			map[string]string{"recipe": "FROM base\nCOPY app.py /srv/app.py", "vcpus": "1"}, smallTar(t, 100))
		var mb buildJSON
		json.Unmarshal(data, &mb)
		if c != 202 || mb.VCPUs != 1 || mb.Kind != "image" {
			t.Fatalf("multipart create: %d %s", c, data)
		}
	})
	t.Run("an archive over the limit is 413", func(t *testing.T) {
		c, data := e.multipartBuild(t, "/v1/templates/app/builds", owner.key,
			map[string]string{"recipe": "FROM base\nCOPY app.py /srv/app.py"}, smallTar(t, 100<<10))
		if c != http.StatusRequestEntityTooLarge || !strings.Contains(string(data), "over the limit") {
			t.Fatalf("big archive: %d %s", c, data)
		}
	})
	t.Run("a bad recipe is 400 naming its line", func(t *testing.T) {
		var eb errorBody
		if c := e.do(t, "POST", "/v1/templates/app/builds", owner.key, map[string]any{"recipe": "FROM base\nRUN\nFOO x"}, &eb); c != 400 ||
			!strings.Contains(eb.Message, "line 2: RUN needs a command") || !strings.Contains(eb.Message, `line 3: unknown instruction "FOO"`) {
			t.Fatalf("bad recipe: %d %+v", c, eb)
		}
	})
	t.Run("a member reads but may not build or cancel", func(t *testing.T) {
		if c := e.do(t, "POST", "/v1/templates/app/builds", memberKey, map[string]any{"recipe": "FROM base"}, nil); c != 403 {
			t.Errorf("member build: %d, want 403", c)
		}
		if c := e.do(t, "POST", "/v1/templates/app/builds/"+b.ID+"/cancel", memberKey, nil, nil); c != 403 {
			t.Errorf("member cancel: %d, want 403", c)
		}
		if c := e.do(t, "GET", "/v1/templates/app/builds/"+b.ID, memberKey, nil, nil); c != 200 {
			t.Errorf("member get: %d, want 200", c)
		}
	})
	t.Run("another team's build is a missing one", func(t *testing.T) {
		missing := "bld-" + strings.Repeat("f", 32)
		for _, suffix := range []string{"", "/logs", "/cancel", "/logs/stream"} {
			method := "GET"
			if suffix == "/cancel" {
				method = "POST"
			}
			c1 := e.do(t, method, "/v1/templates/app/builds/"+b.ID+suffix, other.key, nil, nil)
			c2 := e.do(t, method, "/v1/templates/app/builds/"+missing+suffix, other.key, nil, nil)
			if c1 != 404 || c2 != 404 {
				t.Errorf("%s %s: another team %d, missing %d; want 404", method, suffix, c1, c2)
			}
		}
		if c := e.do(t, "GET", "/v1/templates/other/builds/"+b.ID, owner.key, nil, nil); c != 404 {
			t.Errorf("the build under another template's path: %d, want 404", c)
		}
	})
	t.Run("list and logs", func(t *testing.T) {
		var list struct {
			Builds []buildJSON `json:"builds"`
		}
		if c := e.do(t, "GET", "/v1/templates/app/builds", owner.key, nil, &list); c != 200 || len(list.Builds) != 2 {
			t.Fatalf("list: %d %+v", c, list)
		}
		var logs buildLogsJSON
		if c := e.do(t, "GET", "/v1/templates/app/builds/"+b.ID+"/logs?offset=0", owner.key, nil, &logs); c != 200 || logs.Status != "pending" || len(logs.Lines) != 0 {
			t.Fatalf("logs: %d %+v", c, logs)
		}
		if c := e.do(t, "GET", "/v1/templates/app/builds/"+b.ID+"/logs?offset=-1", owner.key, nil, nil); c != 400 {
			t.Errorf("negative offset: %d", c)
		}
	})
	t.Run("a template with a build under way cannot be deleted", func(t *testing.T) {
		// A template record of that name, as a finished build leaves it.
		team := mustUUID(t, wireid.Team, owner.team)
		if _, err := e.st.Queries().UpsertTemplate(context.Background(), db.UpsertTemplateParams{TeamID: team, Name: "app", Kind: "image",
			VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if c := e.do(t, "DELETE", "/v1/templates/app", owner.key, nil, nil); c != 409 {
			t.Errorf("delete with a pending build: %d, want 409", c)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		var got buildJSON
		if c := e.do(t, "POST", "/v1/templates/app/builds/"+b.ID+"/cancel", owner.key, nil, &got); c != 202 || got.Status != "cancelled" {
			t.Fatalf("cancel: %d %+v", c, got)
		}
		if c := e.do(t, "POST", "/v1/templates/app/builds/"+b.ID+"/cancel", owner.key, nil, nil); c != 409 {
			t.Errorf("cancel again: %d, want 409", c)
		}
	})
}
