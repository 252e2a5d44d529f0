package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// apiBenchOptions configures `capsule bench api`.
type apiBenchOptions struct {
	benchStackOptions
	rows    int // sandbox rows of the team in the database
	listN   int
	createN int
}

func parseBenchAPIFlags(args []string) (apiBenchOptions, error) {
	fs := flag.NewFlagSet("bench api", flag.ContinueOnError)
	o := apiBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.IntVar(&o.rows, "rows", 1000, "sandbox rows of the team in the database")
	fs.IntVar(&o.listN, "list-n", 500, "GET /v1/sandboxes samples")
	fs.IntVar(&o.createN, "create-n", 20, "POST /v1/sandboxes samples (each sandbox destroyed after)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.rows < 1 || o.listN < 1 || o.createN < 1 {
		return o, errors.New("bench api: -rows, -list-n and -create-n must be positive")
	}
	return o, nil
}

// apiBench is the control plane running in this process: an embedded
// PostgreSQL in a temporary directory, the services, the API over real
// HTTP on a loopback port, and a real host agent (its own network slot
// pool), as `capsule serve` assembles them.
type apiBench struct {
	o      apiBenchOptions
	st     *store.Store
	agents *agentclient.Pool
	url    string
	key    string
	team   db.Team
	client *http.Client
	log    *slog.Logger
}

// benchAPI measures the control plane: GET /v1/sandboxes (default page)
// with o.rows sandboxes of the team in the database, and the overhead of
// POST /v1/sandboxes (its latency minus the host agent's time, which the
// API reports in Server-Timing) creating from a snapshot template of
// "minimal".
func benchAPI(ctx context.Context, o apiBenchOptions) (out map[string]any, err error) {
	stack, b, err := startAPIBench(ctx, "api", o.benchStackOptions)
	if err != nil {
		return nil, err
	}
	defer stack.close()
	b.o = o
	acc := stack.account

	out = map[string]any{"rows": o.rows}
	if err := b.insertRows(ctx, acc.User); err != nil {
		return out, fmt.Errorf("insert sandboxes: %w", err)
	}
	if out[fmt.Sprintf("list_sandboxes_%d", o.rows)], err = b.list(ctx); err != nil {
		return out, fmt.Errorf("list: %w", err)
	}
	if err := b.creates(ctx, out); err != nil {
		return out, fmt.Errorf("create: %w", err)
	}
	return out, nil
}

// insertRows inserts the team's sandboxes directly through the store, as
// paused and stopped ones (they hold no quota, so creates still pass), with
// metadata like real ones.
func (b *apiBench) insertRows(ctx context.Context, user db.User) error {
	return b.st.Tx(ctx, func(q *db.Queries) error {
		host, err := q.GetHostByName(ctx, service.LocalHost) // the embedded agent's
		if err != nil {
			return err
		}
		for i := range b.o.rows {
			state := store.SandboxStopped
			if i%4 == 0 {
				state = store.SandboxPaused
			}
			meta, _ := json.Marshal(map[string]string{"app": "bench", "n": strconv.Itoa(i)})
			if _, err := q.InsertSandbox(ctx, db.InsertSandboxParams{
				TeamID: b.team.ID, HostID: host.ID, Template: "base", State: state, VCPUs: 1, MemoryMB: 512,
				TimeoutSec: 300, AllowInternetAccess: true, Metadata: meta, CreatedBy: user.ID,
			}); err != nil {
				return err
			}
		}
		return nil
	})
}

// do sends an authenticated request and reads the whole answer.
func (b *apiBench) do(ctx context.Context, method, path string, body []byte) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.url+path, rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("X-API-Key", b.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, data, err
}

