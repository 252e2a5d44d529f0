package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/capsulehq/capsule/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/netslot"
)

const agentUsage = `usage: capsule agent [flags]

Runs the host agent: the sandboxes of this machine, served to the control
plane over Connect RPC (hostagent.v1). Needs root. Every flag can also be set
by the environment variable in brackets.

Alone (no --control-plane) it serves HTTP/1.1 and cleartext HTTP/2 with a
bearer token (--token-file). With --control-plane it registers with the
control plane (--register TOKEN, once: the credentials are kept in
DATA-DIR/agent), beats every 15 s, and serves HTTPS on --address with the
certificate the platform's CA issued, to the control plane's client
certificate only. It exits with status 3 when the control plane deleted
the host (after destroying its sandboxes).

flags:
`

// agentEnv maps the agent's flags to environment variables.
var agentEnv = map[string]string{
	"data-dir":           "CAPSULE_DATA_DIR",
	"run-dir":            "CAPSULE_RUN_DIR",
	"images-dir":         "CAPSULE_IMAGES_DIR",
	"listen":             "CAPSULE_AGENT_LISTEN",
	"token-file":         "CAPSULE_AGENT_TOKEN_FILE",
	"envd":               "CAPSULE_ENVD",
	"base":               "CAPSULE_AGENT_BASE",
	"warm-images":        "CAPSULE_AGENT_WARM_IMAGES",
	"console-log-max-mb": "CAPSULE_AGENT_CONSOLE_LOG_MAX_MB",
	"max-vcpus":          "CAPSULE_AGENT_MAX_VCPUS",
	"max-memory-mb":      "CAPSULE_AGENT_MAX_MEMORY_MB",
	"disk-headroom-mb":   "CAPSULE_AGENT_DISK_HEADROOM_MB",
	"max-disk-mb":        "CAPSULE_AGENT_MAX_DISK_MB",
	"net-name":           "CAPSULE_AGENT_NET_NAME",
	"net-host-cidr":      "CAPSULE_AGENT_NET_HOST_CIDR",
	"net-link-cidr":      "CAPSULE_AGENT_NET_LINK_CIDR",
	"net-max-slots":      "CAPSULE_AGENT_NET_MAX_SLOTS",
	"v":                  "CAPSULE_AGENT_VERBOSE",
	"control-plane":      "CAPSULE_AGENT_CONTROL_PLANE",
	"register":           "CAPSULE_AGENT_REGISTER",
	"address":            "CAPSULE_AGENT_ADDRESS",
	"ca-file":            "CAPSULE_AGENT_CA_FILE",
	"metrics-listen":     "CAPSULE_AGENT_METRICS_LISTEN",
	"metrics-token":      "CAPSULE_AGENT_METRICS_TOKEN",
}

// agentOptions are the agent's settings.
type agentOptions struct {
	hostOptions
	metricsOptions
	listen    string
	tokenFile string
	verbose   bool
	// controlPlane, when set, makes the agent register with it and serve
	// mTLS on address (or listen, when set explicitly).
	controlPlane  string
	registerToken string
	address       string
	caFile        string
}

