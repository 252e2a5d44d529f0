package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/controlplane"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/pgembed"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

const serveUsage = `usage: capsule serve [flags]

Runs the control plane (the /v1 REST API) and an embedded host agent in
one process. With no database URL it runs its own PostgreSQL in
DATA-DIR/postgres. On first start it creates a platform admin, its team
and an API key, prints them once and stores them in DATA-DIR/admin.json
(mode 0600). Needs root (the agent's VMs and network).

Every flag can also be set by the environment variable in brackets, or
as a key of the same name in a YAML configuration file (-config FILE,
CAPSULE_CONFIG, or /etc/capsule/capsule.yaml when it exists), e.g.
"listen: ':8080'" or "data-dir: /srv/capsule". A flag wins over the
environment, which wins over the file.

flags:
`

var serveEnv = map[string]string{
	"listen":                  "CAPSULE_LISTEN",
	"sandbox-listen":          "CAPSULE_SANDBOX_LISTEN",
	"data-dir":                "CAPSULE_DATA_DIR",
	"run-dir":                 "CAPSULE_RUN_DIR",
	"images-dir":              "CAPSULE_IMAGES_DIR",
	"database-url":            "DATABASE_URL",
	"pg-bin-dir":              "CAPSULE_PG_BIN_DIR",
	"envd":                    "CAPSULE_ENVD",
	"base":                    "CAPSULE_AGENT_BASE",
	"warm-images":             "CAPSULE_AGENT_WARM_IMAGES",
	"console-log-max-mb":      "CAPSULE_AGENT_CONSOLE_LOG_MAX_MB",
	"admin-email":             "CAPSULE_ADMIN_EMAIL",
	"max-vcpus":               "CAPSULE_AGENT_MAX_VCPUS",
	"max-memory-mb":           "CAPSULE_AGENT_MAX_MEMORY_MB",
	"disk-headroom-mb":        "CAPSULE_AGENT_DISK_HEADROOM_MB",
	"quota-paused":            "CAPSULE_QUOTA_PAUSED",
	"quota-stored-mb":         "CAPSULE_QUOTA_STORED_MB",
	"build-workers":           "CAPSULE_BUILD_WORKERS",
	"build-max-archive-mb":    "CAPSULE_BUILD_MAX_ARCHIVE_MB",
	"net-name":                "CAPSULE_AGENT_NET_NAME",
	"net-host-cidr":           "CAPSULE_AGENT_NET_HOST_CIDR",
	"net-link-cidr":           "CAPSULE_AGENT_NET_LINK_CIDR",
	"net-max-slots":           "CAPSULE_AGENT_NET_MAX_SLOTS",
	"v":                       "CAPSULE_VERBOSE",
	"public-url":              "CAPSULE_PUBLIC_URL",
	"github-client-id":        "CAPSULE_GITHUB_CLIENT_ID",
	"github-client-secret":    "CAPSULE_GITHUB_CLIENT_SECRET",
	"domain":                  "CAPSULE_DOMAIN",
	"signup":                  "CAPSULE_SIGNUP",
	"trusted-proxies":         "CAPSULE_TRUSTED_PROXIES",
	"cpu-overcommit":          "CAPSULE_CPU_OVERCOMMIT",
	"affinity-weight":         "CAPSULE_AFFINITY_WEIGHT",
	"host-heartbeat-interval": "CAPSULE_HOST_HEARTBEAT_INTERVAL",
	"host-unreachable-after":  "CAPSULE_HOST_UNREACHABLE_AFTER",
	"metrics-listen":          "CAPSULE_METRICS_LISTEN",
	"metrics-token":           "CAPSULE_METRICS_TOKEN",
	"tls-cert":                "CAPSULE_TLS_CERT",
	"tls-key":                 "CAPSULE_TLS_KEY",
	"tls-dev-ca":              "CAPSULE_TLS_DEV_CA",
	"e2b-rate-limit":          "CAPSULE_E2B_RATE_LIMIT",
}

// defaultConfigFile is read when it exists and neither -config nor
// CAPSULE_CONFIG names a file.
const defaultConfigFile = "/etc/capsule/capsule.yaml"

