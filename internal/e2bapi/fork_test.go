package e2bapi

import (
	"context"
	"testing"
)

// TestForkRefusals: what the fork route refuses before any host is asked
// (the fixture's agent cannot be reached), and that a refusal changes
// nothing. Forks themselves are tested on VMs (internal/service) and
// through the SDK (tests/e2b-sdk/fullstack/fork.test.mjs).
func TestForkRefusals(t *testing.T) {
	f := newFixture(t)
	count := func(where string) int {
		t.Helper()
		var n int
		if err := f.st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM sandboxes"+where).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// A refusal adds no record; forks that reached the (unreachable) host
	// and failed there stay as records in error, running nowhere.
	const live = " WHERE state <> 'error'"
	before, liveBefore := count(""), count(live)
	for _, tc := range []struct {
		name, id, key string
		body          any
		want          int
	}{
		{"no key", f.running, "", nil, 401},
		{"another team's sandbox", f.otherTeam, f.keyA, map[string]any{}, 404},
		{"another team's key", f.running, f.keyB, map[string]any{}, 404},
		{"a killed sandbox", f.stopped, f.keyA, map[string]any{}, 404},
		{"a failed sandbox", f.failed, f.keyA, map[string]any{}, 404},
		{"a malformed ID", "not-an-id", f.keyA, map[string]any{}, 404},
		{"a paused sandbox", f.paused, f.keyA, map[string]any{"count": 1}, 409},
		{"count 0", f.running, f.keyA, map[string]any{"count": 0}, 400},
		{"count too large", f.running, f.keyA, map[string]any{"count": 17}, 400},
		{"count of the wrong type", f.running, f.keyA, map[string]any{"count": "2"}, 400},
		{"timeout 0", f.running, f.keyA, map[string]any{"timeout": 0}, 400},
		{"negative timeout", f.running, f.keyA, map[string]any{"timeout": -5}, 400},
		{"an unreachable host", f.running, f.keyA, map[string]any{"count": 2}, 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, "POST", "/sandboxes/"+tc.id+"/fork", tc.key, tc.body)
			var e errorBody
			r.expect(t, tc.want, &e)
			if e.Code != tc.want || e.Message == "" {
				t.Errorf("error body %s, want code %d and a message", r.body, tc.want)
			}
			if tc.want == 503 {
				if n := count(live); n != liveBefore {
					t.Errorf("%d live sandbox records after forks that failed on the host, %d before", n, liveBefore)
				}
				return
			}
			if n := count(""); n != before {
				t.Errorf("%d sandbox records after a refused fork, %d before", n, before)
			}
		})
	}
}
