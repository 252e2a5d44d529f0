package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/jackc/pgx/v5/pgtype"
)

// planNode is a node of EXPLAIN (FORMAT JSON).
type planNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	HeapFetches  *int64     `json:"Heap Fetches"`
	ActualLoops  float64    `json:"Actual Loops"`
	ActualRows   float64    `json:"Actual Rows"`
	Plans        []planNode `json:"Plans"`
}

func (n planNode) walk(fn func(planNode)) {
	fn(n)
	for _, c := range n.Plans {
		c.walk(fn)
	}
}

// TestCandidatesQueryPlanAtScale seeds the scale (1,000 hosts,
// 100,000 sandboxes of which 20,000 live) and checks that the candidates
// query reads sandboxes and host_templates through their indexes only —
// sandboxes by an index-only scan of sandboxes_host_reservation_idx, never
// a sequential scan — and that a decision over its rows succeeds.
func TestCandidatesQueryPlanAtScale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := SeedFleet(ctx, st, DefaultFleet); err != nil {
		t.Fatal(err)
	}
	var tpl pgtype.UUID
	if err := st.Pool().QueryRow(ctx, `SELECT id FROM templates WHERE name = 'bench-tpl-7'`).Scan(&tpl); err != nil {
		t.Fatal(err)
	}
	var counts [3]int
	if err := st.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM sandboxes),
	    (SELECT count(*) FROM sandboxes WHERE state <> 'stopped')`).Scan(&counts[0], &counts[1], &counts[2]); err != nil {
		t.Fatal(err)
	}
	if counts != [3]int{1000, 100000, 20000} {
		t.Fatalf("seeded hosts, sandboxes, live = %v; want [1000 100000 20000]", counts)
	}

	// The query text as sqlc generated it, with its two parameters.
	var plan []struct {
		Plan          planNode `json:"Plan"`
		ExecutionTime float64  `json:"Execution Time"`
	}
	var raw []byte
	if err := st.Pool().QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+candidatesSQL(t), tpl, store.PlatformTeamID).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &plan); err != nil || len(plan) != 1 {
		t.Fatalf("EXPLAIN output %.300s: %v", raw, err)
	}
	var summary []string
	viaIndex := false
	plan[0].Plan.walk(func(n planNode) {
		if n.RelationName != "" || n.IndexName != "" {
			summary = append(summary, fmt.Sprintf("%s on %s (%s) loops=%.0f rows=%.0f", n.NodeType, n.RelationName, n.IndexName, n.ActualLoops, n.ActualRows))
		}
		switch n.RelationName {
		case "sandboxes", "host_templates":
			if n.NodeType == "Seq Scan" {
				t.Errorf("sequential scan of %s", n.RelationName)
			}
		}
		// The covering index serves the sums: scanned alone (index-only,
		// once the visibility map is set) or through a bitmap of it (the
		// planner's choice when it is not all-visible yet).
		if n.IndexName == "sandboxes_host_reservation_idx" && (n.NodeType == "Index Only Scan" || n.NodeType == "Bitmap Index Scan") {
			viaIndex = true
			if n.HeapFetches != nil && *n.HeapFetches > 0 {
				t.Logf("index-only scan fetched %d heap tuples (visibility map not all-visible)", *n.HeapFetches)
			}
		}
	})
	t.Logf("plan (%.2f ms):\n  %s", plan[0].ExecutionTime, strings.Join(summary, "\n  "))
	if !viaIndex {
		t.Errorf("sandboxes not read through sandboxes_host_reservation_idx")
	}

	req := scheduler.Request{Team: [16]byte{15: 1}, Resources: scheduler.Resources{VCPUs: 2, MemoryMB: 2048, DiskMB: 5120},
		Template: tpl.Bytes, HasTemplate: true}
	choice, _, err := service.Decide(ctx, st.Queries(), scheduler.New(scheduler.Config{}), req, time.Now(), nil)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if !choice.Affinity || choice.Host.Status != scheduler.StatusOnline {
		t.Fatalf("Decide chose %s (%s, affinity %v); want an online host holding the template", choice.Host.Name, choice.Host.Status, choice.Affinity)
	}
}

// candidatesSQL is the candidates query's text as it runs: sqlc's constant
// is unexported, so it is read from the generated file.
func candidatesSQL(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile("../store/db/scheduler.sql.go")
	if err != nil {
		t.Fatal(err)
	}
	const start = "const listSchedulingCandidates = `"
	_, rest, ok := strings.Cut(string(src), start)
	q, _, ok2 := strings.Cut(rest, "`")
	if !ok || !ok2 || !strings.Contains(q, "$2") {
		t.Fatalf("no query %s… in the generated file", start)
	}
	return q
}

// TestHostsBench runs the hosts benchmark small over a test database: its
// JSON has the scheduling decision's timing with every decision counted,
// the fleet's size, and no figure it does not measure.
func TestHostsBench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fleet := Fleet{Hosts: 40, Live: 400, Stopped: 100, Teams: 5, Templates: 10}
	out, err := Hosts(ctx, st, HostsOptions{Fleet: fleet, N: 30})
	if err != nil {
		t.Fatal(err)
	}
	d, ok := out["scheduling_decision"].(Timing)
	if !ok || d.N != 30 || d.P50 <= 0 || d.P99 < d.P50 {
		t.Fatalf("scheduling_decision = %+v; want 30 samples with 0 < p50 <= p99", out["scheduling_decision"])
	}
	if out["hosts"] != 40 || out["sandboxes"] != 500 {
		t.Fatalf("fleet in the JSON: hosts %v, sandboxes %v; want 40, 500", out["hosts"], out["sandboxes"])
	}
	// Every host holds one template in ten, and one host in ten of the
	// online ones at least: affinity must win some decisions.
	if r, _ := out["affinity_ratio"].(float64); r <= 0 || r > 1 {
		t.Fatalf("affinity_ratio = %v; want in (0, 1]", out["affinity_ratio"])
	}
	for k := range out {
		switch k {
		case "scheduling_decision", "hosts", "sandboxes", "live_sandboxes", "affinity_ratio":
		default:
			t.Errorf("unexpected figure %q (not measured by this bench)", k)
		}
	}
}
