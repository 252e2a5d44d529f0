package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/pgembed"
	"github.com/capsulehq/capsule/internal/store"
)

// hostsBenchOptions configures `capsule bench hosts`.
type hostsBenchOptions struct {
	dataDir  string // the embedded PostgreSQL lives in a temporary directory below it
	pgBinDir string
	fleet    bench.Fleet
	n        int
	log      *slog.Logger
	// cluster runs the 3-host cluster half (root, VMs); clusterN creates
	// are timed on one node and on the cluster.
	cluster  bool
	clusterN int
	// replicateN copies of the 1 GiB template are timed.
	replicateN int
	envdBin    string
}

func parseBenchHostsFlags(args []string) (hostsBenchOptions, error) {
	fs := flag.NewFlagSet("bench hosts", flag.ContinueOnError)
	o := hostsBenchOptions{fleet: bench.DefaultFleet}
	fs.StringVar(&o.dataDir, "data-dir", image.DefaultDataDir, "directory under which the benchmark's PostgreSQL lives (removed after)")
	fs.StringVar(&o.pgBinDir, "pg-bin-dir", "", "directory of initdb and postgres (default: the newest installed)")
	fs.IntVar(&o.fleet.Hosts, "hosts", o.fleet.Hosts, "hosts in the database")
	fs.IntVar(&o.fleet.Live, "sandboxes", o.fleet.Live, "live sandboxes (running, paused, …) spread over the hosts")
	fs.IntVar(&o.fleet.Stopped, "stopped", o.fleet.Stopped, "stopped sandboxes (history) on the hosts")
	fs.IntVar(&o.n, "n", 1000, "scheduling decisions measured")
	fs.BoolVar(&o.cluster, "cluster", true, "also measure a 3-host cluster of real agents in network namespaces (root): create p50 vs one node, agent kill → host unreachable")
	fs.IntVar(&o.clusterN, "cluster-n", 6, "creates timed on one node and on the cluster")
	fs.IntVar(&o.replicateN, "replicate-n", 4, "copies of the 1 GiB template between two hosts timed (and as many cp)")
	fs.StringVar(&o.envdBin, "envd", siblingBinary("envd"), "envd binary for the guest images (the cluster)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.fleet.Hosts < 1 || o.fleet.Live < 0 || o.fleet.Stopped < 0 || o.n < 1 || o.clusterN < 1 || o.replicateN < 1 {
		return o, errors.New("bench hosts: -hosts and -n must be positive, -sandboxes and -stopped not negative")
	}
	return o, nil
}

// benchHosts measures the scheduling decision with a fleet in a fresh
// embedded PostgreSQL (bench.Hosts) and, with -cluster, the 3-host
// cluster's figures (benchCluster: create p50 vs one node, agent kill →
// host unreachable, the copy of a 1 GiB template between two hosts vs cp).
func benchHosts(ctx context.Context, o hostsBenchOptions) (map[string]any, error) {
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(o.dataDir, "bench-hosts-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	// PostgreSQL runs as its own user: it must reach its directory.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	pg, err := pgembed.Start(ctx, pgembed.Config{DataDir: work, BinDir: o.pgBinDir, Logger: o.log})
	if err != nil {
		return nil, fmt.Errorf("embedded PostgreSQL: %w", err)
	}
	defer pg.Close()
	st, err := store.Open(ctx, pg.DSN())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetLogger(o.log)
	if err := st.Migrate(ctx); err != nil {
		return nil, err
	}
	out, err := bench.Hosts(ctx, st, bench.HostsOptions{Fleet: o.fleet, N: o.n})
	if err != nil || !o.cluster {
		return out, err
	}
	c, err := benchCluster(ctx, clusterBenchOptions{benchStackOptions: benchStackOptions{envdBin: o.envdBin, dataDir: o.dataDir,
		pgBinDir: o.pgBinDir, log: o.log}, n: o.clusterN, replicateN: o.replicateN})
	if err != nil {
		return nil, fmt.Errorf("bench hosts: %w", err)
	}
	for k, v := range c {
		out[k] = v
	}
	return out, nil
}