type serveOptions struct {
	hostOptions
	metricsOptions
	listen string
	// sandboxListen is the address of the sandbox traffic listener: the
	// proxy alone, never on the API's origin.
	sandboxListen         string
	databaseURL, pgBinDir string
	adminEmail            string
	verbose               bool
	// domain is the sandbox domain: {port}-{sandbox}.{domain} reaches a
	// sandbox's port through the proxy.
	domain string
	// publicURL is where browsers reach the API (OAuth callbacks).
	publicURL                          string
	githubClientID, githubClientSecret string
	// signup is who may sign up (open, invite, closed).
	signup     string
	signupMode service.SignupPolicy
	// trustedProxies is the comma-separated list of reverse proxies
	// (CIDRs or addresses) whose X-Forwarded-For the rate limits believe.
	trustedProxies string
	proxies        []netip.Prefix
	// configFile is the configuration file read ("" when none).
	configFile string
	// tls: HTTPS on both listeners (servetls.go).
	tls tlsOptions
	// e2bRateLimit is each team's requests per second on the E2B API
	// (bursts of two seconds' worth; 0: no limit).
	e2bRateLimit float64
	// quotas are the platform's default team quotas.
	quotas service.Quotas
	// cpuOvercommit and affinityWeight tune the scheduler.
	cpuOvercommit, affinityWeight float64
	// heartbeatInterval is the agents' heartbeat; unreachableAfter the
	// silence after which the host monitor marks a host unreachable.
	heartbeatInterval, unreachableAfter time.Duration
	// buildWorkers and buildMaxArchiveMB configure template builds.
	buildWorkers      int
	buildMaxArchiveMB int64
}

// intFlag and int64Flag parse a non-negative number into *p.
func intFlag(p *int32) func(string) error {
	return func(v string) error {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 0 {
			return fmt.Errorf("want a number ≥ 0, not %q", v)
		}
		*p = int32(n)
		return nil
	}
}

func int64Flag(p *int64) func(string) error {
	return func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("want a number ≥ 0, not %q", v)
		}
		*p = n
		return nil
	}
}

