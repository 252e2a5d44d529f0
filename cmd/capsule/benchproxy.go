package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/proxy"
)

// proxyBenchOptions configures `capsule bench proxy`.
type proxyBenchOptions struct {
	benchStackOptions
	// workers send requests concurrently for each round of duration;
	// rounds alternate direct and proxied.
	workers  int
	duration time.Duration
	rounds   int
	// sdkDir holds the E2B SDK (node_modules) and fullstack/bench-create.mjs
	// ("": the SDK figure is not measured); sdkN is its number of samples.
	sdkDir string
	sdkN   int
	// fileMiB is the size of the transfer figures' file (0: not measured);
	// fileRounds their number of rounds.
	fileMiB, fileRounds int
}

func parseBenchProxyFlags(args []string) (proxyBenchOptions, error) {
	fs := flag.NewFlagSet("bench proxy", flag.ContinueOnError)
	o := proxyBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.IntVar(&o.workers, "c", 8, "concurrent clients")
	fs.DurationVar(&o.duration, "d", 4*time.Second, "duration of each round")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds per path (interleaved; the median round counts)")
	fs.StringVar(&o.sdkDir, "sdk", "tests/e2b-sdk", `directory of the E2B JS SDK suite (node_modules, fullstack/bench-create.mjs) for the SDK create → first command figure ("": skip it)`)
	fs.IntVar(&o.sdkN, "sdk-n", 10, "SDK create → first command samples")
	fs.IntVar(&o.fileMiB, "file-mib", 64, "size in MiB of the file moved in and out of the sandbox for the transfer figures (0: skip them)")
	fs.IntVar(&o.fileRounds, "file-rounds", 3, "rounds of the transfer figures (the median counts)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.workers < 1 || o.duration <= 0 || o.rounds < 1 || o.fileMiB < 0 || o.fileRounds < 1 {
		return o, errors.New("bench proxy: -c, -d, -rounds and -file-rounds must be positive, -file-mib not negative")
	}
	return o, nil
}

// roundResult is one load round against one path.
type roundResult struct {
	rps       float64
	latencies []time.Duration
}

