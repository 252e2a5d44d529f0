package main

import (
	"context"
	"math"
	"runtime"
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
		"-c", "2", "-d", "1s", "-rounds", "1", "-sdk", "", "-file-mib", "8", "-file-rounds", "1"})
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
	// The transfers checked their bytes; each path has its rates.
	for _, p := range []string{"direct", "proxy", "api"} {
		for _, dir := range []string{"upload", "download"} {
			rate, _ := out[p+"_"+dir+"_mib_per_s"].(float64)
			vsCat, _ := out[p+"_"+dir+"_vs_cat_throughput"].(float64)
			if rate <= 0 || vsCat <= 0 {
				t.Errorf("%s %s: %v MiB/s, %v of cat", p, dir, out[p+"_"+dir+"_mib_per_s"], out[p+"_"+dir+"_vs_cat_throughput"])
			}
		}
	}
	t.Logf("%+v", out)
}

func TestServerTimings(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want map[string]time.Duration
	}{
		{"empty", "", map[string]time.Duration{}},
		{"phases", "api;dur=1.5, host-restore;dur=40, total;dur=41.5",
			map[string]time.Duration{"api": 1500 * time.Microsecond, "host-restore": 40 * time.Millisecond, "total": 41500 * time.Microsecond}},
		{"without a duration or malformed", "cache;desc=hit, db;dur=x, agent;dur=2", map[string]time.Duration{"agent": 2 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := serverTimings(tc.in)
			if len(got) != len(tc.want) {
				t.Fatalf("%q: %v, want %v", tc.in, got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%q: %s = %v, want %v", tc.in, k, got[k], v)
				}
			}
		})
	}
}

// TestBenchDensity runs `capsule bench density` small (256 MiB guests, two
// idle sandboxes, two concurrent creates) and checks its figures are there
// and sane: a create's phases come from Server-Timing, a clone of a
// template costs less than a cold boot.
func TestBenchDensity(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	o, err := parseBenchDensityFlags([]string{"-envd", hosttest.Envd(t), "-data-dir", hosttest.StoreDir,
		"-memory-mib", "256", "-idle", "2", "-n", "2", "-c", "2", "-rounds", "1", "-settle", "1s"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := benchDensity(ctx, o)
	if err != nil {
		t.Fatalf("%v (so far %v)", err, out)
	}
	one, _ := out["create_one"].(bench.Timing)
	phases, _ := out["create_phases_p50_ms"].(map[string]float64)
	cold, _ := out["idle_pss_cold_boot_mib"].(float64)
	clone, _ := out["idle_pss_from_template_mib"].(float64)
	maxIdle, _ := out["max_idle_512mib_in_16gib"].(int)
	if one.N != 2 || one.P50 <= 0 || phases["host-restore"] <= 0 || phases["agent"] <= 0 || cold <= 0 || clone <= 0 || clone >= cold ||
		maxIdle != bench.MaxIdle(16384, clone) || out["failures"] != nil {
		t.Fatalf("figures: %+v", out)
	}
	// Where a create's CPU goes, and the ratio the concurrent creates'
	// CPU allows.
	cpuOne, _ := out["create_one_cpu_ms"].(float64)
	vmmOne, _ := out["create_one_vmm_cpu_ms"].(float64)
	selfOne, _ := out["create_one_capsule_cpu_ms"].(float64)
	ten, _ := out["create_ten_concurrent"].(map[string]any)
	cpuEach, _ := ten["cpu_ms_per_create"].(float64)
	vmmEach, _ := ten["vmm_cpu_ms_per_create"].(float64)
	selfEach, _ := ten["capsule_cpu_ms_per_create"].(float64)
	floor, _ := out["ten_concurrent_floor_vs_one"].(float64)
	if cpuOne <= 0 || vmmOne <= 0 || selfOne <= 0 || cpuEach <= 0 || vmmEach <= 0 || selfEach <= 0 ||
		floor != bench.CPUFloorRatio(time.Duration(cpuEach*float64(time.Millisecond)), 2, runtime.NumCPU(), time.Duration(one.P50*float64(time.Millisecond))) {
		t.Fatalf("CPU figures: %+v", out)
	}
	// Where an idle clone's PSS goes: the categories add up to its PSS
	// (read from smaps_rollup just before; a few KiB of rounding per
	// mapping and what changed in between), its RAM is the template's
	// file, TCG's code buffer is there.
	breakdown, _ := out["idle_pss_breakdown_mib"].(map[string]float64)
	var sum float64
	for _, v := range breakdown {
		sum += v
	}
	if len(breakdown) != 6 || math.Abs(sum-clone) > 0.05*clone || breakdown["guest_ram"] <= 0 || breakdown["translation_cache"] <= 0 ||
		breakdown["qemu_binary"] <= 0 || breakdown["libraries"] <= 0 || breakdown["heap"] <= 0 {
		t.Fatalf("PSS breakdown %v (sum %g) of a %g MiB clone", breakdown, sum, clone)
	}
	t.Logf("%+v", out)
}