// parseServeFlags reads the settings: flags, then the environment, then
// the configuration file (defaultConfig when it exists and no other is
// named), then the defaults.
func parseServeFlags(args []string, getenv func(string) string, defaultConfig string) (*serveOptions, error) {
	o := &serveOptions{quotas: service.DefaultQuotas}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), serveUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", ":8080", "address of the API [CAPSULE_LISTEN]")
	fs.StringVar(&o.sandboxListen, "sandbox-listen", ":8081", "address of the sandbox traffic proxy (its own origin: no sandbox byte is served on the API's) [CAPSULE_SANDBOX_LISTEN]")
	fs.StringVar(&o.dataDir, "data-dir", image.DefaultDataDir, "data directory: database, images, sandboxes, secrets [CAPSULE_DATA_DIR]")
	fs.StringVar(&o.runDir, "run-dir", "/run/capsule", "runtime directory of the VMMs [CAPSULE_RUN_DIR]")
	fs.StringVar(&o.imagesDir, "images-dir", "", "directory of the guest image store (default: DATA-DIR; several data directories may share one) [CAPSULE_IMAGES_DIR]")
	fs.StringVar(&o.databaseURL, "database-url", "", "PostgreSQL URL (empty: the embedded server in DATA-DIR/postgres) [DATABASE_URL]")
	fs.StringVar(&o.pgBinDir, "pg-bin-dir", "", "directory of initdb and postgres for the embedded server (default: the newest installed) [CAPSULE_PG_BIN_DIR]")
	fs.StringVar(&o.envdBin, "envd", siblingBinary("envd"), "envd binary (static) for the guest images [CAPSULE_ENVD]")
	fs.BoolVar(&o.base, "base", true, "build the base image at start (about a minute the first time, then cached) [CAPSULE_AGENT_BASE]")
	fs.BoolVar(&o.warmImages, "warm-images", true, "keep a memory snapshot of each image per machine shape, so that creates restore instead of booting cold [CAPSULE_AGENT_WARM_IMAGES]")
	fs.IntVar(&o.preparedVMMs, "prepared-vmms", 2, "VMMs kept started for each snapshot template and machine shape created from in the last 10 minutes, waiting to restore it, so that creates skip QEMU's start-up (0: none) [CAPSULE_AGENT_PREPARED_VMMS]")
	fs.IntVar(&o.consoleLogMaxMB, "console-log-max-mb", 4, "cap of each sandbox's serial console log in MiB; past it the log is rotated into console.log.1 [CAPSULE_AGENT_CONSOLE_LOG_MAX_MB]")
	fs.StringVar(&o.adminEmail, "admin-email", "admin@capsule.local", "e-mail address of the platform admin created on first start [CAPSULE_ADMIN_EMAIL]")
	fs.IntVar(&o.capacity.VCPUs, "max-vcpus", 0, "vCPUs this host offers to sandboxes, whatever the scheduler's overcommit (default: its CPUs × the control plane's -cpu-overcommit) [CAPSULE_AGENT_MAX_VCPUS]")
	fs.IntVar(&o.capacity.MemoryMB, "max-memory-mb", 0, "guest memory for sandboxes in MiB (default 3/4 of the host's) [CAPSULE_AGENT_MAX_MEMORY_MB]")
	fs.Int64Var(&o.diskHeadroomMB, "disk-headroom-mb", 1024, "free space (MiB) the data directory's disk keeps: creates, pauses and snapshots that would leave less are refused (507); 0 turns the check off [CAPSULE_AGENT_DISK_HEADROOM_MB]")
	fs.Func("quota-paused", fmt.Sprintf("paused sandboxes a team may keep (default %d; a team's own quota wins) [CAPSULE_QUOTA_PAUSED]", service.DefaultQuotas.MaxPausedSandboxes), intFlag(&o.quotas.MaxPausedSandboxes))
	fs.Func("quota-stored-mb", fmt.Sprintf("MiB a team may keep stored: paused sandboxes' memory and snapshot templates (default %d; a team's own quota wins) [CAPSULE_QUOTA_STORED_MB]", service.DefaultQuotas.MaxStoredMB), int64Flag(&o.quotas.MaxStoredMB))
	fs.StringVar(&o.netName, "net-name", "", "name of the network slot pool (default capsule) [CAPSULE_AGENT_NET_NAME]")
	fs.StringVar(&o.netHostCIDR, "net-host-cidr", "", "per-sandbox host addresses (default "+netslot.DefaultHostCIDR.String()+") [CAPSULE_AGENT_NET_HOST_CIDR]")
	fs.StringVar(&o.netLinkCIDR, "net-link-cidr", "", "per-sandbox veth links (default "+netslot.DefaultLinkCIDR.String()+") [CAPSULE_AGENT_NET_LINK_CIDR]")
	fs.IntVar(&o.netMaxSlots, "net-max-slots", 0, "most network slots, hence running sandboxes (default 1024; at most what the CIDRs address) [CAPSULE_AGENT_NET_MAX_SLOTS]")
	fs.IntVar(&o.buildWorkers, "build-workers", 2, "template builds this control plane runs at once (each replica runs its own workers on the shared queue) [CAPSULE_BUILD_WORKERS]")
	fs.Int64Var(&o.buildMaxArchiveMB, "build-max-archive-mb", 1024, "size limit (MiB) of a build's archive, uploaded and uncompressed; larger ones are refused with 413 [CAPSULE_BUILD_MAX_ARCHIVE_MB]")
	fs.BoolVar(&o.verbose, "v", false, "debug logs [CAPSULE_VERBOSE]")
	fs.StringVar(&o.domain, "domain", "localhost", "sandbox domain: requests for {port}-{sandbox-id}.DOMAIN on the sandbox listener go to that port of the sandbox; DOMAIN may end in :PORT, the port clients reach the sandbox listener at (default: the listener's own, unless 80 or 443) [CAPSULE_DOMAIN]")
	fs.StringVar(&o.publicURL, "public-url", "http://localhost:8080", "URL at which browsers reach the API (OAuth callbacks) [CAPSULE_PUBLIC_URL]")
	fs.StringVar(&o.githubClientID, "github-client-id", "", "GitHub OAuth app client ID (GitHub login is on when it and the secret are set) [CAPSULE_GITHUB_CLIENT_ID]")
	fs.StringVar(&o.githubClientSecret, "github-client-secret", "", "GitHub OAuth app client secret [CAPSULE_GITHUB_CLIENT_SECRET]")
	fs.StringVar(&o.signup, "signup", string(service.SignupInvite), "who may sign up: open (anyone), invite (with a team invitation from an owner or admin), closed (nobody; the platform admin is still created on first start) [CAPSULE_SIGNUP]")
	fs.StringVar(&o.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs or addresses of the reverse proxies in front of the API; their X-Forwarded-For gives the client address that rate limits see (empty: none is trusted) [CAPSULE_TRUSTED_PROXIES]")
	fs.Float64Var(&o.cpuOvercommit, "cpu-overcommit", scheduler.DefaultCPUOvercommit, "vCPUs the scheduler places per host CPU (memory and disk are never overcommitted) [CAPSULE_CPU_OVERCOMMIT]")
	fs.Float64Var(&o.affinityWeight, "affinity-weight", scheduler.DefaultAffinityWeight, "load discount of a host that already holds a sandbox's template (0 to 1; negative: no template affinity) [CAPSULE_AFFINITY_WEIGHT]")
	fs.DurationVar(&o.heartbeatInterval, "host-heartbeat-interval", hostapi.HeartbeatInterval, "how often host agents are asked to beat (whole seconds) [CAPSULE_HOST_HEARTBEAT_INTERVAL]")
	fs.DurationVar(&o.unreachableAfter, "host-unreachable-after", hostapi.UnreachableAfter, "time without a heartbeat after which a host is unreachable and its sandboxes missing [CAPSULE_HOST_UNREACHABLE_AFTER]")
	o.metricsOptions.register(fs, "CAPSULE_")
	o.tls.register(fs)
	fs.Float64Var(&o.e2bRateLimit, "e2b-rate-limit", 50, "requests per second each team may send to the E2B API and the /v1 sandbox lifecycle routes (one budget), in bursts of two seconds' worth; past it 429 with Retry-After, which the SDKs wait for (0: no limit) [CAPSULE_E2B_RATE_LIMIT]")
	fs.StringVar(&o.configFile, "config", "", "YAML configuration file, keys named as these flags (default "+defaultConfigFile+" when it exists) [CAPSULE_CONFIG]")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["config"] {
		o.configFile = getenv("CAPSULE_CONFIG")
	}
	if o.configFile == "" && defaultConfig != "" {
		if _, err := os.Stat(defaultConfig); err == nil {
			o.configFile = defaultConfig
		}
	}
	if o.configFile != "" {
		values, err := readConfigFile(o.configFile)
		if err != nil {
			return nil, fmt.Errorf("serve: %w", err)
		}
		for _, kv := range values {
			if fs.Lookup(kv.key) == nil || kv.key == "config" {
				return nil, fmt.Errorf("serve: %s: line %d: unknown key %q (the keys are the flag names of capsule serve -h)", o.configFile, kv.line, kv.key)
			}
			if set[kv.key] {
				continue
			}
			if err := fs.Set(kv.key, kv.value); err != nil {
				return nil, fmt.Errorf("serve: %s: line %d: %s: %w", o.configFile, kv.line, kv.key, err)
			}
		}
	}
	for name, env := range serveEnv {
		if v := getenv(env); v != "" && !set[name] {
			if err := fs.Set(name, v); err != nil {
				return nil, fmt.Errorf("serve: %s=%q: %w", env, v, err)
			}
		}
	}
	if err := o.metricsOptions.check(fs); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if o.sandboxListen == o.listen {
		return nil, fmt.Errorf("serve: -sandbox-listen %q is the API's address: sandbox traffic needs its own listener", o.sandboxListen)
	}
	if h, p, err := net.SplitHostPort(o.domain); err == nil {
		if n, perr := strconv.Atoi(p); h == "" || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("serve: -domain %q: want a domain, optionally with :PORT", o.domain)
		}
	}
	if o.capacity.VCPUs < 0 || o.capacity.MemoryMB < 0 || o.diskHeadroomMB < 0 {
		return nil, errors.New("serve: capacities and the disk headroom must not be negative")
	}
	if o.cpuOvercommit <= 0 || math.IsNaN(o.cpuOvercommit) || math.IsInf(o.cpuOvercommit, 0) {
		return nil, fmt.Errorf("serve: -cpu-overcommit %v: want a ratio above 0", o.cpuOvercommit)
	}
	if math.IsNaN(o.affinityWeight) || o.affinityWeight > 1 {
		return nil, fmt.Errorf("serve: -affinity-weight %v: want at most 1 (negative: no affinity)", o.affinityWeight)
	}
	if o.affinityWeight == 0 {
		o.affinityWeight = -1 // 0 means none, not the scheduler's default
	}
	if o.heartbeatInterval < time.Second || o.heartbeatInterval%time.Second != 0 {
		return nil, fmt.Errorf("serve: -host-heartbeat-interval %v: want whole seconds, at least 1s", o.heartbeatInterval)
	}
	if o.unreachableAfter < 2*o.heartbeatInterval {
		return nil, fmt.Errorf("serve: -host-unreachable-after %v: want at least two heartbeat intervals (%v)", o.unreachableAfter, 2*o.heartbeatInterval)
	}
	u, err := url.Parse(o.publicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("serve: -public-url %q: want an http(s) origin such as https://capsule.example.com", o.publicURL)
	}
	o.publicURL = strings.TrimSuffix(o.publicURL, "/")
	if (o.githubClientID == "") != (o.githubClientSecret == "") {
		return nil, errors.New("serve: GitHub login needs both -github-client-id and -github-client-secret")
	}
	if o.signupMode, err = service.ParseSignupPolicy(o.signup); err != nil {
		return nil, fmt.Errorf("serve: -signup %q: want open, invite or closed", o.signup)
	}
	if o.proxies, err = parsePrefixes(o.trustedProxies); err != nil {
		return nil, fmt.Errorf("serve: -trusted-proxies: %w", err)
	}
	if err := o.tls.check(); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if o.e2bRateLimit < 0 || math.IsNaN(o.e2bRateLimit) || math.IsInf(o.e2bRateLimit, 0) {
		return nil, fmt.Errorf("serve: -e2b-rate-limit %v: want requests per second, 0 for none", o.e2bRateLimit)
	}
	o.defaultCapacity()
	return o, nil
}

