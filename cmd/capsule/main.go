// Command capsule is the Capsule platform binary: control plane, host agent,
// image builder, CLI and benchmarks, as subcommands.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"syscall"

	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/cli"
	"github.com/capsulehq/capsule/internal/envdapi"
)

const usage = `usage: capsule <command> [flags]

commands:
  serve         run the control plane (API on :8080) with an embedded agent and PostgreSQL (root; capsule serve -h)
  migrate       apply the database schema (migrate [up|status]; DATABASE_URL or the embedded PostgreSQL)
  agent         run the host agent: this machine's sandboxes over hostagent.v1 (root; capsule agent -h)
  bench envd    measure envd on this host (prints JSON)
  bench vm      measure the sandbox lifecycle with real VMs (prints JSON; root)
  bench api     measure the control plane's API in-process with a real agent (prints JSON; root)
  bench metrics measure the metrics sampler's CPU and the metrics endpoint (prints JSON; root)
  bench proxy   measure the traffic proxy against direct access to a sandbox's HTTP server (prints JSON; root)
  bench sdk     measure the Go SDK: create → first command vs the E2B JS SDK, cp vs the raw API (prints JSON; root)
  bench density measure sandboxes per host (idle PSS) and ten concurrent creates vs one (prints JSON; root)
  bench hosts   measure the scheduling decision with 1,000 hosts, and a 3-host cluster of real agents (prints JSON; root for the cluster)
  bench build   measure template builds: a cached rebuild vs a cold one (prints JSON; root)
                (bench -cpuprofile FILE NAME …: a CPU profile of the bench's process)
  image         build, list and remove template images (capsule image help)
  version       print versions

client commands (through the API; capsule login first; capsule <command> --help):
  login         save the platform's URL and an API key in a profile
  sandbox       create, list, get, exec, shell, cp, pause, resume, snapshot, timeout, kill
  template      list and remove templates
  keys          create, list and revoke API keys
  host          list, add and remove sandbox hosts (BYOC teams, admins)
  team          create, rename, delete, switch teams; members, invitations, audit log
  admin         every team, user and host, the platform audit log (platform admins)
  completion    shell completion for bash, zsh, fish, powershell
`

func main() {
	// The client commands (cli.Commands: login, sandbox, team, admin…)
	// handle their own signals: Ctrl-C during exec goes to the sandbox.
	if len(os.Args) > 1 && slices.Contains(cli.Commands, os.Args[1]) {
		os.Exit(cli.Main(context.Background(), os.Args[1:], cli.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "capsule:", err)
	}
	os.Exit(exitCode(err))
}

// exitCode is the exit status for run's error: 0, 2 for a usage error, 3
// for an agent whose host the control plane deleted, 1 otherwise.
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.Is(err, agentreg.ErrHostDeleted):
		return exitHostDeleted
	}
	return 1
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "version":
		fmt.Printf("capsule (envd protocol %s)\n", envdapi.Version)
		return nil
	case "agent":
		return runAgent(ctx, args[1:])
	case "serve":
		return runServe(ctx, args[1:])
	case "migrate":
		return runMigrate(ctx, args[1:], os.Stdout)
	case "bench":
		return runBench(ctx, args[1:])
	case "image":
		return runImage(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func runBench(ctx context.Context, args []string) error {
	// Flags of bench itself come before the benchmark's name.
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (the control plane and agent of the in-process benches) to `file`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if len(args) == 0 {
		return errors.New("bench: name a benchmark (envd, vm, api, density, metrics, proxy, sdk, hosts, build)")
	}
	switch args[0] {
	case "envd":
		fs := flag.NewFlagSet("bench envd", flag.ContinueOnError)
		o := bench.EnvdOptions{}
		fs.StringVar(&o.EnvdBin, "envd", siblingBinary("envd"), "envd binary to start")
		fs.IntVar(&o.Runs, "n", 200, "samples per latency figure")
		fs.IntVar(&o.BigFileMiB, "size-mib", 256, "size of the throughput file in MiB")
		fs.StringVar(&o.Dir, "dir", "", "directory for the benchmark files (default: a temporary one)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		res, err := bench.Envd(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "vm":
		fs := flag.NewFlagSet("bench vm", flag.ContinueOnError)
		o := bench.VMOptions{}
		fs.StringVar(&o.EnvdBin, "envd", siblingBinary("envd"), "envd binary for the guest images")
		fs.StringVar(&o.DataDir, "data-dir", "/var/lib/capsule", "data directory (its image store is reused)")
		fs.IntVar(&o.Runs, "n", 5, "samples per figure")
		fs.IntVar(&o.PreparedVMMs, "prepared-vmms", 2, "the host's -prepared-vmms: VMMs kept started per snapshot template and shape (0: none)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		res, err := bench.VM(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "api":
		o, err := parseBenchAPIFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchAPI(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "sdk":
		o, err := parseBenchSDKFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchSDK(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "fork":
		o, err := parseBenchForkFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchFork(ctx, o)
		if err != nil {
			if len(res) > 0 {
				b, _ := json.Marshal(res)
				fmt.Fprintf(os.Stderr, "bench fork: figures before the failure: %s\n", b)
			}
			return err
		}
		return printJSON(res)
	case "metrics":
		o, err := parseBenchMetricsFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchMetrics(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "hosts":
		o, err := parseBenchHostsFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchHosts(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "build":
		o, err := parseBenchBuildFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchBuild(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "density":
		o, err := parseBenchDensityFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchDensity(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	case "proxy":
		o, err := parseBenchProxyFlags(args[1:])
		if err != nil {
			return err
		}
		res, err := benchProxy(ctx, o)
		if err != nil {
			return err
		}
		return printJSON(res)
	}
	return fmt.Errorf("bench: unknown benchmark %q", args[0])
}

// siblingBinary is the path of a binary installed next to this one.
func siblingBinary(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return name
	}
	return filepath.Join(filepath.Dir(exe), name)
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// startCPUProfile profiles this process's CPU into path until the
// returned function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: CPU profile: %v\n", err)
		}
	}, nil
}
