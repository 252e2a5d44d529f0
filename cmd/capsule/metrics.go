package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/telemetry"
)

// defaultMetricsListen is the private listener of /metrics.
const defaultMetricsListen = "127.0.0.1:9090"

// metricsOptions are the Prometheus endpoint's settings, shared by
// capsule serve and capsule agent.
type metricsOptions struct {
	// metricsListen serves /metrics alone (empty: no such listener).
	metricsListen string
	// metricsToken, when set, is required of every scrape (Bearer) and
	// also serves /metrics on capsule serve's API listener.
	metricsToken string
	// metricsListenSet: the address was configured (a failure to listen
	// on it is fatal; on the default, a warning).
	metricsListenSet bool
}

func (m *metricsOptions) register(fs *flag.FlagSet, envPrefix string) {
	fs.StringVar(&m.metricsListen, "metrics-listen", defaultMetricsListen,
		"private address of the Prometheus /metrics endpoint (empty: none) ["+envPrefix+"METRICS_LISTEN]")
	fs.StringVar(&m.metricsToken, "metrics-token", "",
		"scrape token: when set, every /metrics scrape must send it as a bearer token, and capsule serve also serves /metrics on its API listener (at least 16 characters) ["+envPrefix+"METRICS_TOKEN]")
}

// check validates the options once the flags are read.
func (m *metricsOptions) check(fs *flag.FlagSet) error {
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "metrics-listen" {
			m.metricsListenSet = true
		}
	})
	if m.metricsToken != "" && len(m.metricsToken) < telemetry.MinTokenLength {
		return fmt.Errorf("-metrics-token: at least %d characters", telemetry.MinTokenLength)
	}
	return nil
}

// serveMetrics serves h on the private metrics listener, if any, until
// the returned stop. On the default address a failure to listen (another
// process has it) is logged, not fatal.
func (m *metricsOptions) serveMetrics(ctx context.Context, h http.Handler, log *slog.Logger) (stop func(), err error) {
	if m.metricsListen == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", m.metricsListen)
	if err != nil {
		if !m.metricsListenSet {
			log.WarnContext(ctx, "no private /metrics listener: the default address is taken", "addr", m.metricsListen, "err", err)
			return func() {}, nil
		}
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener", "err", err)
		}
	}()
	log.InfoContext(ctx, "Prometheus metrics listening", "addr", ln.Addr().String(), "token", m.metricsToken != "")
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}

// withMetrics serves GET /metrics with m, the rest with h.
func withMetrics(h, m http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			m.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}