// list times GET /v1/sandboxes (the default page of 50 of o.rows).
func (b *apiBench) list(ctx context.Context) (bench.Timing, error) {
	var d []time.Duration
	for i := range b.o.listN + 20 {
		t0 := time.Now()
		resp, data, err := b.do(ctx, "GET", "/v1/sandboxes", nil)
		el := time.Since(t0)
		if err != nil {
			return bench.Timing{}, err
		}
		var page struct {
			Sandboxes  []json.RawMessage `json:"sandboxes"`
			NextCursor string            `json:"next_cursor"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(data, &page) != nil || len(page.Sandboxes) != min(50, b.o.rows) {
			return bench.Timing{}, fmt.Errorf("GET /v1/sandboxes: %d, %d sandboxes: %.200s", resp.StatusCode, len(page.Sandboxes), data)
		}
		if i >= 20 { // the first ones warm up connections and caches
			d = append(d, el)
		}
	}
	return bench.Summarize(d), nil
}

type createdSandbox struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// create sends POST /v1/sandboxes and returns the sandbox, the request's
// latency and the agent's share of it (Server-Timing).
func (b *apiBench) create(ctx context.Context, template string) (createdSandbox, time.Duration, time.Duration, error) {
	body, _ := json.Marshal(map[string]any{"template": template, "metadata": map[string]string{"app": "bench-create"}})
	t0 := time.Now()
	resp, data, err := b.do(ctx, "POST", "/v1/sandboxes", body)
	total := time.Since(t0)
	var sb createdSandbox
	if err != nil {
		return sb, 0, 0, err
	}
	if resp.StatusCode != 201 || json.Unmarshal(data, &sb) != nil || sb.State != "running" {
		return sb, 0, 0, fmt.Errorf("POST /v1/sandboxes: %d: %.300s", resp.StatusCode, data)
	}
	agent, err := agentTiming(resp.Header.Get("Server-Timing"))
	if err != nil {
		return sb, 0, 0, err
	}
	if agent <= 0 || agent > total {
		return sb, 0, 0, fmt.Errorf("agent time %v of a %v request", agent, total)
	}
	return sb, total, agent, nil
}

// agentTiming reads the agent's duration from a Server-Timing value
// ("agent;dur=12.345").
func agentTiming(v string) (time.Duration, error) {
	for m := range strings.SplitSeq(v, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(m), ";")
		if name != "agent" {
			continue
		}
		for p := range strings.SplitSeq(params, ";") {
			if ms, ok := strings.CutPrefix(strings.TrimSpace(p), "dur="); ok {
				f, err := strconv.ParseFloat(ms, 64)
				if err != nil {
					return 0, fmt.Errorf("Server-Timing %q: %w", v, err)
				}
				return time.Duration(f * float64(time.Millisecond)), nil
			}
		}
	}
	return 0, fmt.Errorf("no agent;dur in Server-Timing %q", v)
}

// serverTimings reads every metric of a Server-Timing value that has a
// duration ("name;dur=12.345, …"), by name.
func serverTimings(v string) map[string]time.Duration {
	out := map[string]time.Duration{}
	for m := range strings.SplitSeq(v, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(m), ";")
		for p := range strings.SplitSeq(params, ";") {
			if ms, ok := strings.CutPrefix(strings.TrimSpace(p), "dur="); ok {
				if f, err := strconv.ParseFloat(ms, 64); err == nil && name != "" {
					out[name] = time.Duration(f * float64(time.Millisecond))
				}
			}
		}
	}
	return out
}

func (b *apiBench) destroy(ctx context.Context, id string) error {
	resp, data, err := b.do(ctx, "DELETE", "/v1/sandboxes/"+id, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != 204 {
		return fmt.Errorf("DELETE /v1/sandboxes/%s: %d: %.200s", id, resp.StatusCode, data)
	}
	return nil
}

// creates makes a snapshot template of "minimal" (through the API's
// /v1/snapshots), then times creating from it through the API, destroying
// each sandbox.
func (b *apiBench) creates(ctx context.Context, out map[string]any) error {
	const template = "bench-api-minimal"
	src, _, _, err := b.create(ctx, "minimal")
	if err != nil {
		return err
	}
	resp, data, snapErr := b.do(ctx, "POST", "/v1/snapshots", fmt.Appendf(nil, `{"sandbox_id":%q,"name":%q,"overwrite":true}`, src.ID, template))
	if snapErr == nil && resp.StatusCode != 201 && resp.StatusCode != 200 {
		snapErr = fmt.Errorf("POST /v1/snapshots: %d: %.200s", resp.StatusCode, data)
	}
	if err := b.destroy(ctx, src.ID); err != nil {
		return err
	}
	if snapErr != nil {
		return fmt.Errorf("snapshot template: %w", snapErr)
	}
	defer func() {
		resp, data, err := b.do(context.WithoutCancel(ctx), "DELETE", "/v1/snapshots/"+template, nil)
		if err == nil && resp.StatusCode != 204 {
			err = fmt.Errorf("%d: %.200s", resp.StatusCode, data)
		}
		if err != nil {
			b.log.Warn("delete the benchmark template", "err", err)
		}
	}()
	var totals, agents, overheads []time.Duration
	for range b.o.createN {
		sb, total, agent, err := b.create(ctx, template)
		if err != nil {
			return err
		}
		if err := b.destroy(ctx, sb.ID); err != nil {
			return err
		}
		totals, agents, overheads = append(totals, total), append(agents, agent), append(overheads, total-agent)
	}
	out["create_overhead"] = bench.Summarize(overheads)
	out["create_api"] = bench.Summarize(totals)
	out["create_agent"] = bench.Summarize(agents)
	return nil
}
