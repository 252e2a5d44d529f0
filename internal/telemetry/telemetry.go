package telemetry

import (
	"context"
	"crypto/subtle"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// StateCount is the number of sandboxes of a team in a state.
type StateCount struct {
	Team, State string
	N           int64
}

// StateCounter counts the sandboxes by team and state (stopped ones left
// out: they are history).
type StateCounter func(ctx context.Context) ([]StateCount, error)

// ControlPlane holds the control plane's metrics.
type ControlPlane struct {
	// Registry gathers them (and the Go and process collectors); other
	// collectors (an embedded agent's) may be registered on it.
	Registry *prometheus.Registry

	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	ops         *prometheus.HistogramVec
	proxyReqs   *prometheus.CounterVec
	proxyBytes  *prometheus.CounterVec
	stateCounts *stateCollector
	builds      *prometheus.HistogramVec
}

// BuildQueueDepth reads the template build queue's depth: builds pending
// and running, over every replica (builds.Service.Depth).
type BuildQueueDepth func(ctx context.Context) (pending, running int64, err error)

// opsByRoute names the sandbox operations whose latency is a histogram
// of its own, by the route patterns (native API and E2B facade) that
// perform them.
var opsByRoute = map[string]string{
	"POST /v1/sandboxes":                     "create",
	"POST /sandboxes":                        "create",
	"POST /v1/sandboxes/{id}/pause":          "pause",
	"POST /sandboxes/{id}/pause":             "pause",
	"POST /v1/sandboxes/{id}/resume":         "resume",
	"POST /sandboxes/{id}/resume":            "resume",
	"POST /sandboxes/{id}/connect":           "resume",
	"POST /v1/sandboxes/{id}/snapshots":      "snapshot",
	"POST /sandboxes/{id}/snapshots":         "snapshot",
	"POST /v1/sandboxes/{id}/snapshot":       "snapshot",
	"POST /v1/sandboxes/{id}/templates":      "snapshot",
	"DELETE /v1/sandboxes/{id}":              "destroy",
	"DELETE /sandboxes/{id}":                 "destroy",
	"POST /v1/sandboxes/{id}/snapshot-image": "snapshot",
}

// NewControlPlane registers the control plane's metrics; states, when
// not nil, is read at scrape time (cached for cacheFor, default 5 s).
func NewControlPlane(states StateCounter, cacheFor time.Duration) *ControlPlane {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c := &ControlPlane{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "capsule_api_requests_total",
			Help: "API requests by route pattern (never the raw path) and status code."}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "capsule_api_request_duration_seconds",
			Help: "API request latency by route pattern.", Buckets: prometheus.DefBuckets}, []string{"route"}),
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "capsule_sandbox_operation_duration_seconds",
			Help:    "Latency of sandbox create, pause, resume, snapshot and destroy requests (native API and E2B facade) by outcome.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120}}, []string{"op", "outcome"}),
		proxyReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "capsule_proxy_requests_total",
			Help: "Requests through the sandbox traffic proxy by status class."}, []string{"class"}),
		proxyBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "capsule_proxy_bytes_total",
			Help: "Bytes through the sandbox traffic proxy: request bodies in, response bodies out (a hijacked connection counts until it is hijacked)."},
			[]string{"direction"}),
	}
	c.builds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "capsule_build_duration_seconds",
		Help:    "Template builds by final status: from the build's start (its submission when it never started) to its end.",
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600}}, []string{"status"})
	reg.MustRegister(c.requests, c.duration, c.ops, c.proxyReqs, c.proxyBytes, c.builds)
	if states != nil {
		if cacheFor <= 0 {
			cacheFor = 5 * time.Second
		}
		c.stateCounts = &stateCollector{count: states, cacheFor: cacheFor,
			desc: prometheus.NewDesc("capsule_sandboxes", "Sandboxes by state and team, read from the sandboxes table at scrape time (stopped ones left out).",
				[]string{"state", "team"}, nil),
			errDesc: prometheus.NewDesc("capsule_sandboxes_scrape_error", "1 when the last read of the sandboxes table failed.", nil, nil)}
		reg.MustRegister(c.stateCounts)
	}
	return c
}

// ObserveBuild records a template build that ended with status after
// took (builds.Config.OnEnd).
func (c *ControlPlane) ObserveBuild(status string, took time.Duration) {
	c.builds.WithLabelValues(status).Observe(took.Seconds())
}