// parseAgentFlags reads flags, then the environment for flags left unset.
func parseAgentFlags(args []string, getenv func(string) string) (*agentOptions, error) {
	o := &agentOptions{}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), agentUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.dataDir, "data-dir", image.DefaultDataDir, "data directory: images, templates, sandboxes [CAPSULE_DATA_DIR]")
	fs.StringVar(&o.runDir, "run-dir", "/run/capsule", "runtime directory of the VMMs [CAPSULE_RUN_DIR]")
	fs.StringVar(&o.imagesDir, "images-dir", "", "directory of the guest image store (default: DATA-DIR; several data directories may share one) [CAPSULE_IMAGES_DIR]")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7070", "address to serve on (cleartext: keep it on a private network) [CAPSULE_AGENT_LISTEN]")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the bearer token; created (mode 0600) with a random token if absent (default DATA-DIR/agent.token) [CAPSULE_AGENT_TOKEN_FILE]")
	fs.StringVar(&o.envdBin, "envd", siblingBinary("envd"), "envd binary (static) for the guest images [CAPSULE_ENVD]")
	fs.BoolVar(&o.base, "base", true, "build the base image at start (about a minute the first time, then cached) [CAPSULE_AGENT_BASE]")
	fs.BoolVar(&o.warmImages, "warm-images", true, "keep a memory snapshot of each image per machine shape, so that creates restore instead of booting cold [CAPSULE_AGENT_WARM_IMAGES]")
	fs.IntVar(&o.preparedVMMs, "prepared-vmms", 2, "VMMs kept started for each snapshot template and machine shape created from in the last 10 minutes, waiting to restore it, so that creates skip QEMU's start-up (0: none) [CAPSULE_AGENT_PREPARED_VMMS]")
	fs.IntVar(&o.consoleLogMaxMB, "console-log-max-mb", 4, "cap of each sandbox's serial console log in MiB; past it the log is rotated into console.log.1 [CAPSULE_AGENT_CONSOLE_LOG_MAX_MB]")
	fs.IntVar(&o.capacity.VCPUs, "max-vcpus", 0, "vCPUs this host offers to sandboxes, whatever the scheduler's overcommit (default: its CPUs × the control plane's -cpu-overcommit) [CAPSULE_AGENT_MAX_VCPUS]")
	fs.IntVar(&o.capacity.MemoryMB, "max-memory-mb", 0, "guest memory for sandboxes in MiB (default 3/4 of the host's) [CAPSULE_AGENT_MAX_MEMORY_MB]")
	fs.IntVar(&o.capacity.DiskMB, "max-disk-mb", 0, "sandbox disk space in MiB (default unlimited) [CAPSULE_AGENT_MAX_DISK_MB]")
	fs.Int64Var(&o.diskHeadroomMB, "disk-headroom-mb", 1024, "free space (MiB) the data directory's disk keeps: creates, pauses and snapshots that would leave less are refused; 0 turns the check off [CAPSULE_AGENT_DISK_HEADROOM_MB]")
	fs.StringVar(&o.netName, "net-name", "", "name of the network slot pool (default capsule) [CAPSULE_AGENT_NET_NAME]")
	fs.StringVar(&o.netHostCIDR, "net-host-cidr", "", "per-sandbox host addresses (default "+netslot.DefaultHostCIDR.String()+") [CAPSULE_AGENT_NET_HOST_CIDR]")
	fs.StringVar(&o.netLinkCIDR, "net-link-cidr", "", "per-sandbox veth links (default "+netslot.DefaultLinkCIDR.String()+") [CAPSULE_AGENT_NET_LINK_CIDR]")
	fs.IntVar(&o.netMaxSlots, "net-max-slots", 0, "most network slots, hence running sandboxes (default 1024; at most what the CIDRs address) [CAPSULE_AGENT_NET_MAX_SLOTS]")
	fs.BoolVar(&o.verbose, "v", false, "debug logs [CAPSULE_AGENT_VERBOSE]")
	fs.StringVar(&o.controlPlane, "control-plane", "", "URL of the control plane to register with and beat to (https://HOST:PORT); unset: a standalone agent with a bearer token [CAPSULE_AGENT_CONTROL_PLANE]")
	fs.StringVar(&o.registerToken, "register", "", "one-time registration token of this host (needed once: ignored while DATA-DIR/agent holds credentials) [CAPSULE_AGENT_REGISTER]")
	fs.StringVar(&o.address, "address", "", "HOST:PORT this agent listens on (unless --listen is set) and claims at registration; required with --control-plane [CAPSULE_AGENT_ADDRESS]")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM CA certificates to trust for the control plane's HTTPS (default: the system's roots) [CAPSULE_AGENT_CA_FILE]")
	o.metricsOptions.register(fs, "CAPSULE_AGENT_")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("agent: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, env := range agentEnv {
		if v := getenv(env); v != "" && !set[name] {
			if err := fs.Set(name, v); err != nil {
				return nil, fmt.Errorf("agent: %s=%q: %w", env, v, err)
			}
		}
	}
	if err := o.metricsOptions.check(fs); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if o.tokenFile == "" {
		o.tokenFile = filepath.Join(o.dataDir, "agent.token")
	}
	if o.controlPlane == "" {
		if o.registerToken != "" || o.address != "" || o.caFile != "" {
			return nil, errors.New("agent: --register, --address and --ca-file need --control-plane")
		}
	} else {
		if o.address == "" {
			return nil, errors.New("agent: --control-plane needs --address HOST:PORT (the address this agent listens on and claims)")
		}
		if _, _, err := net.SplitHostPort(o.address); err != nil {
			return nil, fmt.Errorf("agent: --address %q: %w", o.address, err)
		}
		if !set["listen"] && getenv(agentEnv["listen"]) == "" {
			o.listen = o.address
		}
	}
	if o.capacity.VCPUs < 0 || o.capacity.MemoryMB < 0 || o.capacity.DiskMB < 0 || o.diskHeadroomMB < 0 {
		return nil, errors.New("agent: capacities and the disk headroom must not be negative")
	}
	o.defaultCapacity()
	return o, nil
}