// parsePrefixes parses a comma-separated list of CIDRs and addresses (an
// address is its own /32 or /128).
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address", f)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// adminFile is DATA-DIR/admin.json, written once on first start.
type adminFile struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	UserID   string `json:"user_id"`
	TeamID   string `json:"team_id"`
	APIKey   string `json:"api_key"`
}

func runServe(ctx context.Context, args []string) (err error) {
	o, err := parseServeFlags(args, os.Getenv, defaultConfigFile)
	if err != nil {
		return err
	}
	// The data directory is ours before anything else happens: a second
	// instance must not stop the first one's PostgreSQL or network.
	unlock, err := lockDataDir(o.dataDir)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer unlock()
	log := commandLogger(o.verbose)
	if o.configFile != "" {
		log.InfoContext(ctx, "configuration file", "file", o.configFile)
	}
	if os.Geteuid() != 0 {
		return errors.New("serve: needs root (the embedded agent's network namespaces, TAP devices, nftables)")
	}

	// The database.
	dsn := o.databaseURL
	if dsn == "" {
		pg, err := pgembed.Start(ctx, pgembed.Config{DataDir: o.dataDir, BinDir: o.pgBinDir, Logger: log})
		if err != nil {
			return fmt.Errorf("serve: embedded PostgreSQL: %w", err)
		}
		defer func() {
			if cerr := pg.Close(); cerr != nil {
				log.Error("stop PostgreSQL", "err", cerr)
			}
		}()
		dsn = pg.DSN()
	}
	secret, _, err := loadOrCreateToken(filepath.Join(o.dataDir, "server.secret"))
	if err != nil {
		return fmt.Errorf("serve: server secret: %w", err)
	}
	// HTTPS, when asked: before anything starts, so that a bad
	// certificate fails the start.
	tlsConf, err := o.serverTLS(log)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}

	// The embedded host's sandbox stack; its agent registers below.
	hs, err := startHost(ctx, &o.hostOptions, log)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer hs.stop()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer ln.Close()
	sln, err := net.Listen("tcp", o.sandboxListen)
	if err != nil {
		return fmt.Errorf("serve: sandbox listener: %w", err)
	}
	defer sln.Close()

	// The control plane: services, reaper, reconciliation, API, proxy,
	// E2B facade.
	cp, err := controlplane.New(ctx, controlplane.Config{
		DSN: dsn, Secret: []byte(secret),
		EmbeddedHosts:     []string{service.LocalHost},
		Scheduler:         scheduler.Config{CPUOvercommit: o.cpuOvercommit, AffinityWeight: o.affinityWeight},
		Monitor:           service.MonitorConfig{UnreachableAfter: o.unreachableAfter},
		HeartbeatInterval: o.heartbeatInterval,
		Signup:            o.signupMode, Quotas: o.quotas, OAuth: o.oauthConfig(), TrustedProxies: o.proxies,
		Domain: o.domain, SandboxAddr: sln.Addr(), Log: log,
		Builds: controlplane.BuildsConfig{Workers: o.buildWorkers, MaxArchiveBytes: o.buildMaxArchiveMB << 20},
		// The embedded PostgreSQL is this process's alone (its data
		// directory is locked): no other replica shares it.
		SingleReplica:    o.databaseURL == "",
		E2BTeamRateLimit: teamRateLimit(o.e2bRateLimit),
	})
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer cp.Close()
	// The embedded agent registers as the regular host "local", through
	// the same path as any other agent (a token, then mutual TLS).
	emb, err := startEmbeddedAgent(ctx, o, hs, cp, log)
	if err != nil {
		return err
	}
	defer emb.close(log)
	if err := bootstrapAdmin(ctx, o, cp.Store, cp.Accounts, log); err != nil {
		return err
	}
	// The records follow what the agent runs after a crash of either, and
	// the TTL reaper pauses sandboxes past their timeout until shutdown.
	if err := cp.Start(ctx); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// Prometheus: the control plane's metrics and the embedded agent's,
	// on the private listener and, with a scrape token, the API's.
	if emb.served.agent != nil {
		cp.Telemetry.Registry.MustRegister(emb.served.agent.Collector())
	}
	metrics := cp.MetricsHandler(o.metricsToken)
	stopMetrics, err := o.serveMetrics(ctx, metrics, log)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer stopMetrics()
	apiHandler := cp.APIHandler()
	if o.metricsToken != "" {
		apiHandler = withMetrics(apiHandler, metrics)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	srv := &http.Server{Handler: apiHandler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: errLog}
	ssrv := &http.Server{Handler: cp.SandboxHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: errLog}
	served := make(chan error, 2)
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
		srv.TLSConfig = tlsConf.Clone()
		// The sandbox listener speaks HTTP/1.1 only: the proxy hands
		// connections over (WebSocket upgrades), which HTTP/2 cannot.
		ssrv.TLSConfig = tlsConf.Clone()
		ssrv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		go func() { served <- srv.ServeTLS(ln, "", "") }()
		go func() { served <- ssrv.ServeTLS(sln, "", "") }()
	} else {
		go func() { served <- srv.Serve(ln) }()
		go func() { served <- ssrv.Serve(sln) }()
	}
	log.InfoContext(ctx, "capsule serve: API listening", "addr", ln.Addr().String(), "sandbox_addr", sln.Addr().String(),
		"sandbox_domain", cp.SandboxDomain, "data_dir", o.dataDir, "signup", string(o.signupMode), "trusted_proxies", len(o.proxies),
		"tls", tlsConf != nil)
	fmt.Printf("capsule serve: API on %s://%s, sandbox traffic on %s://%s (Ctrl-C stops it)\n", scheme, displayAddr(ln.Addr()), scheme, displayAddr(sln.Addr()))

	select {
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("capsule serve: stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	for _, s := range []*http.Server{srv, ssrv} {
		if serr := s.Shutdown(sctx); serr != nil {
			_ = s.Close()
		}
	}
	cancel()
	// Stop the reaper, then pause every running sandbox through the agent
	// path, so that the database records them as paused.
	pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if perr := cp.Shutdown(pctx); perr != nil {
		log.Error("pause sandboxes at shutdown", "err", perr)
	}
	cancel()
	return err
}

