package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// sdkBenchOptions configures `capsule bench sdk`.
type sdkBenchOptions struct {
	benchStackOptions
	// n is the number of create → first command samples of each SDK.
	n int
	// sizeMiB is the size of the copied file; rounds the number of
	// interleaved SDK/raw rounds of each direction (the median counts).
	sizeMiB int
	rounds  int
	// sdkDir holds the E2B JS SDK ("": its figure is not measured).
	sdkDir string
}

func parseBenchSDKFlags(args []string) (sdkBenchOptions, error) {
	fs := flag.NewFlagSet("bench sdk", flag.ContinueOnError)
	o := sdkBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.IntVar(&o.n, "n", 10, "create → first command samples per SDK")
	fs.IntVar(&o.sizeMiB, "size-mib", 256, "size of the copied file in MiB")
	fs.IntVar(&o.rounds, "rounds", 3, "interleaved rounds of each copy (the median counts)")
	fs.StringVar(&o.sdkDir, "sdk", "tests/e2b-sdk", `directory of the E2B JS SDK suite (node_modules, fullstack/bench-create.mjs) ("": skip the JS figure)`)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.n < 1 || o.sizeMiB < 1 || o.rounds < 1 {
		return o, errors.New("bench sdk: -n, -size-mib and -rounds must be positive")
	}
	return o, nil
}

// benchSDK measures the Go SDK against the platform in this process: create
// → first command (with the E2B JS SDK's same path for comparison), and
// copying a file up and down against the raw files API with the same
// HTTP client settings.
func benchSDK(ctx context.Context, o sdkBenchOptions) (map[string]any, error) {
	so := o.benchStackOptions
	so.base = true
	// Its own network pool (reserved in internal/hosttest): bench sdk may
	// run beside another bench of the stack.
	so.net = nsSlotNet{"cbs", netip.MustParsePrefix("198.18.246.0/24"), netip.MustParsePrefix("198.18.247.0/24")}
	stack, _, err := startAPIBench(ctx, "sdk", so)
	if err != nil {
		return nil, err
	}
	defer stack.close()
	c, err := capsule.New(stack.url, capsule.WithAPIKey(stack.key))
	if err != nil {
		return nil, err
	}
	out := map[string]any{}

	// Create → first command, as bench-create.mjs does with the E2B SDK:
	// one unmeasured round first (the warm snapshot of the shape is built
	// then).
	var samples []time.Duration
	for i := 0; i <= o.n; i++ {
		t0 := time.Now()
		sb, err := c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "base", Timeout: 2 * time.Minute})
		if err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
		res, err := c.Commands.Run(ctx, sb.ID, "true", capsule.RunOptions{})
		d := time.Since(t0)
		_ = c.Sandboxes.Kill(context.WithoutCancel(ctx), sb.ID)
		if err != nil || res.ExitCode != 0 {
			return nil, fmt.Errorf("first command: %+v, %v", res, err)
		}
		if i > 0 {
			samples = append(samples, d)
		}
		if i == 0 {
			time.Sleep(20 * time.Second) // the warm snapshot build, as bench-create.mjs waits
		}
	}
	goT := bench.Summarize(samples)
	out["go_sdk_create_to_first_command"] = goT
	if o.sdkDir != "" {
		jsT, err := sdkCreateToFirstCommand(ctx, proxyBenchOptions{sdkDir: o.sdkDir, sdkN: o.n}, stack)
		if err != nil {
			return out, fmt.Errorf("E2B JS SDK create → first command: %w", err)
		}
		out["e2b_js_sdk_create_to_first_command"] = jsT
		out["go_vs_js_create_to_first_command_ratio"] = bench.Round3(goT.P50 / jsT.P50)
	}

	// cp up and down: the SDK against raw HTTP requests of the same API.
	sb, err := c.Sandboxes.Create(ctx, capsule.CreateOptions{Template: "base", MemoryMB: 1024, Timeout: 30 * time.Minute})
	if err != nil {
		return out, fmt.Errorf("create: %w", err)
	}
	defer func() { _ = c.Sandboxes.Kill(context.WithoutCancel(ctx), sb.ID) }()
	data := make([]byte, o.sizeMiB<<20)
	_, _ = rand.Read(data)
	const path = "/home/user/bench.bin"
	raw := &http.Client{}
	fileURL := stack.url + "/v1/sandboxes/" + sb.ID + "/files?path=" + url.QueryEscape(path)
	rawDo := func(method string, body io.Reader) error {
		req, err := http.NewRequestWithContext(ctx, method, fileURL, body)
		if err != nil {
			return err
		}
		req.Header.Set("X-API-Key", stack.key)
		resp, err := raw.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || (method == http.MethodGet && n != int64(len(data))) {
			return fmt.Errorf("%s: %d, %d bytes", method, resp.StatusCode, n)
		}
		return nil
	}
	type dir struct {
		name     string
		sdk, raw func() error
	}
	dirs := []dir{
		{"up", func() error {
			n, err := c.Files.Write(ctx, sb.ID, path, "", onlyReader{bytes.NewReader(data)})
			if err == nil && n != int64(len(data)) {
				err = fmt.Errorf("wrote %d bytes", n)
			}
			return err
		}, func() error { return rawDo(http.MethodPut, onlyReader{bytes.NewReader(data)}) }},
		{"down", func() error {
			f, err := c.Files.Open(ctx, sb.ID, path, "")
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := io.Copy(io.Discard, f)
			if err == nil && n != int64(len(data)) {
				err = fmt.Errorf("read %d bytes", n)
			}
			return err
		}, func() error { return rawDo(http.MethodGet, nil) }},
	}
	mib := float64(o.sizeMiB)
	for _, d := range dirs {
		var sdkRates, rawRates []float64
		for range o.rounds {
			for _, side := range []struct {
				f     func() error
				rates *[]float64
			}{{d.sdk, &sdkRates}, {d.raw, &rawRates}} {
				t0 := time.Now()
				if err := side.f(); err != nil {
					return out, fmt.Errorf("cp %s: %w", d.name, err)
				}
				*side.rates = append(*side.rates, mib/time.Since(t0).Seconds())
			}
		}
		s, r := median(sdkRates), median(rawRates)
		out["cp_"+d.name+"_sdk_mib_per_s"] = bench.Round3(s)
		out["cp_"+d.name+"_raw_mib_per_s"] = bench.Round3(r)
		out["cp_"+d.name+"_sdk_vs_raw_ratio"] = bench.Round3(s / r)
	}
	out["cp_size_mib"] = o.sizeMiB
	return out, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// onlyReader hides every method but Read, so that neither side of the copy
// knows the length or can replay the body: both stream the same way.
type onlyReader struct{ io.Reader }
