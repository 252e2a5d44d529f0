package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
)

// buildBenchOptions configures `capsule bench build`.
type buildBenchOptions struct {
	benchStackOptions
	builds  int
	createN int
}

func parseBenchBuildFlags(args []string) (buildBenchOptions, error) {
	fs := flag.NewFlagSet("bench build", flag.ContinueOnError)
	o := buildBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.IntVar(&o.builds, "n", 3, "builds of the 5-step recipe")
	fs.IntVar(&o.createN, "create-n", 10, "creates from each template (the built snapshot template and base)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.builds < 1 || o.createN < 1 {
		return o, errors.New("bench build: -n and -create-n must be positive")
	}
	o.base = true
	return o, nil
}

// benchRecipe is the 5-step recipe of `capsule bench build`: a snapshot
// template of base with a server running.
const benchRecipe = `FROM base
ENV APP_MODE=bench
WORKDIR /srv/bench
RUN echo '<h1>bench</h1>' > index.html
USER user
RUN python3 -c 'print("step five")'
START python3 -m http.server 8000 --bind 127.0.0.1
HEALTHCHECK --interval=1s --timeout=5s --start-period=30s python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/")'
`

// benchBuild measures template builds through the API of a control plane
// running in this process: the duration of the 5-step recipe (queued to
// success), first built and rebuilt unchanged (the layer cache), and the
// latency of POST /v1/sandboxes from the built snapshot template against
// from base (their ratio: the issue wants ≤ 1.2).
func benchBuild(ctx context.Context, o buildBenchOptions) (map[string]any, error) {
	stack, b, err := startAPIBench(ctx, "build", o.benchStackOptions)
	if err != nil {
		return nil, err
	}
	defer stack.close()
	// Each round builds a recipe of its own (its ENV differs: no cached
	// layer), then rebuilds it unchanged (its 5 steps come from the layer
	// cache; START, the healthcheck and the snapshot still run).
	var durations, cached []time.Duration
	for i := range o.builds {
		recipe := strings.Replace(benchRecipe, "APP_MODE=bench", fmt.Sprintf("APP_MODE=bench-%d-%d", i, time.Now().UnixNano()), 1)
		for _, into := range []*[]time.Duration{&durations, &cached} {
			d, err := b.build(ctx, "bench-built", recipe)
			if err != nil {
				return nil, fmt.Errorf("bench build: build %d: %w", i+1, err)
			}
			*into = append(*into, d)
		}
	}
	out := map[string]any{"build_5_steps": bench.Summarize(durations), "rebuild_5_steps_cached": bench.Summarize(cached)}
	createFrom := func(tpl string) (bench.Timing, error) {
		var d []time.Duration
		for range o.createN + 1 {
			sb, total, _, err := b.create(ctx, tpl)
			if err != nil {
				return bench.Timing{}, err
			}
			if _, _, err := b.do(ctx, "DELETE", "/v1/sandboxes/"+sb.ID, nil); err != nil {
				return bench.Timing{}, err
			}
			d = append(d, total)
		}
		return bench.Summarize(d[1:]), nil // the first warms the template up
	}
	built, err := createFrom("bench-built")
	if err != nil {
		return nil, fmt.Errorf("bench build: create from the built template: %w", err)
	}
	base, err := createFrom("base")
	if err != nil {
		return nil, fmt.Errorf("bench build: create from base: %w", err)
	}
	out["create_from_built_template"] = built
	out["create_from_base"] = base
	if base.P50 > 0 {
		out["create_built_vs_base_ratio"] = bench.Round3(built.P50 / base.P50)
	}
	return out, nil
}

// build submits a recipe for template name and waits for its end.
func (b *apiBench) build(ctx context.Context, name, recipe string) (time.Duration, error) {
	body, _ := json.Marshal(map[string]any{"recipe": recipe, "vcpus": 1, "memory_mb": 512})
	t0 := time.Now()
	resp, data, err := b.do(ctx, "POST", "/v1/templates/"+name+"/builds", body)
	if err != nil {
		return 0, err
	}
	var st struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if resp.StatusCode != 202 || json.Unmarshal(data, &st) != nil {
		return 0, fmt.Errorf("POST build: %d: %.300s", resp.StatusCode, data)
	}
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, data, err := b.do(ctx, "GET", "/v1/templates/"+name+"/builds/"+st.ID, nil)
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != 200 || json.Unmarshal(data, &st) != nil {
			return 0, fmt.Errorf("GET build: %d: %.300s", resp.StatusCode, data)
		}
		switch st.Status {
		case "success":
			return time.Since(t0), nil
		case "failed", "cancelled":
			return 0, fmt.Errorf("the build ended %s: %s", st.Status, st.Error)
		}
	}
}
