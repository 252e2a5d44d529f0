package api

import (
	"fmt"
	"testing"
)

type auditPage struct {
	AuditLogs  []auditLogJSON `json:"audit_logs"`
	NextCursor string         `json:"next_cursor"`
}

func TestAuditLogs(t *testing.T) {
	e := newAPI(t, "", "")
	jwt, key, _ := e.account(t, "audit@example.com")
	// Six more keys, two revoked: 1 + 6 creates and 2 revocations.
	var ids []string
	for i := range 6 {
		var k apiKeyJSON
		if c := e.do(t, "POST", "/v1/api-keys", jwt, map[string]string{"name": fmt.Sprint("k", i)}, &k); c != 201 {
			t.Fatalf("create key: %d", c)
		}
		ids = append(ids, k.ID)
	}
	for _, id := range ids[:2] {
		if c := e.do(t, "DELETE", "/v1/api-keys/"+id, jwt, nil, nil); c != 204 {
			t.Fatalf("revoke: %d", c)
		}
	}
	// The owner pages through all nine, newest first, 4 at a time.
	var all []auditLogJSON
	cursor := ""
	for range 5 {
		var p auditPage
		if c := e.do(t, "GET", "/v1/audit-logs?limit=4&cursor="+cursor, jwt, nil, &p); c != 200 {
			t.Fatalf("list: %d", c)
		}
		all = append(all, p.AuditLogs...)
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	if len(all) != 9 {
		t.Fatalf("%d events, want 9: %+v", len(all), all)
	}
	if all[0].Action != "api_key.revoke" || all[0].ResourceID != ids[1] || all[0].ActorType != "user" || all[0].ActorName != "audit@example.com" {
		t.Fatalf("newest event: %+v", all[0])
	}
	for i := 1; i < len(all); i++ {
		if all[i].CreatedAt.After(all[i-1].CreatedAt) {
			t.Fatalf("not newest first at %d", i)
		}
	}
	// Filters: multi-value, comma or repeated.
	var p auditPage
	if c := e.do(t, "GET", "/v1/audit-logs?action=api_key.revoke", jwt, nil, &p); c != 200 || len(p.AuditLogs) != 2 {
		t.Fatalf("action filter: %d, %d events", c, len(p.AuditLogs))
	}
	if c := e.do(t, "GET", "/v1/audit-logs?action=api_key.revoke,api_key.create&resource_type=api_key", jwt, nil, &p); c != 200 || len(p.AuditLogs) != 9 {
		t.Fatalf("multi filter: %d, %d events", c, len(p.AuditLogs))
	}
	// The log is for people (sessions), as in the seeds: an API key is
	// refused.
	if c := e.do(t, "GET", "/v1/audit-logs", key, nil, &p); c != 403 {
		t.Fatalf("API key: %d, want 403", c)
	}
	// Another team sees nothing of this team's log.
	jwt2, _, _ := e.account(t, "other@example.com")
	if c := e.do(t, "GET", "/v1/audit-logs?action=api_key.revoke", jwt2, nil, &p); c != 200 || len(p.AuditLogs) != 0 {
		t.Fatalf("other team: %d, %d events", c, len(p.AuditLogs))
	}
	for _, tc := range []struct{ q string }{{"limit=201"}, {"limit=0"}, {"cursor=@@"}, {"action=DROP%20TABLE"}} {
		if c := e.do(t, "GET", "/v1/audit-logs?"+tc.q, jwt, nil, nil); c != 400 {
			t.Fatalf("%s: %d, want 400", tc.q, c)
		}
	}
	if c := e.do(t, "GET", "/v1/audit-logs", "", nil, nil); c != 401 {
		t.Fatalf("no auth: %d", c)
	}
}
