// Command envd is the agent inside every Capsule sandbox. It speaks E2B's
// envd protocol on port 49983. Started as PID 1 of a guest it also acts as
// the init system (package guestinit).
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/capsulehq/capsule/internal/envd"
	"github.com/capsulehq/capsule/internal/guestinit"
	"github.com/capsulehq/capsule/internal/portfwd"
)

// guestinit.Reaper is the process manager's child tracker in a guest.
var _ envd.ChildTracker = (*guestinit.Reaper)(nil)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "envd:", err)
		os.Exit(1)
	}
}

func run() error {
	// As PID 1 the kernel passes unrecognised command-line words as
	// arguments; exiting on them would panic the kernel, so they are only
	// logged there.
	fs := flag.NewFlagSet("envd", flag.ContinueOnError)
	port := fs.Int("port", envd.DefaultPort, "TCP port to listen on")
	addr := fs.String("addr", "", "address to listen on (default all interfaces)")
	user := fs.String("user", "", "default user until POST /init sets one (default root)")
	forward := fs.Bool("forward-loopback", true, "in a guest: make servers that listen on loopback only reachable on the guest's external address (package portfwd)")
	notInSandbox := fs.Bool("isnotfc", false, "running outside a sandbox VM (E2B's flag, e.g. for the SDKs' debug mode): E2B_SANDBOX=false")
	version := fs.Bool("version", false, "print the protocol version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if os.Getpid() != 1 {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
		slog.Error("ignoring bad arguments", "args", os.Args[1:], "err", err)
	}
	if *version {
		fmt.Println(envd.Version)
		return nil
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	guest := os.Getpid() == 1
	if guest && guestinit.InInitramfs() {
		// First stage: mount the real root and exec its envd (as PID 1).
		err := guestinit.SwitchRoot(log, guestinit.SwitchRootConfig{})
		// Only reached on failure: serve from where we are, so that the
		// host can at least reach the guest.
		log.Error("switch root failed", "err", err)
	}
	var sys *guestinit.System
	if guest {
		var err error
		if sys, err = guestinit.Setup(ctx, log); err != nil {
			// Keep going: a half-configured guest that still answers is
			// debuggable; one that panics as PID 1 is not.
			log.Error("guest setup incomplete", "err", err)
		}
	}

	cfg := envd.Config{
		Logger:      log,
		DefaultUser: *user,
		Guest:       guest,
		// capsule.sandbox_id= / capsule.template_id= on the kernel command
		// line win over the environment.
		SandboxID:    cmp.Or(sys.Param("sandbox_id"), os.Getenv("E2B_SANDBOX_ID")),
		TemplateID:   cmp.Or(sys.Param("template_id"), os.Getenv("E2B_TEMPLATE_ID")),
		NotInSandbox: *notInSandbox,
		// E2B's place for the sandbox metadata files processes may read.
		RunDir: "/run/e2b",
	}
	if sys != nil {
		// As PID 1 envd reaps orphans; its own children stay with os/exec.
		cfg.Children = sys.Reaper
	}
	srv := envd.New(cfg)
	hs := srv.NewHTTPServer(net.JoinHostPort(*addr, strconv.Itoa(*port)))
	ln, err := net.Listen("tcp", hs.Addr)
	if err != nil {
		return err
	}
	log.Info("envd listening", "addr", ln.Addr().String(), "version", envd.Version, "init", guest)

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	if guest && *forward && !*notInSandbox {
		fwd := portfwd.New(portfwd.Config{Exclude: []uint16{uint16(*port)}, Log: log})
		go func() { _ = fwd.Run(ctx) }()
	}
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	case <-ctx.Done():
		log.Info("envd shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Processes and watchers first: their streams end, so the HTTP server
	// has no long-lived request left to wait for.
	srv.Close()
	if err := hs.Shutdown(sctx); err != nil {
		_ = hs.Close()
	}
	if sys != nil {
		sys.Shutdown(log) // does not return
	}
	return nil
}