// benchProxy measures the traffic proxy: requests per second and latency
// of GET /health on a sandbox's envd (an HTTP server in the guest, with
// keep-alive) through the proxy (the E2B routing headers on the sandbox
// listener) and straight at the guest's address from the host, in
// interleaved rounds of o.workers concurrent clients; then file transfers
// in and out of the sandbox straight, through the proxy and through the
// /v1 files API (fileTransfers).
func benchProxy(ctx context.Context, o proxyBenchOptions) (map[string]any, error) {
	so := o.benchStackOptions
	so.base = o.sdkDir != ""
	stack, b, err := startAPIBench(ctx, "proxy", so)
	if err != nil {
		return nil, err
	}
	defer stack.close()
	resp, data, err := b.do(ctx, "POST", "/v1/sandboxes", []byte(`{"template":"minimal","memory_mb":256,"allow_public_traffic":true}`))
	if err != nil {
		return nil, err
	}
	var sb struct {
		ID        string `json:"id"`
		EnvdURL   string `json:"envd_url"`
		EnvdToken string `json:"envd_access_token"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(data, &sb) != nil || sb.EnvdURL == "" {
		return nil, fmt.Errorf("POST /v1/sandboxes: %d: %.300s", resp.StatusCode, data)
	}
	defer func() { _ = b.destroy(context.WithoutCancel(ctx), sb.ID) }()

	direct := func() (*http.Request, error) {
		return http.NewRequestWithContext(ctx, "GET", sb.EnvdURL+"/health", nil)
	}
	proxied := func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", stack.sandboxURL+"/health", nil)
		if err == nil {
			req.Header.Set(proxy.HeaderSandboxID, sb.ID)
			req.Header.Set(proxy.HeaderSandboxPort, "49983")
		}
		return req, err
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: o.workers * 2, DisableCompression: true}}
	// Warm both paths up.
	for _, mk := range []func() (*http.Request, error){direct, proxied} {
		if _, err := loadRound(ctx, client, mk, o.workers, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
	var directs, proxies []roundResult
	for range o.rounds {
		d, err := loadRound(ctx, client, direct, o.workers, o.duration)
		if err != nil {
			return nil, fmt.Errorf("direct: %w", err)
		}
		p, err := loadRound(ctx, client, proxied, o.workers, o.duration)
		if err != nil {
			return nil, fmt.Errorf("proxied: %w", err)
		}
		directs, proxies = append(directs, d), append(proxies, p)
	}
	dm, pm := medianRound(directs), medianRound(proxies)
	out := map[string]any{
		"proxy_rps":              bench.Round3(pm.rps),
		"direct_rps":             bench.Round3(dm.rps),
		"proxy_throughput_ratio": bench.Round3(pm.rps / dm.rps),
		"proxy_latency":          bench.Summarize(pm.latencies),
		"direct_latency":         bench.Summarize(dm.latencies),
		"concurrency":            o.workers,
	}
	if o.fileMiB > 0 {
		tr, err := fileTransfers(ctx, stack, b, sb.ID, sb.EnvdURL, sb.EnvdToken, o.fileMiB, o.fileRounds)
		if err != nil {
			return out, fmt.Errorf("transfers: %w", err)
		}
		maps.Copy(out, tr)
	}
	if o.sdkDir != "" {
		t, err := sdkCreateToFirstCommand(ctx, o, stack)
		if err != nil {
			return out, fmt.Errorf("SDK create → first command: %w", err)
		}
		out["sdk_create_to_first_command"] = t
	}
	return out, nil
}

// sdkCreateToFirstCommand runs fullstack/bench-create.mjs: the unmodified
// E2B SDK creating a `base` sandbox and running its first command, against
// this process' server.
func sdkCreateToFirstCommand(ctx context.Context, o proxyBenchOptions, stack *benchStack) (bench.Timing, error) {
	script, err := filepath.Abs(filepath.Join(o.sdkDir, "fullstack", "bench-create.mjs"))
	if err != nil {
		return bench.Timing{}, err
	}
	if _, err := os.Stat(filepath.Join(o.sdkDir, "node_modules", "e2b")); err != nil {
		return bench.Timing{}, fmt.Errorf("the E2B SDK is not installed in %s (make deps, or -sdk \"\" to skip): %w", o.sdkDir, err)
	}
	cmd := exec.CommandContext(ctx, "node", script, strconv.Itoa(o.sdkN), "base")
	cmd.Dir = filepath.Dir(script)
	cmd.Env = append(os.Environ(), "E2B_API_URL="+stack.url, "E2B_SANDBOX_URL="+stack.sandboxURL,
		"E2B_DOMAIN="+stack.domain, "E2B_API_KEY="+stack.key, "NODE_NO_WARNINGS=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return bench.Timing{}, fmt.Errorf("%w: %s", err, stderr.String())
	}
	var res struct {
		Samples []float64 `json:"samples_ms"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil || len(res.Samples) == 0 {
		return bench.Timing{}, fmt.Errorf("bench-create.mjs printed %q", out)
	}
	d := make([]time.Duration, len(res.Samples))
	for i, ms := range res.Samples {
		d[i] = time.Duration(ms * float64(time.Millisecond))
	}
	return bench.Summarize(d), nil
}

// loadRound sends requests from workers clients for d and counts the
// successful ones; any failure ends the round with an error.
func loadRound(ctx context.Context, client *http.Client, mk func() (*http.Request, error), workers int, d time.Duration) (roundResult, error) {
	var (
		mu    sync.Mutex
		lat   []time.Duration
		first error
		wg    sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) && ctx.Err() == nil {
				req, err := mk()
				if err == nil {
					t0 := time.Now()
					var resp *http.Response
					if resp, err = client.Do(req); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode >= 300 {
							err = fmt.Errorf("status %d", resp.StatusCode)
						}
						mine = append(mine, time.Since(t0))
					}
				}
				if err != nil {
					mu.Lock()
					first = errors.Join(first, err)
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if first != nil {
		return roundResult{}, first
	}
	return roundResult{rps: float64(len(lat)) / time.Since(start).Seconds(), latencies: lat}, nil
}

func medianRound(rs []roundResult) roundResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b roundResult) int {
		switch {
		case a.rps < b.rps:
			return -1
		case a.rps > b.rps:
			return 1
		}
		return 0
	})
	return s[len(s)/2]
}