// oauthConfig is the OAuth part of the settings.
func (o *serveOptions) oauthConfig() controlplane.OAuthConfig {
	return controlplane.OAuthConfig{PublicURL: o.publicURL, GitHubClientID: o.githubClientID, GitHubClientSecret: o.githubClientSecret}
}

// oauthProviders registers the configured OAuth providers (GitHub when
// its client ID and secret are set) and the state manager of their flows,
// as the control plane does.
func oauthProviders(o *serveOptions, secret []byte) (*oauth.Registry, *oauth.StateManager, error) {
	reg, states, err := controlplane.NewOAuth(o.oauthConfig(), secret)
	if err != nil {
		return nil, nil, fmt.Errorf("serve: %w", err)
	}
	return reg, states, nil
}

func displayAddr(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil || !ap.Addr().IsUnspecified() {
		return a.String()
	}
	return fmt.Sprintf("127.0.0.1:%d", ap.Port())
}

// bootstrapAdmin creates, on first start (no user yet), a platform admin
// with a random password, its team and an API key; prints them once and
// stores them in DATA-DIR/admin.json (mode 0600).
func bootstrapAdmin(ctx context.Context, o *serveOptions, st *store.Store, accounts *service.Accounts, log *slog.Logger) error {
	path := filepath.Join(o.dataDir, "admin.json")
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("serve: %w", err)
	}
	n, err := st.Queries().CountUsers(ctx)
	if err != nil {
		return fmt.Errorf("serve: count users: %w", err)
	}
	if n > 0 {
		log.WarnContext(ctx, "users exist but admin.json is missing: no admin created", "file", path)
		return nil
	}
	raw := make([]byte, 18)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	password := base64.RawURLEncoding.EncodeToString(raw)
	acc, err := accounts.Signup(ctx, service.Signup{Email: o.adminEmail, Password: password, Name: "Admin", IsAdmin: true})
	if err != nil {
		return fmt.Errorf("serve: create the admin: %w", err)
	}
	key, err := accounts.CreateAPIKey(ctx, acc.Principal(), "admin")
	if err != nil {
		return fmt.Errorf("serve: create the admin's API key: %w", err)
	}
	af := adminFile{
		Email: acc.User.Email, Password: password, UserID: wireid.Format(wireid.User, acc.User.ID),
		TeamID: acc.Team.ID.String(), APIKey: key.Plaintext,
	}
	b, err := json.MarshalIndent(af, "", "  ")
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	fmt.Printf("capsule serve: created the platform admin (shown once, also in %s):\n", path)
	fmt.Printf("  email:    %s\n  password: %s\n  API key:  %s\n", af.Email, af.Password, af.APIKey)
	return nil
}

// configValue is a key of a configuration file and its value as a flag's
// text.
type configValue struct {
	key, value string
	line       int
}

// readConfigFile reads a YAML mapping of flag names to scalar values (an
// empty file sets nothing).
func readConfigFile(path string) ([]configValue, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: want a mapping of settings (key: value)", path)
	}
	var out []configValue
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("%s: line %d: a key must be a name", path, k.Line)
		}
		if seen[k.Value] {
			return nil, fmt.Errorf("%s: line %d: %q is set twice", path, k.Line, k.Value)
		}
		seen[k.Value] = true
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			return nil, fmt.Errorf("%s: line %d: %s: want a single value (string, number or boolean)", path, v.Line, k.Value)
		}
		out = append(out, configValue{key: k.Value, value: v.Value, line: k.Line})
	}
	return out, nil
}

// teamRateLimit is the token bucket of perSecond requests in bursts of two
// seconds' worth (zero: none).
func teamRateLimit(perSecond float64) auth.RateLimit {
	if perSecond <= 0 {
		return auth.RateLimit{}
	}
	return auth.RateLimit{Burst: max(1, int(2*perSecond)), Interval: time.Duration(float64(time.Second) / perSecond)}
}
