package e2bapi

import (
	"context"
	"crypto/rand"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// TestTemplateTags walks E2B's tag routes (Template.assignTags, removeTags,
// getTags, exists, a build's "name:tag") over versions the test inserts
// (the builds that make them, with VMs, are the SDK suite's): tags name
// versions, a hidden version goes with its last tag, "default" cannot be
// removed, bad tags are 400, and another team's template is 404 and
// unchanged.
func TestTemplateTags(t *testing.T) {
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
	pA, key := e.account(t, "owner@example.com")
	pB, keyB := e.account(t, "other@example.com")
	ctx := context.Background()
	q := e.st.Queries()

	// Team A: "app" (its default version) and a hidden version tagged v1;
	// "lonely", which has only a tagged version. Team B: "app" too.
	insert := func(p service.Principal, name string, hidden bool, versionOf string) db.Template {
		t.Helper()
		id := newTestUUID(t)
		if hidden {
			name = service.HiddenTemplateName(id)
		}
		row, err := q.InsertTemplate(ctx, db.InsertTemplateParams{ID: id, TeamID: teamUUID(p.TeamID), Name: name,
			Kind: store.TemplateImage, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		if hidden {
			if err := q.SetTemplateHidden(ctx, db.SetTemplateHiddenParams{ID: row.ID, Name: service.HiddenTemplateName(row.ID), Hidden: true, VersionOf: versionOf}); err != nil {
				t.Fatal(err)
			}
		}
		return row
	}
	tag := func(p service.Principal, name, tg string, row db.Template) {
		t.Helper()
		if _, err := q.SetTemplateTag(ctx, db.SetTemplateTagParams{TeamID: teamUUID(p.TeamID), Name: name, Tag: tg, TemplateID: row.ID}); err != nil {
			t.Fatal(err)
		}
	}
	app := insert(pA, "app", false, "")
	v1 := insert(pA, "", true, "app")
	tag(pA, "app", "default", app)
	tag(pA, "app", "v1", v1)
	lonely := insert(pA, "", true, "lonely")
	tag(pA, "lonely", "beta", lonely)
	appB := insert(pB, "app", false, "")
	tag(pB, "app", "default", appB)

	tagsOf := func(key, name string, want int) []string {
		t.Helper()
		var got []templateTagJSON
		r := e.do(t, "GET", "/templates/"+name+"/tags", key, nil)
		if want != 200 {
			r.expect(t, want, nil)
			return nil
		}
		r.expect(t, 200, &got)
		var out []string
		for _, g := range got {
			out = append(out, g.Tag)
		}
		return out
	}
	exists := func(name string) bool {
		row, err := q.GetTemplate(ctx, db.GetTemplateParams{TeamID: teamUUID(pA.TeamID), Name: name})
		return err == nil && row.TeamID == teamUUID(pA.TeamID)
	}

	t.Run("list", func(t *testing.T) {
		if got := tagsOf(key, "app", 200); !slices.Equal(got, []string{"default", "v1"}) {
			t.Fatalf("tags %v", got)
		}
		if got := tagsOf(keyB, "app", 200); !slices.Equal(got, []string{"default"}) {
			t.Fatalf("team B's tags %v", got)
		}
		tagsOf(key, "nope", 404)
	})
	t.Run("a tag resolves to its version", func(t *testing.T) {
		for _, tc := range []struct {
			p          service.Principal
			name, tag  string
			want       string
			wantStatus bool
		}{
			{pA, "app", "v1", v1.Name, true},
			{pA, "app", "default", "app", true},
			{pA, "lonely", "beta", lonely.Name, true},
			{pA, "app", "nope", "", false},
			{pB, "app", "v1", "", false},
		} {
			got, err := e.sbx.ResolveTemplateTag(ctx, tc.p, tc.name, tc.tag)
			if (err == nil) != tc.wantStatus || got != tc.want {
				t.Errorf("%s:%s = %q, %v; want %q", tc.name, tc.tag, got, err, tc.want)
			}
		}
		// Sandbox.create of an unknown tag, or another team's: 404.
		e.do(t, "POST", "/sandboxes", key, map[string]any{"templateID": "app:nope"}).expect(t, 404, nil)
		e.do(t, "POST", "/sandboxes", keyB, map[string]any{"templateID": "lonely:beta"}).expect(t, 404, nil)
	})
	t.Run("exists with only tagged versions", func(t *testing.T) {
		var got map[string]any
		e.do(t, "GET", "/templates/aliases/lonely", key, nil).expect(t, 200, &got)
		if got["templateID"] != "lonely" {
			t.Fatalf("alias: %v", got)
		}
		e.do(t, "GET", "/templates/aliases/lonely", keyB, nil).expect(t, 404, nil)
	})
	t.Run("assign", func(t *testing.T) {
		var got struct {
			BuildID string
			Tags    []string
		}
		e.do(t, "POST", "/templates/tags", key, map[string]any{"target": "app:v1", "tags": []string{"prod", "stable"}}).expect(t, 201, &got)
		if !slices.Equal(got.Tags, []string{"prod", "stable"}) {
			t.Fatalf("assigned %+v", got)
		}
		if got := tagsOf(key, "app", 200); !slices.Equal(got, []string{"default", "prod", "stable", "v1"}) {
			t.Fatalf("tags %v", got)
		}
		for _, tc := range []struct {
			key    string
			body   map[string]any
			status int
		}{
			{key, map[string]any{"target": "app:nope", "tags": []string{"x"}}, 404},
			{keyB, map[string]any{"target": "lonely:beta", "tags": []string{"x"}}, 404},
			{key, map[string]any{"target": "app:v1", "tags": []string{"-bad"}}, 400},
			{key, map[string]any{"target": "app:v1", "tags": []string{}}, 400},
			{key, map[string]any{"target": "", "tags": []string{"x"}}, 400},
		} {
			e.do(t, "POST", "/templates/tags", tc.key, tc.body).expect(t, tc.status, nil)
		}
		if got := tagsOf(keyB, "app", 200); !slices.Equal(got, []string{"default"}) {
			t.Fatalf("team B's tags changed: %v", got)
		}
	})
	t.Run("remove", func(t *testing.T) {
		for _, tc := range []struct {
			key    string
			body   map[string]any
			status int
		}{
			{key, map[string]any{"name": "app", "tags": []string{"default"}}, 400},
			{key, map[string]any{"name": "app", "tags": []string{"nope"}}, 404},
			{keyB, map[string]any{"name": "app", "tags": []string{"v1"}}, 404},
			{key, map[string]any{"name": "app", "tags": []string{"v1", "prod"}}, 204},
		} {
			e.do(t, "DELETE", "/templates/tags", tc.key, tc.body).expect(t, tc.status, nil)
		}
		if !exists(v1.Name) {
			t.Fatal("the version still tagged stable is gone")
		}
		e.do(t, "DELETE", "/templates/tags", key, map[string]any{"name": "app", "tags": []string{"stable"}}).expect(t, 204, nil)
		if exists(v1.Name) {
			t.Fatal("the version no tag names is kept")
		}
		if got := tagsOf(key, "app", 200); !slices.Equal(got, []string{"default"}) {
			t.Fatalf("tags %v", got)
		}
	})
	t.Run("assigning default makes a version the template", func(t *testing.T) {
		e.do(t, "POST", "/templates/tags", key, map[string]any{"target": "lonely:beta", "tags": []string{"default"}}).expect(t, 201, nil)
		ref, err := e.sbx.LookupTemplate(ctx, pA, "lonely")
		if err != nil || ref.Snapshot == nil || ref.Snapshot.ID.String() != service.TemplateID(lonely.ID) {
			t.Fatalf("lonely = %+v, %v; want the beta version", ref, err)
		}
		// The former default of app goes when default moves and no other
		// tag names it.
		e.do(t, "POST", "/templates/tags", key, map[string]any{"target": "app", "tags": []string{"old"}}).expect(t, 201, nil)
		if got, _ := e.sbx.ResolveTemplateTag(ctx, pA, "app", "old"); got != "app" {
			t.Fatalf("app:old = %q", got)
		}
	})
	t.Run("a build's name and tags", func(t *testing.T) {
		var created struct{ Tags []string }
		e.do(t, "POST", "/v3/templates", key, map[string]any{"name": "app:v2", "tags": []string{"prod", "v2"}}).expect(t, 202, &created)
		if !slices.Equal(created.Tags, []string{"v2", "prod"}) {
			t.Fatalf("tags %v", created.Tags)
		}
		e.do(t, "POST", "/v3/templates", key, map[string]any{"name": "app"}).expect(t, 202, &created)
		if !slices.Equal(created.Tags, []string{"default"}) {
			t.Fatalf("tags %v", created.Tags)
		}
		e.do(t, "POST", "/v3/templates", key, map[string]any{"name": "app", "tags": []string{"a", "-b"}}).expect(t, 400, nil)
	})
}

func newTestUUID(t *testing.T) pgtype.UUID {
	t.Helper()
	u := pgtype.UUID{Valid: true}
	if _, err := rand.Read(u.Bytes[:]); err != nil {
		t.Fatal(err)
	}
	u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
	u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
	return u
}
