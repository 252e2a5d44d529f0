package main

import (
	"context"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/hosttest"
)

// TestBenchEnvd runs `capsule bench envd` small against this tree's envd
// and checks that every figure is there and positive (the transfers check
// the size of what they moved).
func TestBenchEnvd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := bench.Envd(ctx, bench.EnvdOptions{EnvdBin: hosttest.Envd(t), Runs: 3, BigFileMiB: 4, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("%v (so far %v)", err, out)
	}
	for _, k := range []string{"command_round_trip", "file_write_read_1kib"} {
		if tm, _ := out[k].(bench.Timing); tm.N != 3 || tm.P50 <= 0 {
			t.Errorf("%s = %v", k, out[k])
		}
	}
	for _, k := range []string{"cat_mib_per_s", "upload_mib_per_s", "upload_chunked_mib_per_s", "download_mib_per_s",
		"download_spliced_mib_per_s", "upload_vs_cat_throughput", "upload_chunked_vs_cat_throughput",
		"download_vs_cat_throughput", "download_spliced_vs_cat_throughput"} {
		if v, _ := out[k].(float64); v <= 0 {
			t.Errorf("%s = %v", k, out[k])
		}
	}
	t.Logf("%v", out)
}
