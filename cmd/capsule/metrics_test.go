package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/capsulehq/capsule/internal/telemetry"
)

func TestMetricsFlags(t *testing.T) {
	const token = "0123456789abcdef"
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		listen    string
		token     string
		listenSet bool
		wantErr   bool
	}{
		{name: "defaults", listen: defaultMetricsListen},
		{name: "flags", args: []string{"-metrics-listen", "127.0.0.1:9191", "-metrics-token", token}, listen: "127.0.0.1:9191", token: token, listenSet: true},
		{name: "environment", env: map[string]string{"CAPSULE_METRICS_LISTEN": "", "CAPSULE_METRICS_TOKEN": token}, listen: defaultMetricsListen, token: token},
		{name: "no private listener", args: []string{"-metrics-listen", ""}, listen: "", listenSet: true},
		{name: "a short token is refused", args: []string{"-metrics-token", "short"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range []string{"serve", "agent"} {
				getenv := func(k string) string { return tc.env[k] }
				var m metricsOptions
				var err error
				if cmd == "serve" {
					var o *serveOptions
					if o, err = parseServeFlags(tc.args, getenv, ""); err == nil {
						m = o.metricsOptions
					}
				} else {
					agentEnvKeys := map[string]string{}
					for k, v := range tc.env {
						agentEnvKeys["CAPSULE_AGENT_"+k[len("CAPSULE_"):]] = v
					}
					var o *agentOptions
					if o, err = parseAgentFlags(tc.args, func(k string) string { return agentEnvKeys[k] }); err == nil {
						m = o.metricsOptions
					}
				}
				if (err != nil) != tc.wantErr {
					t.Fatalf("%s: err = %v, want error %v", cmd, err, tc.wantErr)
				}
				if err == nil && (m.metricsListen != tc.listen || m.metricsToken != tc.token || m.metricsListenSet != tc.listenSet) {
					t.Errorf("%s: %+v", cmd, m)
				}
			}
		})
	}
}

// TestWithMetrics: the API listener serves /metrics (with the token) and
// everything else as before.
func TestWithMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	const token = "0123456789abcdef-token"
	srv := httptest.NewServer(withMetrics(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "api")
	}), telemetry.Handler(reg, token)))
	defer srv.Close()
	get := func(path, tok string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name, path, token string
		code              int
		body              func(string) bool
	}{
		{"scrape without the token", "/metrics", "", 401, nil},
		{"scrape with a wrong token", "/metrics", "nope-nope-nope-nope", 401, nil},
		{"scrape with the token", "/metrics", token, 200, func(b string) bool { return len(b) > 0 && b != "api" }},
		{"the API is untouched", "/v1/anything", "", 200, func(b string) bool { return b == "api" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.path, tc.token)
			if code != tc.code || (tc.body != nil && !tc.body(body)) {
				t.Errorf("%d %.100q", code, body)
			}
		})
	}
}
