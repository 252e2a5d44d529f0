package main

import (
	"context"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/testenv"
)

func TestAgentTiming(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"agent;dur=12.5", 12500 * time.Microsecond, true},
		{"db;dur=1, agent;desc=\"host\";dur=0.250", 250 * time.Microsecond, true},
		{"", 0, false},
		{"agent", 0, false},
		{"agent;dur=x", 0, false},
		{"db;dur=3", 0, false},
	} {
		got, err := agentTiming(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// TestBenchAPI runs `capsule bench api` small: a real host agent (network
// pool capsule-bench), an embedded PostgreSQL, the API over HTTP. It checks
// the figures are there and sane (creates carry Server-Timing).
func TestBenchAPI(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	envd := hosttest.Envd(t)
	o, err := parseBenchAPIFlags([]string{"-envd", envd, "-data-dir", hosttest.StoreDir,
		"-rows", "120", "-list-n", "10", "-create-n", "2"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := benchAPI(ctx, o)
	if err != nil {
		t.Fatalf("%v (so far %v)", err, out)
	}
	list, _ := out["list_sandboxes_120"].(bench.Timing)
	over, _ := out["create_overhead"].(bench.Timing)
	api, _ := out["create_api"].(bench.Timing)
	agent, _ := out["create_agent"].(bench.Timing)
	if list.N != 10 || list.P50 <= 0 || over.N != 2 || over.P50 <= 0 || agent.P50 <= 0 || api.P50 < agent.P50 {
		t.Fatalf("figures: %+v", out)
	}
	t.Logf("%+v", out)
}

// TestBenchProxy runs `capsule bench proxy` small and checks its figures
// are there and sane.
func TestBenchProxy(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	o, err := parseBenchProxyFlags([]string{"-envd", hosttest.Envd(t), "-data-dir", hosttest.StoreDir,
		"-c", "2", "-d", "300ms", "-rounds", "1", "-sdk", ""})
	if err != nil {
		t.Fatal(err)
	}
	out, err := benchProxy(ctx, o)
	if err != nil {
		t.Fatalf("%v (so far %v)", err, out)
	}
	pl, _ := out["proxy_latency"].(bench.Timing)
	dl, _ := out["direct_latency"].(bench.Timing)
	ratio, _ := out["proxy_throughput_ratio"].(float64)
	if pl.N < 10 || dl.N < 10 || ratio <= 0 || ratio > 5 {
		t.Fatalf("figures: %+v", out)
	}
	t.Logf("%+v", out)
}