// RegisterBuildQueue exports the build queue's depth, read by depth at
// scrape time (cached for cacheFor, default 5 s), as
// capsule_build_queue_depth{state="pending"|"running"}.
func (c *ControlPlane) RegisterBuildQueue(depth BuildQueueDepth, cacheFor time.Duration) {
	if cacheFor <= 0 {
		cacheFor = 5 * time.Second
	}
	c.Registry.MustRegister(&queueCollector{depth: depth, cacheFor: cacheFor,
		desc: prometheus.NewDesc("capsule_build_queue_depth", "Template builds pending and running (every replica), read from the database at scrape time.",
			[]string{"state"}, nil),
		errDesc: prometheus.NewDesc("capsule_build_queue_scrape_error", "1 when the last read of the build queue failed.", nil, nil)})
}

// queueCollector reads the build queue's depth at scrape time.
type queueCollector struct {
	depth         BuildQueueDepth
	cacheFor      time.Duration
	desc, errDesc *prometheus.Desc

	mu               sync.Mutex
	at               time.Time
	pending, running int64
	failed           bool
}

func (q *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- q.desc; ch <- q.errDesc }

func (q *queueCollector) Collect(ch chan<- prometheus.Metric) {
	q.mu.Lock()
	if time.Since(q.at) > q.cacheFor {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p, r, err := q.depth(ctx)
		cancel()
		q.at, q.failed = time.Now(), err != nil
		if err == nil {
			q.pending, q.running = p, r
		}
	}
	p, r, failed := q.pending, q.running, q.failed
	q.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, float64(p), "pending")
	ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, float64(r), "running")
	v := 0.0
	if failed {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(q.errDesc, prometheus.GaugeValue, v)
}

// Route instruments the handler of a route registered with pattern
// ("METHOD /path/{param}").
func (c *ControlPlane) Route(pattern string, h http.Handler) http.Handler {
	h = promhttp.InstrumentHandlerDuration(c.duration.MustCurryWith(prometheus.Labels{"route": pattern}), h)
	h = promhttp.InstrumentHandlerCounter(c.requests.MustCurryWith(prometheus.Labels{"route": pattern}), h)
	op, ok := opsByRoute[pattern]
	if !ok {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		outcome := "ok"
		if sw.code >= 400 {
			outcome = "error"
		}
		c.ops.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
	})
}

// Proxy instruments the sandbox traffic proxy.
func (c *ControlPlane) Proxy(h http.Handler) http.Handler {
	in, out := c.proxyBytes.WithLabelValues("in"), c.proxyBytes.WithLabelValues("out")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countingBody{ReadCloser: r.Body, c: in}
		}
		cw := &countingWriter{statusWriter: statusWriter{ResponseWriter: w, code: http.StatusOK}, c: out}
		h.ServeHTTP(cw, r)
		c.proxyReqs.WithLabelValues(strconv.Itoa(cw.code/100) + "xx").Inc()
	})
}

// statusWriter records the status code; it passes Flush, Hijack and the
// rest through Unwrap (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes through (streams, server-sent events).
func (w *statusWriter) Flush() {
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

type countingWriter struct {
	statusWriter
	c prometheus.Counter
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.statusWriter.Write(b)
	w.c.Add(float64(n))
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.Add(float64(n))
	return n, err
}

// stateCollector reads the sandboxes by state and team at scrape time.
type stateCollector struct {
	count         StateCounter
	cacheFor      time.Duration
	desc, errDesc *prometheus.Desc

	mu     sync.Mutex
	at     time.Time
	cached []StateCount
	failed bool
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc; ch <- s.errDesc }

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	if time.Since(s.at) > s.cacheFor {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		counts, err := s.count(ctx)
		cancel()
		s.at, s.failed = time.Now(), err != nil
		if err == nil {
			s.cached = counts
		}
	}
	counts, failed := s.cached, s.failed
	s.mu.Unlock()
	for _, c := range counts {
		ch <- prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, float64(c.N), c.State, c.Team)
	}
	v := 0.0
	if failed {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(s.errDesc, prometheus.GaugeValue, v)
}

// Handler serves g's metrics in the Prometheus exposition format; with a
// token, only to requests bearing it (Authorization: Bearer TOKEN,
// compared in constant time), others get 401.
func Handler(g prometheus.Gatherer, token string) http.Handler {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	if token == "" {
		return h
	}
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "metrics: a valid scrape token is required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// MinTokenLength is the shortest scrape token accepted.
const MinTokenLength = 16
