package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

// The 3-host cluster of `capsule bench hosts`: the control plane with its
// embedded agent (as `capsule serve` builds it: benchStack), and three
// `capsule agent` processes of this binary, each in a network namespace
// of its own (nsAgent), registered through the API. Addresses: the
// agents' links in 198.18.240.0/24, their slot pools in 198.18.232–237
// (internal/hosttest lists them as reserved).
var (
	benchClusterLinks = netip.MustParsePrefix("198.18.240.0/24")
	benchClusterNets  = [3]nsSlotNet{
		{"cbh1", netip.MustParsePrefix("198.18.232.0/24"), netip.MustParsePrefix("198.18.233.0/24")},
		{"cbh2", netip.MustParsePrefix("198.18.234.0/24"), netip.MustParsePrefix("198.18.235.0/24")},
		{"cbh3", netip.MustParsePrefix("198.18.236.0/24"), netip.MustParsePrefix("198.18.237.0/24")},
	}
)

// clusterBenchOptions configures the cluster half of `capsule bench hosts`.
type clusterBenchOptions struct {
	benchStackOptions
	// n creates are timed on one node, then on the cluster.
	n int
}

// benchCluster measures, with real agents and VMs (root): the p50 of a
// sandbox create through the API on one node (the embedded agent alone)
// and on the 3-host cluster (the embedded host draining: the three
// agents take them, least loaded first), their ratio, and the seconds
// from an agent's SIGKILL to its host marked unreachable with the
// default heartbeat settings (hostapi.UnreachableAfter).
func benchCluster(ctx context.Context, o clusterBenchOptions) (map[string]any, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("bench hosts: the cluster needs root (network namespaces, VMs); -cluster=false measures the scheduler alone")
	}
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	o.apiListen = "0.0.0.0:0" // the agents reach it from their namespaces
	b, err := startBenchStack(ctx, o.benchStackOptions, "bench-cluster-")
	if err != nil {
		return nil, err
	}
	defer b.close()
	out := map[string]any{}

	oneNode, err := b.timeCreates(ctx, o.n)
	if err != nil {
		return nil, fmt.Errorf("one node: %w", err)
	}

	// The cluster: three hosts, registered as an administrator would.
	if _, err := b.st.Pool().Exec(ctx, `UPDATE users SET is_admin = true WHERE id = $1`, b.account.User.ID); err != nil {
		return nil, err
	}
	admin := b.account.Principal()
	root, err := os.MkdirTemp(o.dataDir, "bench-cluster-agents-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	port := b.url[strings.LastIndex(b.url, ":")+1:]
	var agents []*nsAgent
	defer func() {
		for _, a := range agents {
			a.stop()
			a.remove()
		}
	}()
	var hostIDs []string
	for i, net := range benchClusterNets {
		a, err := newNSAgent(root, i+1, benchClusterLinks, "cbhns", "cbhn", net)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
		h, err := b.hosts.Create(ctx, admin, service.CreateHost{Name: fmt.Sprintf("bench-node-%d", i+1), Type: service.HostRegular, Address: a.address()})
		if err != nil {
			return nil, err
		}
		hostIDs = append(hostIDs, wireid.Format(wireid.Host, h.ID))
		if err := a.start(bin, "http://"+a.hostIP.String()+":"+port, h.RegistrationToken, o.dataDir, "--envd", o.envdBin,
			"--base=false", "--max-vcpus", "8", "--max-memory-mb", "4096", "--net-max-slots", "16"); err != nil {
			return nil, err
		}
	}
	status := func(name string) string {
		h, err := b.st.Queries().GetHostByName(ctx, name)
		if err != nil {
			return ""
		}
		return h.Status
	}
	for i := range agents {
		if err := waitFor(ctx, 5*time.Minute, func() bool { return status(fmt.Sprintf("bench-node-%d", i+1)) == store.HostOnline }); err != nil {
			return nil, fmt.Errorf("agent %d did not come online: %w\n%s", i+1, err, agents[i].logText())
		}
	}
	local, err := b.st.Queries().GetHostByName(ctx, service.LocalHost)
	if err != nil {
		return nil, err
	}
	draining := store.HostDraining
	if _, err := b.hosts.Update(ctx, admin, wireid.FromUUID[wireid.KindHost](local.ID.Bytes, local.ID.Valid), service.UpdateHost{Status: &draining}); err != nil {
		return nil, err
	}
	cluster, err := b.timeCreates(ctx, o.n)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	one, clu := bench.Summarize(oneNode), bench.Summarize(cluster)
	out["create_one_node"], out["create_cluster"] = one, clu
	out["create_cluster_vs_one_node"] = bench.Round3(clu.P50 / one.P50)
	out["cluster_hosts"] = len(hostIDs)

	// An agent's SIGKILL → its host unreachable (the default window).
	agents[0].kill()
	killed := time.Now()
	if err := waitFor(ctx, 5*time.Minute, func() bool { return status("bench-node-1") == store.HostUnreachable }); err != nil {
		return nil, fmt.Errorf("the killed agent's host: %w", err)
	}
	out["agent_kill_to_unreachable_s"] = bench.Round3(time.Since(killed).Seconds())
	return out, nil
}

// waitFor polls cond every 100 ms until it holds, d passes or ctx ends.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// timeCreates times n creates of "minimal" (256 MiB) through the API,
// keeping the sandboxes until all are made (they load their hosts, as in
// a busy cluster), then destroys them.
func (b *benchStack) timeCreates(ctx context.Context, n int) ([]time.Duration, error) {
	var ids []string
	defer func() {
		for _, id := range ids {
			_, _ = b.call(context.WithoutCancel(ctx), "DELETE", "/v1/sandboxes/"+id, nil, nil)
		}
	}()
	var d []time.Duration
	for range n {
		var sb struct {
			ID    string `json:"id"`
			State string `json:"state"`
		}
		start := time.Now()
		code, err := b.call(ctx, "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "memory_mb": 256}, &sb)
		if err != nil {
			return nil, err
		}
		if code != http.StatusCreated || sb.State != "running" {
			return nil, fmt.Errorf("create: %d %s", code, sb.State)
		}
		d = append(d, time.Since(start))
		ids = append(ids, sb.ID)
	}
	return d, nil
}

// call sends a JSON request with the team's API key and decodes a 2xx
// answer into out (when not nil).
func (b *benchStack) call(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		raw, _ := json.Marshal(in)
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.url+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-API-Key", b.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d: %.300s", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, nil
}