// runAgent is `capsule agent`.
func runAgent(ctx context.Context, args []string) error {
	o, err := parseAgentFlags(args, os.Getenv)
	if err != nil {
		return err
	}
	unlock, err := lockDataDir(o.dataDir)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer unlock()
	log := commandLogger(o.verbose)
	if os.Geteuid() != 0 {
		return errors.New("agent: needs root (network namespaces, TAP devices, nftables)")
	}
	if o.controlPlane != "" {
		return runRegisteredAgent(ctx, o, log)
	}
	if err := warnIfPublic(o.listen, log); err != nil {
		return err
	}
	token, created, err := loadOrCreateToken(o.tokenFile)
	if err != nil {
		return err
	}
	if created {
		log.InfoContext(ctx, "generated the agent's bearer token", "file", o.tokenFile)
	}

	host, err := startHost(ctx, &o.hostOptions, log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer host.stop()

	sa, err := host.serveAgent(o.listen, token, o.capacity, log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	log.InfoContext(ctx, "agent listening", "url", "http://"+sa.addr.String(), "token_file", o.tokenFile,
		"accel", host.driver.Accel(), "max_vcpus", o.capacity.VCPUs, "max_memory_mb", o.capacity.MemoryMB,
		"max_disk_mb", o.capacity.DiskMB)
	fmt.Printf("capsule agent: listening on http://%s\n", sa.addr)
	// Prometheus: the host's capacity and use, its sandboxes, the metrics
	// sampler's cost, on the private metrics listener.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), sa.agent.Collector())
	stopMetrics, err := o.serveMetrics(ctx, telemetry.Handler(reg, o.metricsToken), log)
	if err != nil {
		_ = sa.stop(log)
		return fmt.Errorf("agent: %w", err)
	}
	defer stopMetrics()

	select {
	case err := <-sa.served:
		return fmt.Errorf("agent: serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("agent stopping")
	if err := sa.stop(log); err != nil {
		log.Error("serve", "err", err)
	}
	return nil
}

// warnIfPublic logs a warning when the agent listens beyond loopback: it
// serves cleartext, so the network in between must be private.
func warnIfPublic(addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("agent: --listen %q: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() || host == "localhost" {
		return nil
	}
	log.Warn("the agent serves cleartext HTTP beyond loopback: keep that network private or firewalled", "listen", addr)
	return nil
}

// loadOrCreateToken reads the bearer token from path, or creates path with
// a random token (mode 0600) if it does not exist. A token file that other
// users can read is refused.
func loadOrCreateToken(path string) (token string, created bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createToken(path)
	}
	if err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", false, fmt.Errorf("agent token: %s is accessible to other users (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	token = strings.TrimSpace(string(b))
	if len(token) < agent.MinTokenLength {
		return "", false, fmt.Errorf("agent token: %s holds fewer than %d characters", path, agent.MinTokenLength)
	}
	return token, false, nil
}

func createToken(path string) (string, bool, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	// Written aside, then linked into place: the file appears complete or
	// not at all, and of two agents starting at once one token wins.
	f, err := os.CreateTemp(dir, ".agent-token-*")
	if err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(token + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	if err := os.Link(f.Name(), path); errors.Is(err, fs.ErrExist) {
		return loadOrCreateToken(path)
	} else if err != nil {
		return "", false, fmt.Errorf("agent token: %w", err)
	}
	return token, true, nil
}

// hostMemoryMB is the host's RAM in MiB.
func hostMemoryMB() int {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return 0
	}
	return int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
}
