package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/controlplane"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/pgembed"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// benchStackOptions configures startBenchStack.
type benchStackOptions struct {
	envdBin  string
	dataDir  string // its image store is reused; the rest lives in a temporary directory below it
	pgBinDir string
	// base builds the base image too (the E2B SDK's default template).
	base bool
	// apiListen is the API's address (127.0.0.1:0 when empty).
	apiListen string
	// coldImages: no warm snapshots of the images, so that sandboxes of
	// an image boot cold and share no memory (bench fork's baseline).
	coldImages bool
	// preparedVMMs is the host's -prepared-vmms.
	preparedVMMs int
	// vcpus is the host agent's vCPU capacity (0: its default).
	vcpus int
	log   *slog.Logger
	// net is the embedded host's network slot pool (zero: capsule-bench,
	// interfaces cbv…, 198.18.96.0/24 and 198.18.97.0/24).
	net nsSlotNet
}

// benchStack is the platform running in this process for the benches, the
// control plane `capsule serve` runs (internal/controlplane: the services,
// reconciliation, the reaper, the API, the traffic proxy, the E2B facade)
// over an embedded PostgreSQL in a temporary directory and a real host
// agent with its own network slot pool, both listeners on loopback ports;
// plus a signed-up team with an API key.
type benchStack struct {
	st        *store.Store
	pool      *agentclient.Pool
	accounts  *service.Accounts
	sandboxes *service.Sandboxes
	hosts     *service.Hosts
	host      *hostStack
	// hostDataDir is the host's data directory (sandboxes/, templates/).
	hostDataDir string
	url         string
	// sandboxURL is the sandbox traffic listener (the proxy).
	sandboxURL string
	domain     string
	key        string
	team       db.Team
	account    service.Account
	client     *http.Client
	// log is the stack's logger (discarding unless the bench gave one).
	log     *slog.Logger
	closers []func()
}

// flags registers the options every bench of the stack takes.
func (o *benchStackOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&o.envdBin, "envd", siblingBinary("envd"), "envd binary for the guest images")
	fs.StringVar(&o.dataDir, "data-dir", image.DefaultDataDir, "data directory (its image store is reused)")
	fs.StringVar(&o.pgBinDir, "pg-bin-dir", "", "directory of initdb and postgres (default: the newest installed)")
	fs.IntVar(&o.preparedVMMs, "prepared-vmms", 2, "the host's -prepared-vmms: VMMs kept started per snapshot template and shape (0: none)")
}

func (b *benchStack) close() {
	for i := len(b.closers) - 1; i >= 0; i-- {
		b.closers[i]()
	}
}

// startAPIBench opens every bench that drives a stack through its API:
// root (the agent's VMs and network), the stack (its directory named after
// the bench), and a client of its API.
func startAPIBench(ctx context.Context, name string, o benchStackOptions) (*benchStack, *apiBench, error) {
	if os.Geteuid() != 0 {
		return nil, nil, fmt.Errorf("bench %s: needs root (the host agent's VMs and network)", name)
	}
	stack, err := startBenchStack(ctx, o, "bench-"+name+"-")
	if err != nil {
		return nil, nil, err
	}
	return stack, stack.api(), nil
}

// api is a client of the stack's API as its bench account.
func (b *benchStack) api() *apiBench {
	return &apiBench{st: b.st, agents: b.pool, url: b.url, key: b.key, team: b.team, client: b.client, log: b.log}
}

