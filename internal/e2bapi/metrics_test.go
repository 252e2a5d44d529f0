package e2bapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestMetricsWindowOfAPausedSandbox: a paused sandbox's metrics come from
// the history stored at its pause, within getMetrics' start/end (unix
// seconds), clipped to the sandbox's life: a window before it existed has
// no sample; a malformed or reversed window is 400.
func TestMetricsWindowOfAPausedSandbox(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	id := uuidOf(t, f.paused)
	// Created 10 minutes ago, paused since.
	if _, err := f.st.Pool().Exec(ctx, `UPDATE sandboxes SET created_at = now() - interval '10 minutes' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	row, err := f.sbx.Get(ctx, f.teamA, id)
	if err != nil {
		t.Fatal(err)
	}
	created := row.CreatedAt
	// Raw samples every 0.5 s for 60 s after creation, the guest's figures
	// on every other one (envd did not answer the others), as a pause
	// stores them.
	if _, err := f.st.Pool().Exec(ctx, `
		INSERT INTO sandbox_metrics (sandbox_id, tier, ts, cpu_pct, mem_rss_bytes, mem_pss_bytes, disk_used_bytes,
		  guest_cpu_count, guest_cpu_pct, guest_mem_used_bytes, guest_mem_total_bytes, guest_mem_cache_bytes,
		  guest_disk_used_bytes, guest_disk_total_bytes)
		SELECT $1, '10m', $2::timestamptz + make_interval(secs => g * 0.5), 150, 300 << 20, 200 << 20, 10 << 20,
		  CASE WHEN g % 2 = 0 THEN 2 END, CASE WHEN g % 2 = 0 THEN 40 END, CASE WHEN g % 2 = 0 THEN 64 << 20 END,
		  CASE WHEN g % 2 = 0 THEN 256 << 20 END, CASE WHEN g % 2 = 0 THEN 8 << 20 END,
		  CASE WHEN g % 2 = 0 THEN 100 << 20 END, CASE WHEN g % 2 = 0 THEN 1 << 30 END
		FROM generate_series(1, 120) AS g`, id, created); err != nil {
		t.Fatal(err)
	}
	metrics := func(t *testing.T, query string, want int) []metricJSON {
		t.Helper()
		r := f.do(t, "GET", "/sandboxes/"+f.paused+"/metrics"+query, f.keyA, nil)
		var ms []metricJSON
		r.expect(t, want, nil)
		if want == 200 {
			if err := json.Unmarshal(r.body, &ms); err != nil {
				t.Fatal(err)
			}
		}
		return ms
	}
	c := created.Unix()
	for _, tc := range []struct {
		name  string
		query string
		want  int
		n     func(n int) bool
	}{
		{"a window before the sandbox existed has no sample", fmt.Sprintf("?start=%d&end=%d", c-3600, c-10), 200, func(n int) bool { return n == 0 }},
		{"a window after its history has no sample", fmt.Sprintf("?start=%d&end=%d", c+3600, c+3700), 200, func(n int) bool { return n == 0 }},
		{"no window: its whole life", "", 200, func(n int) bool { return n == 60 }},
		{"a 20 s window", fmt.Sprintf("?start=%d&end=%d", c+10, c+29), 200, func(n int) bool { return n >= 18 && n <= 21 }},
		{"a window starting before it existed is clipped", fmt.Sprintf("?start=%d", c-7200), 200, func(n int) bool { return n == 60 }},
		{"malformed start", "?start=yesterday", 400, nil},
		{"end before start", fmt.Sprintf("?start=%d&end=%d", c, c-1), 400, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := metrics(t, tc.query, tc.want)
			if tc.n != nil && !tc.n(len(ms)) {
				t.Fatalf("%d samples", len(ms))
			}
			for _, m := range ms {
				if m.Timestamp.Before(created.Truncate(time.Second)) {
					t.Fatalf("a sample at %v, before the sandbox was created (%v)", m.Timestamp, created)
				}
			}
		})
	}
	t.Run("the guest's figures; samples without them are left out", func(t *testing.T) {
		for _, m := range metrics(t, "", 200) {
			if m.CPUCount != 2 || m.CPUUsedPct != 40 || m.MemUsed != 64<<20 || m.MemTotal != 256<<20 || m.MemCache != 8<<20 ||
				m.DiskUsed != 100<<20 || m.DiskTotal != 1<<30 {
				t.Fatalf("sample %+v", m)
			}
		}
	})
	t.Run("another team's sandbox is not found", func(t *testing.T) {
		r := f.do(t, "GET", "/sandboxes/"+f.paused+"/metrics", f.keyB, nil)
		if r.expect(t, 404, nil); strings.Contains(string(r.body), "cpuUsedPct") {
			t.Fatalf("%s", r.body)
		}
	})
}
