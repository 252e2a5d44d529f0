package e2bapi

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// TestListOrderStartedAfterTemplate: GET /v2/sandboxes's order,
// startedAfter and template, across running and paused sandboxes, and
// paging through sandboxes started at the same time.
func TestListOrderStartedAfterTemplate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	newest := []string{f.running, f.running2, f.paused, f.pausing}
	oldest := slices.Clone(newest)
	slices.Reverse(oldest)

	// The listed start times, as the SDK reads them.
	started := map[string]time.Time{}
	var listed []listedSandboxJSON
	f.do(t, "GET", "/v2/sandboxes", f.keyA, nil).expect(t, 200, &listed)
	for _, s := range listed {
		started[s.SandboxID] = s.StartedAt
	}
	at := started[f.paused]
	if at.IsZero() {
		t.Fatalf("no start time listed for %s: %v", f.paused, listed)
	}
	ist := time.FixedZone("IST", 5*3600+1800)
	slug, err := f.sbx.TeamSlug(ctx, f.teamA)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		query url.Values
		want  []string
	}{
		{"default newest first", url.Values{}, newest},
		{"desc", url.Values{"order": {"desc"}}, newest},
		{"asc", url.Values{"order": {"asc"}}, oldest},
		{"asc running and paused", url.Values{"order": {"asc"}, "state": {"running,paused"}}, oldest},
		{"startedAfter = startedAt includes it", url.Values{"startedAfter": {at.Format(time.RFC3339Nano)}}, newest[:3]},
		{"startedAfter with an offset", url.Values{"startedAfter": {at.In(ist).Format(time.RFC3339Nano)}}, newest[:3]},
		{"startedAfter in ms (JS toISOString)", url.Values{"startedAfter": {at.Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z07:00")}}, newest[:3]},
		{"startedAfter µs with an offset (Python)", url.Values{"startedAfter": {at.In(ist).Format("2006-01-02T15:04:05.000000-07:00")}}, newest[:3]},
		{"startedAfter + 1 µs excludes it", url.Values{"startedAfter": {at.Add(time.Microsecond).Format(time.RFC3339Nano)}}, newest[:2]},
		{"startedAfter + 1 s excludes all", url.Values{"startedAfter": {started[f.running].Add(time.Second).Format(time.RFC3339)}}, nil},
		{"startedAfter asc", url.Values{"startedAfter": {at.Format(time.RFC3339Nano)}, "order": {"asc"}}, []string{f.paused, f.running2, f.running}},
		{"template", url.Values{"template": {"minimal"}}, newest},
		{"template with the tag", url.Values{"template": {"minimal:default"}}, newest},
		{"template by full name", url.Values{"template": {slug + "/minimal:default"}}, newest},
		{"template of another namespace", url.Values{"template": {"someone-else/minimal"}}, nil},
		{"template with another tag", url.Values{"template": {"minimal:v2"}}, nil},
		{"unknown template", url.Values{"template": {"no-such-template"}}, nil},
		{"template and state", url.Values{"template": {"minimal"}, "state": {"paused"}, "order": {"asc"}}, []string{f.pausing, f.paused}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, "GET", "/v2/sandboxes?"+tc.query.Encode(), f.keyA, nil)
			got := ids(t, r)
			if !slices.Equal(got, tc.want) && (len(got) != 0 || len(tc.want) != 0) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			if r.header.Get("X-Next-Token") != "" {
				t.Fatal("X-Next-Token on the only page")
			}
		})
	}

	// Five sandboxes started at the same time: pages of 2 in either
	// order see each once, in one order (by ID), the last page without a
	// token.
	var tie []string
	same := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	for i := range 5 {
		state := store.SandboxRunning
		if i%2 == 1 {
			state = store.SandboxPaused
		}
		row, err := f.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: teamUUID(f.teamA.TeamID), Template: "tie",
			State: state, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.st.Pool().Exec(ctx, "UPDATE sandboxes SET created_at = $2 WHERE id = $1", row.ID, same); err != nil {
			t.Fatal(err)
		}
		tie = append(tie, service.ID(row.ID))
	}
	slices.Sort(tie) // the wire ID's order is the UUID's
	page := func(order, token string) ([]string, string) {
		t.Helper()
		q := url.Values{"template": {"tie"}, "limit": {"2"}, "order": {order}}
		if token != "" {
			q.Set("nextToken", token)
		}
		r := f.do(t, "GET", "/v2/sandboxes?"+q.Encode(), f.keyA, nil)
		return ids(t, r), r.header.Get("X-Next-Token")
	}
	for _, order := range []string{"asc", "desc"} {
		t.Run("tie "+order, func(t *testing.T) {
			var all []string
			token := ""
			for pages := 1; ; pages++ {
				if pages > 3 {
					t.Fatal("more than 3 pages of 2 for 5 sandboxes")
				}
				got, next := page(order, token)
				all = append(all, got...)
				if token = next; token == "" {
					break
				}
			}
			want := slices.Clone(tie)
			if order == "desc" {
				slices.Reverse(want)
			}
			if !slices.Equal(all, want) {
				t.Fatalf("got %v, want %v", all, want)
			}
		})
	}
	// A token continues its own order only.
	_, descToken := page("desc", "")
	if descToken == "" {
		t.Fatal("no token on a first page of 2 of 5")
	}
	q := url.Values{"template": {"tie"}, "limit": {"2"}, "order": {"asc"}, "nextToken": {descToken}}
	f.do(t, "GET", "/v2/sandboxes?"+q.Encode(), f.keyA, nil).expect(t, 400, nil)
	// Another team sees none of them.
	if got := ids(t, f.do(t, "GET", "/v2/sandboxes?template=tie", f.keyB, nil)); len(got) != 0 {
		t.Fatalf("team B lists team A's: %v", got)
	}
}
