package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

// The 3-host cluster of `capsule bench hosts`: the control plane with its
// embedded agent (as `capsule serve` builds it: benchStack), and three
// `capsule agent` processes of this binary, each in a network namespace
// of its own (nsAgent), registered through the API. Addresses: the
// agents' links in 198.18.240.0/24, their slot pools in 198.18.232–237,
// the embedded host's in 198.18.238–239 (internal/hosttest lists them as
// reserved).
var (
	benchClusterLinks = netip.MustParsePrefix("198.18.240.0/24")
	benchClusterLocal = nsSlotNet{"cbh0", netip.MustParsePrefix("198.18.238.0/24"), netip.MustParsePrefix("198.18.239.0/24")}
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
	// replicateN copies of the 1 GiB template are timed (and as many cp).
	replicateN int
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
	// The embedded host has a pool of its own (not capsule-bench's: the
	// other benches may run meanwhile).
	o.net = benchClusterLocal
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
	var hostUUIDs []pgtype.UUID
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
		hostUUIDs = append(hostUUIDs, h.ID)
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
	// One unmeasured create per host first: each agent warms its
	// template snapshots as it starts (three at once on this machine) and
	// a host's first create waits for that, while the one-node figure's
	// host was warm already.
	if _, err := b.timeCreates(ctx, len(agents)); err != nil {
		return nil, fmt.Errorf("cluster warm-up: %w", err)
	}
	cluster, err := b.timeCreates(ctx, o.n)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	one, clu := bench.Summarize(oneNode), bench.Summarize(cluster)
	out["create_one_node"], out["create_cluster"] = one, clu
	out["create_cluster_vs_one_node"] = bench.Round3(clu.P50 / one.P50)
	out["cluster_hosts"] = len(hostIDs)

	rep, err := b.benchReplicate(ctx, agents, hostUUIDs, o.replicateN)
	if err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	maps.Copy(out, rep)

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

// replicateFill is what the 1 GiB template's sandbox holds in memory: a
// GiB of a non-zero pattern in a tmpfs (its memory image then has ≈ 1 GiB
// of data; zero pages would be holes, which cost nothing to copy).
const replicateFill = `mkdir -p /run/fill && mount -t tmpfs -o size=1100m tmpfs /run/fill && yes capsule-replication-bench | head -c 1073741824 > /run/fill/data`

// benchReplicate times copies of a snapshot template of ≈ 1 GiB (a
// sandbox with a GiB of data in memory) from the agent that made it to
// the two others (alternately, replacing the previous copy:
// Sandboxes.ReplicateTemplate, the relay of a create that needs it), and
// as many `cp -r` of the template's directory on the same machine, and
// reports the replication's p50/p99, the bytes sent, and the ratio of the
// two p50s.
func (b *benchStack) benchReplicate(ctx context.Context, agents []*nsAgent, hosts []pgtype.UUID, n int) (map[string]any, error) {
	p := b.account.Principal()
	sb, err := b.sandboxes.Create(ctx, p, service.CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 1536})
	if err != nil {
		return nil, err
	}
	defer func() { _ = b.sandboxes.Destroy(context.WithoutCancel(ctx), p, sb.ID) }()
	res, err := b.sandboxes.Run(ctx, p, sb.ID, service.ExecCommand{Cmd: replicateFill, User: "root", TimeoutSec: 600}, nil, false)
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("filling the sandbox: exit %d: %s", res.ExitCode, res.Stderr)
	}
	snap, _, err := b.sandboxes.CreateSnapshot(ctx, p, service.CreateSnapshotRequest{SandboxID: sb.ID, Name: "bench-replicate-1gib"})
	if err != nil {
		return nil, err
	}
	defer func() { _ = b.sandboxes.DeleteSnapshot(context.WithoutCancel(ctx), p, snap.Name) }()
	var hostID pgtype.UUID
	sbUUID, _ := sb.ID.UUID()
	if err := b.st.Pool().QueryRow(ctx, `SELECT host_id FROM sandboxes WHERE id = $1`, pgtype.UUID{Bytes: sbUUID, Valid: true}).Scan(&hostID); err != nil {
		return nil, err
	}
	home := -1
	for i, h := range hosts {
		if h == hostID {
			home = i
		}
	}
	if home < 0 {
		return nil, errors.New("the template's sandbox is on none of the agents")
	}
	dirs, _ := filepath.Glob(filepath.Join(agents[home].data, "templates", snap.ID.String()+"-*"))
	if len(dirs) != 1 {
		return nil, fmt.Errorf("the template's directory on its host: %v", dirs)
	}
	var reps, cps []time.Duration
	var sent int64
	for i := range n {
		target := hosts[(home+1+i%(len(hosts)-1))%len(hosts)]
		start := time.Now()
		r, err := b.sandboxes.ReplicateTemplate(ctx, p, snap.Name, target)
		if err != nil {
			return nil, err
		}
		reps = append(reps, time.Since(start))
		sent = r.Bytes

		dst := dirs[0] + ".cp"
		start = time.Now()
		out, err := exec.CommandContext(ctx, "cp", "-r", dirs[0], dst).CombinedOutput()
		cps = append(cps, time.Since(start))
		_ = os.RemoveAll(dst)
		if err != nil {
			return nil, fmt.Errorf("cp: %v: %s", err, out)
		}
	}
	rep, cp := bench.Summarize(reps), bench.Summarize(cps)
	return map[string]any{
		"replicate_1gib":             rep,
		"replicate_1gib_bytes":       sent,
		"replicate_1gib_cp":          cp,
		"replicate_1gib_vs_cp_ratio": bench.Round3(rep.P50 / cp.P50),
	}, nil
}
