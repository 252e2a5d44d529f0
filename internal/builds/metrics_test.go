package builds

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/telemetry"
)

// TestBuildPrometheusMetrics: the control plane's Prometheus metrics show
// the build queue's depth (read from PostgreSQL at scrape time) and every
// build's duration by its final status (Config.OnEnd).
func TestBuildPrometheusMetrics(t *testing.T) {
	tel := telemetry.NewControlPlane(nil, 0)
	e := newEnv(t, func(c *Config) { c.OnEnd = tel.ObserveBuild })
	tel.RegisterBuildQueue(e.svc.Depth, time.Nanosecond)
	srv := httptest.NewServer(telemetry.Handler(tel.Registry, ""))
	defer srv.Close()
	scrape := func() string {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	e.g.onExec = func(ctx context.Context, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
		if cmd.Cmd == "false" {
			return service.ExecExit{ExitCode: 1}, nil
		}
		return service.ExecExit{}, nil
	}
	ctx := context.Background()
	var ids []Build
	for _, recipe := range []string{"FROM base\nRUN true", "FROM base\nRUN false"} {
		b, err := e.svc.Submit(ctx, e.p, Submit{Template: "app", Recipe: recipe})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b)
	}
	for _, tc := range []struct {
		name  string
		want  []string
		setup func()
	}{
		{"queued", []string{`capsule_build_queue_depth{state="pending"} 2`, `capsule_build_queue_depth{state="running"} 0`,
			"capsule_build_queue_scrape_error 0"}, func() {}},
		{"ended", []string{`capsule_build_queue_depth{state="pending"} 0`, `capsule_build_queue_depth{state="running"} 0`,
			`capsule_build_duration_seconds_count{status="success"} 1`, `capsule_build_duration_seconds_count{status="failed"} 1`},
			func() {
				e.start(t)
				for _, b := range ids {
					e.wait(t, b.ID)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			body := scrape()
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("no %q in the scrape", w)
				}
			}
		})
	}
}
