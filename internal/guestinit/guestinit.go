package guestinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// defaultPath is PATH for envd and its children when the kernel gave init
// none (it gives only HOME=/ and TERM=linux).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// netDeviceWait bounds the wait for the ip= device to appear.
const netDeviceWait = 5 * time.Second

// System is the guest that envd runs as PID 1.
type System struct {
	// Boot is the parsed kernel command line (never nil after Setup).
	Boot *BootParams
	// Reaper reaps orphans. Pass it to the process manager as its child
	// tracker (envd.Config.Children) so that every child envd starts is
	// left to os/exec's Wait.
	Reaper *Reaper

	stopReaper context.CancelFunc
}

// Param returns the capsule.<key> kernel parameter ("" when absent or
// when s is nil): Param("sandbox_id") is capsule.sandbox_id.
func (s *System) Param(key string) string {
	if s == nil || s.Boot == nil {
		return ""
	}
	return s.Boot.Capsule[key]
}

// Setup turns this process into the guest's init: it mounts the base
// filesystems, starts the reaper, configures the network, hostname and
// resolver from the kernel command line. Every step runs regardless of the
// others' failures; the returned error joins all failures, and the System
// is usable (non-nil) even then. Call it only as PID 1.
func Setup(ctx context.Context, log *slog.Logger) (*System, error) {
	return setup(ctx, log, setupEnv{
		root:        "/",
		mount:       sysMount,
		cmdline:     func() ([]byte, error) { return os.ReadFile("/proc/cmdline") },
		network:     configureHostNetwork,
		sethostname: func(h string) error { return unix.Sethostname([]byte(h)) },
	})
}

// setupEnv is everything Setup does to the system, so that tests can run
// its sequence against a temporary root, fake mounts and a private network
// namespace.
type setupEnv struct {
	root        string
	mount       func(mountSpec, string) error
	cmdline     func() ([]byte, error)
	network     func(context.Context, *slog.Logger, *IPConfig) error
	sethostname func(string) error
}

func setup(ctx context.Context, log *slog.Logger, env setupEnv) (*System, error) {
	if log == nil {
		log = slog.Default()
	}
	var errs []error
	m := newMounter(log, env.root)
	m.mount = env.mount
	if err := m.mountAll(); err != nil {
		errs = append(errs, err)
	}
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", defaultPath)
	}

	s := &System{Reaper: NewReaper(log), Boot: &BootParams{Args: map[string]string{}, Capsule: map[string]string{}}}
	rctx, cancel := context.WithCancel(context.Background())
	s.stopReaper = cancel
	go s.Reaper.Run(rctx)

	cmdline, err := env.cmdline()
	if err != nil {
		errs = append(errs, fmt.Errorf("read kernel command line: %w", err))
	} else {
		bp, err := ParseCmdline(string(cmdline))
		if err != nil {
			errs = append(errs, err)
		}
		s.Boot = bp
	}

	if err := env.network(ctx, log, s.Boot.IP); err != nil {
		errs = append(errs, err)
	}
	id := identity{
		etc:         filepath.Join(env.root, "etc"),
		hostname:    s.Boot.Hostname,
		dns:         s.Boot.DNS,
		sethostname: env.sethostname,
	}
	if s.Boot.IP != nil {
		id.addr = s.Boot.IP.Client.Addr()
		if len(id.dns) == 0 {
			id.dns = s.Boot.IP.DNS
		}
	}
	if err := id.apply(); err != nil {
		errs = append(errs, err)
	}
	err = errors.Join(errs...)
	if err == nil {
		log.Info("guest initialized", "mounted", len(m.done), "hostname", s.Boot.Hostname)
	}
	return s, err
}

// configureHostNetwork applies cfg in this process's network namespace.
func configureHostNetwork(ctx context.Context, log *slog.Logger, cfg *IPConfig) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return ConfigureNetwork(ctx, log, h, cfg, netDeviceWait)
}

// Shutdown stops the guest: SIGTERM to every process, a grace period,
// SIGKILL to the rest, sync, unmount everything (reverse order, lazily
// where busy), remount / read-only and power off. As PID 1 it does not
// return. Outside PID 1 (a test, envd run by hand) it only stops the
// reaper and returns: it never signals other processes or powers off.
func (s *System) Shutdown(log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	if s == nil {
		return
	}
	if s.stopReaper != nil {
		s.stopReaper()
	}
	ops, err := newInitOps(log, s.Reaper)
	if err != nil {
		log.Warn("guest shutdown skipped", "err", err)
		return
	}
	err = shutdown(log, ops)
	// Still here: power-off failed. PID 1 must not exit (the kernel would
	// panic), so park forever.
	log.Error("power off failed; halting", "err", err)
	for {
		time.Sleep(time.Hour)
	}
}
