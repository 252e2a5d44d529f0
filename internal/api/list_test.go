package api

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestListSandboxesOrderAndFilters: GET /v1/sandboxes's order,
// started_after and template, with paging in either order.
func TestListSandboxesOrderAndFilters(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, key, team := e.account(t, "list@example.com")
	tid, err := wireid.Parse(wireid.Team, team)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	var ids []string // oldest first
	for i, tc := range []struct{ template, state string }{
		{"base", store.SandboxRunning}, {"minimal", store.SandboxPaused}, {"base", store.SandboxPaused}, {"base", store.SandboxRunning},
	} {
		row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: tid, Template: tc.template, State: tc.state,
			VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		at := base.Add(time.Duration(i) * time.Second)
		if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET created_at = $2 WHERE id = $1", row.ID, at); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, service.ID(row.ID))
	}
	newest := slices.Clone(ids)
	slices.Reverse(newest)
	list := func(v url.Values) []string {
		t.Helper()
		var out []string
		for pages := 0; ; pages++ {
			if pages > 5 {
				t.Fatal("paging does not end")
			}
			var p struct {
				Sandboxes  []sandboxJSON `json:"sandboxes"`
				NextCursor string        `json:"next_cursor"`
			}
			if c := e.do(t, "GET", "/v1/sandboxes?"+v.Encode(), key, nil, &p); c != 200 {
				t.Fatalf("%v: %d", v, c)
			}
			for _, s := range p.Sandboxes {
				out = append(out, s.ID)
			}
			if p.NextCursor == "" {
				return out
			}
			v.Set("cursor", p.NextCursor)
		}
	}
	second := base.Add(time.Second).In(time.FixedZone("x", 2*3600)).Format(time.RFC3339Nano)
	for _, tc := range []struct {
		name string
		v    url.Values
		want []string
	}{
		{"newest first", url.Values{}, newest},
		{"asc by 1", url.Values{"order": {"asc"}, "limit": {"1"}}, ids},
		{"desc by 3", url.Values{"order": {"desc"}, "limit": {"3"}}, newest},
		{"started_after", url.Values{"started_after": {second}}, newest[:3]},
		{"started_after asc", url.Values{"started_after": {second}, "order": {"asc"}, "limit": {"2"}}, ids[1:]},
		{"template", url.Values{"template": {"base"}, "limit": {"1"}}, []string{ids[3], ids[2], ids[0]}},
		{"unknown template", url.Values{"template": {"nope"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := list(tc.v); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	for _, v := range []url.Values{{"order": {"random"}}, {"started_after": {"2024-01-01"}}} {
		if c := e.do(t, "GET", "/v1/sandboxes?"+v.Encode(), key, nil, nil); c != 400 {
			t.Fatalf("%v: %d, want 400", v, c)
		}
	}
}
