package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/sandbox/metrics"
)

// SamplerOptions configures SamplerOverhead.
type SamplerOptions struct {
	// EnvdBin is the envd binary whose /metrics the sampler reads.
	EnvdBin string
	// Sandboxes is how many stand-in sandboxes are sampled (20).
	Sandboxes int
	// MemoryMiB is what each stand-in VMM process holds resident (256),
	// so that reading its smaps_rollup costs what a VMM's does.
	MemoryMiB int
	// Duration of the measurement (30 s).
	Duration time.Duration
}

// SamplerOverhead measures the host-side metrics sampler as the agent runs
// it (sandbox/metrics: one goroutine, every 0.5 s) over o.Sandboxes
// stand-in sandboxes: for each, a real process holding o.MemoryMiB of
// touched memory stands in for the VMM (its /proc/<pid>/stat and
// smaps_rollup are read), a real sparse file for its overlay, and a real
// envd process (started on a loopback port) answers the guest's /metrics.
// The stand-ins run in their own processes, so this process' CPU time
// (getrusage RUSAGE_SELF: the sampler goroutine plus its HTTP reads of
// envd) is the sampler's whole cost; it is reported as a fraction of one
// core, with the sampler goroutine's own share (RUSAGE_THREAD).
func SamplerOverhead(ctx context.Context, o SamplerOptions) (map[string]any, error) {
	if o.Sandboxes <= 0 {
		o.Sandboxes = 20
	}
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = 256
	}
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		return nil, errors.New("bench metrics: the stand-in VMM processes need python3")
	}
	dir, err := os.MkdirTemp("", "capsule-bench-metrics-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sampler := metrics.New(metrics.Config{})
	for i := range o.Sandboxes {
		// The VMM stand-in: memory touched page by page, then asleep.
		vmm := exec.CommandContext(ctx, python, "-c",
			fmt.Sprintf("import sys,time\nb=bytearray(%d<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('ready',flush=True)\ntime.sleep(1e9)", o.MemoryMiB))
		out, err := vmm.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := vmm.Start(); err != nil {
			return nil, err
		}
		defer func() { _ = vmm.Process.Kill(); _ = vmm.Wait() }()
		ready := make([]byte, 6)
		if _, err := out.Read(ready); err != nil || string(ready[:5]) != "ready" {
			return nil, fmt.Errorf("stand-in VMM %d did not start: %v", i, err)
		}
		base, stop, err := startEnvd(ctx, o.EnvdBin)
		if err != nil {
			return nil, err
		}
		defer stop()
		disk := filepath.Join(dir, "rootfs-"+strconv.Itoa(i)+".qcow2")
		if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
			return nil, err
		}
		c := envdclient.New(base, "")
		defer c.Close()
		if err := sampler.Add(metrics.Target{ID: "s" + strconv.Itoa(i), PID: vmm.Process.Pid, Disks: []string{disk},
			Guest: c.Metrics, Series: metrics.NewSeries()}); err != nil {
			return nil, err
		}
	}
	// Warm up (connections to envd), then measure.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); sampler.Run(rctx) }()
	time.Sleep(2 * time.Second)
	r0, c0 := sampler.Cost()
	u0, t0 := processCPU(), time.Now()
	select {
	case <-time.After(o.Duration):
	case <-ctx.Done():
	}
	u1, wall := processCPU(), time.Since(t0)
	r1, c1 := sampler.Cost()
	cancel()
	<-done
	sampler.WaitGuest()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	rounds := r1 - r0
	return map[string]any{
		"sandboxes":                       o.Sandboxes,
		"stand_in_vmm_memory_mib":         o.MemoryMiB,
		"sampling_interval_ms":            500,
		"rounds":                          rounds,
		"sampler_cpu_fraction_of_core":    Round4((u1 - u0).Seconds() / wall.Seconds()),
		"sampler_thread_fraction_of_core": Round4((c1 - c0).Seconds() / wall.Seconds()),
		"round_cpu_ms": func() float64 {
			if rounds == 0 {
				return 0
			}
			return ms((u1 - u0) / time.Duration(rounds))
		}(),
	}, nil
}

// processCPU is this process' user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Round4 rounds a small fraction for printing.
func Round4(x float64) float64 { return float64(int64(x*10000+0.5)) / 10000 }
