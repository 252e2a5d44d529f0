package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime"

	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/controlplane"
	"github.com/capsulehq/capsule/internal/service"
)

// embeddedAgent is capsule serve's host agent, registered with the control
// plane of the same process as the regular host service.LocalHost.
type embeddedAgent struct {
	served *servedAgent
	reg    *agentreg.Client
	stop   context.CancelFunc
	beats  chan error
}

// startEmbeddedAgent registers the host stack hs with cp exactly as a
// remote agent does (`capsule agent --control-plane --register`): the
// control plane prepares the host record for the agent's loopback address
// (creating it, or adopting the "local" row of an older data directory)
// and gives a one-time token; the agent registers with it over the host
// API (in process: the API's handler, no socket), receives its server
// certificate for that address and serves hostagent.v1 over mutual TLS;
// its heartbeats run until stop. A restart reuses the credentials in
// DATA-DIR/agent.
func startEmbeddedAgent(ctx context.Context, o *serveOptions, hs *hostStack, cp *controlplane.ControlPlane, log *slog.Logger) (*embeddedAgent, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("serve: embedded agent: %w", err)
	}
	addr := ln.Addr().String()
	total, _, err := agentreg.DiskMB(o.dataDir)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("serve: %w", err)
	}
	cl, err := agentreg.Open(agentreg.Config{
		ControlPlane: "http://127.0.0.1", HTTPClient: &http.Client{Transport: handlerTransport{cp.APIHandler()}},
		Dir: filepath.Join(o.dataDir, "agent"), Host: agentreg.ManagerHost{Manager: hs.mgr, DataDir: o.dataDir, DiskHeadroomMB: o.diskHeadroomMB},
		Facts: agentreg.Facts{Arch: runtime.GOARCH, VCPUs: int32(runtime.NumCPU()), MemoryMB: int64(hostMemoryMB()),
			DiskMB: total, Address: addr},
		Version: agent.BinaryVersion(), Log: log,
	})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("serve: embedded agent: %w", err)
	}
	token, err := cp.Hosts.EnsureEmbedded(ctx, service.LocalHost, addr, cl.HostID())
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("serve: embedded host: %w", err)
	}
	if token != "" {
		if err := cl.Register(ctx, token); err != nil {
			ln.Close()
			return nil, fmt.Errorf("serve: register the embedded agent: %w", err)
		}
	}
	a, err := agent.New(agent.Config{Manager: hs.mgr, ClientCertAuth: true, Images: hs.images, Driver: hs.driver,
		Capacity: o.capacity, Log: log})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("serve: embedded agent: %w", err)
	}
	sa := serveAgentOn(ln, a, cl.TLSConfig(), log)
	// One beat now: the host is online with fresh resources before the
	// control plane's first scheduling or monitor pass.
	if _, err := cl.Beat(ctx); err != nil {
		_ = sa.stop(log)
		return nil, fmt.Errorf("serve: the embedded agent's first heartbeat: %w", err)
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	e := &embeddedAgent{served: sa, reg: cl, stop: stop, beats: make(chan error, 1)}
	go func() { e.beats <- cl.Run(rctx) }()
	log.InfoContext(ctx, "embedded agent registered and listening (mTLS)", "host", cl.HostID(), "url", "https://"+addr,
		"accel", hs.driver.Accel())
	return e, nil
}

// close stops the heartbeats and the agent's server.
func (e *embeddedAgent) close(log *slog.Logger) {
	e.stop()
	if err := <-e.beats; err != nil && !errors.Is(err, context.Canceled) {
		log.Error("embedded agent heartbeats", "err", err)
	}
	if err := e.served.stop(log); err != nil {
		log.Error("embedded agent serve", "err", err)
	}
}

// handlerTransport is an http.RoundTripper that serves each request with
// an http.Handler in process: the embedded agent's calls to the host API
// reach the API's handler without a socket.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.RemoteAddr = "127.0.0.1:0"
	r.RequestURI = req.URL.RequestURI()
	if r.Body == nil {
		r.Body = http.NoBody
	}
	w := &bufferedResponse{header: http.Header{}}
	t.h.ServeHTTP(w, r)
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return &http.Response{StatusCode: w.status, Status: http.StatusText(w.status), Header: w.header,
		Body: io.NopCloser(bytes.NewReader(w.body.Bytes())), ContentLength: int64(w.body.Len()),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: req}, nil
}

// bufferedResponse is an http.ResponseWriter that keeps what is written.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *bufferedResponse) Header() http.Header { return w.header }

func (w *bufferedResponse) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *bufferedResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}