func startBenchStack(ctx context.Context, o benchStackOptions, prefix string) (b *benchStack, err error) {
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	b = &benchStack{log: o.log, domain: "localhost", client: &http.Client{Timeout: 2 * time.Minute,
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}}
	// The error returns set b to nil: close what was started through the
	// stack itself.
	stack := b
	defer func() {
		if err != nil {
			stack.close()
		}
	}()
	if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(o.dataDir, prefix)
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, func() { os.RemoveAll(work) })
	// PostgreSQL runs as its own user: it must reach its directory.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	pg, err := pgembed.Start(ctx, pgembed.Config{DataDir: work, BinDir: o.pgBinDir, Logger: o.log})
	if err != nil {
		return nil, fmt.Errorf("embedded PostgreSQL: %w", err)
	}
	b.closers = append(b.closers, func() { pg.Close() })

	// The host agent, as capsule serve embeds it, with the benchmark's own
	// network slot pool and sandbox directory (images shared).
	so := &serveOptions{hostOptions: hostOptions{
		dataDir: filepath.Join(work, "host"), runDir: filepath.Join(work, "run"), imagesDir: o.dataDir,
		envdBin: o.envdBin, base: o.base, warmImages: !o.coldImages, preparedVMMs: o.preparedVMMs, netName: "capsule-bench", netVethPrefix: "cbv",
		netHostCIDR: "198.18.96.0/24", netLinkCIDR: "198.18.97.0/24", netMaxSlots: 32,
	}}
	if o.net.name != "" {
		so.netName, so.netVethPrefix = o.net.name, o.net.name+"v"
		so.netHostCIDR, so.netLinkCIDR = o.net.hostCIDR.String(), o.net.linkCIDR.String()
	}
	so.capacity.VCPUs = o.vcpus
	so.defaultCapacity()
	hs, err := startHost(ctx, &so.hostOptions, o.log)
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, hs.stop)
	b.host, b.hostDataDir = hs, so.dataDir

	apiListen := o.apiListen
	if apiListen == "" {
		apiListen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", apiListen)
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, func() { ln.Close() })
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, func() { sln.Close() })
	b.url, b.sandboxURL = "http://"+displayAddr(ln.Addr()), "http://"+sln.Addr().String()

	// The control plane, built as capsule serve builds it; sign-up is open
	// for the bench's account.
	cp, err := controlplane.New(ctx, controlplane.Config{
		DSN: pg.DSN(), Secret: []byte("capsule-bench-api-secret-0123456789abcdef"),
		EmbeddedHosts: []string{service.LocalHost},
		Signup:        service.SignupOpen, OAuth: controlplane.OAuthConfig{PublicURL: b.url},
		Domain: b.domain, SandboxAddr: sln.Addr(), Quotas: benchQuotas(), Log: o.log, SingleReplica: true,
	})
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, cp.Close)
	// The agent registers as capsule serve's does.
	emb, err := startEmbeddedAgent(ctx, so, hs, cp, o.log)
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, func() { emb.close(o.log) })
	b.st, b.pool, b.accounts, b.sandboxes, b.hosts = cp.Store, cp.Agents, cp.Accounts, cp.Sandboxes, cp.Hosts
	if err := cp.Start(ctx); err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: cp.APIHandler(), ReadHeaderTimeout: 10 * time.Second}
	ssrv := &http.Server{Handler: cp.SandboxHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() { _ = ssrv.Serve(sln) }()
	b.closers = append(b.closers, func() { srv.Close(); ssrv.Close() })

	if b.account, err = b.accounts.Signup(ctx, service.Signup{Email: "bench@capsule.local", Password: "bench-api-password", Name: "Bench"}); err != nil {
		return nil, err
	}
	tb, tv := b.account.Team.ID.UUID()
	if b.team, err = b.st.Queries().GetTeam(ctx, pgtype.UUID{Bytes: tb, Valid: tv}); err != nil {
		return nil, err
	}
	key, err := b.accounts.CreateAPIKey(ctx, b.account.Principal(), "bench")
	if err != nil {
		return nil, err
	}
	b.key = key.Plaintext
	return b, nil
}

// benchQuotas are the platform's default quotas without the stored ones:
// bench api seeds its team with a thousand sandbox rows (paused ones
// among them) that hold no bytes on any host, and must still be able to
// snapshot.
func benchQuotas() service.Quotas {
	q := service.DefaultQuotas
	q.MaxPausedSandboxes, q.MaxStoredMB = math.MaxInt32, math.MaxInt64
	return q
}
