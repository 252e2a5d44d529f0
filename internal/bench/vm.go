package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
)

// VMOptions configures the VM benchmark.
type VMOptions struct {
	EnvdBin string
	// DataDir holds the image store (shared with the platform's, so images
	// are reused); the benchmark's sandboxes live in a temporary
	// directory below it and are removed at the end.
	DataDir string
	Runs    int
	// PreparedVMMs is the manager's Config.PreparedVMMs.
	PreparedVMMs int
	Log          *slog.Logger
}

// VM measures the sandbox lifecycle on this host: cold boot, create from a
// snapshot template, pause, resume, the effect of template disk size and
// of snapshot memory size, and the host memory of an idle sandbox.
func VM(ctx context.Context, o VMOptions) (map[string]any, error) {
	if o.Runs <= 0 {
		o.Runs = 5
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	images, err := image.Open(o.DataDir, o.Log)
	if err != nil {
		return nil, err
	}
	small, err := images.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: o.EnvdBin, DiskSizeMB: 64})
	if err != nil {
		return nil, fmt.Errorf("64 MiB image: %w", err)
	}
	big, err := images.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: o.EnvdBin, DiskSizeMB: 2048})
	if err != nil {
		return nil, fmt.Errorf("2 GiB image: %w", err)
	}
	driver, err := qemu.New(ctx, qemu.Options{ProbeKernel: small.Kernel, Logger: o.Log})
	if err != nil {
		return nil, err
	}
	pool, err := netslot.NewPool(ctx, netslot.Config{
		Name: "capsule-bench", VethPrefix: "cbv", Logger: o.Log,
		HostCIDR: netip.MustParsePrefix("198.18.96.0/24"), LinkCIDR: netip.MustParsePrefix("198.18.97.0/24"), MaxSlots: 32,
	})
	if err != nil {
		return nil, err
	}
	defer pool.Close(context.Background())
	work, err := os.MkdirTemp(o.DataDir, "bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	mgr, err := sandbox.New(ctx, sandbox.Config{
		DataDir: work, RunDir: filepath.Join(work, "run"), Driver: driver, Images: images, Slots: pool, Log: o.Log,
		PreparedVMMs: o.PreparedVMMs,
	})
	if err != nil {
		return nil, err
	}
	defer mgr.Shutdown(context.Background())

	b := &vmBench{mgr: mgr, runs: o.Runs}
	out := map[string]any{"accel": string(driver.Accel()), "runs": o.Runs, "prepared_vmms": o.PreparedVMMs}
	steps := []struct {
		name string
		fn   func(context.Context, map[string]any) error
	}{
		{"cold boot", func(ctx context.Context, out map[string]any) error {
			t, err := b.creates(ctx, sandbox.CreateOptions{Template: small.ID})
			out["cold_boot_to_envd_ready"] = t
			return err
		}},
		{"snapshot create, pause, resume", b.snapshotFigures},
		{"template disk size", func(ctx context.Context, out map[string]any) error {
			return b.diskSizeRatio(ctx, out, small.ID, big.ID)
		}},
		{"snapshot memory size", func(ctx context.Context, out map[string]any) error {
			return b.memorySizeRatio(ctx, out, small.ID)
		}},
		{"idle memory", func(ctx context.Context, out map[string]any) error {
			return b.idleMemory(ctx, out, small.ID)
		}},
	}
	for _, s := range steps {
		if err := s.fn(ctx, out); err != nil {
			return out, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if cold, ok := out["cold_boot_to_envd_ready"].(Timing); ok {
		if snap, ok := out["create_from_snapshot_template"].(Timing); ok && cold.P50 > 0 {
			out["snapshot_create_vs_cold_boot"] = Round3(snap.P50 / cold.P50)
		}
	}
	return out, nil
}

type vmBench struct {
	mgr  *sandbox.Manager
	runs int
}

// creates times Create (to envd ready) runs times, destroying each.
func (b *vmBench) creates(ctx context.Context, o sandbox.CreateOptions) (Timing, error) {
	t, _, err := b.createsPrepared(ctx, o)
	return t, err
}

// createsPrepared is creates, also counting the creates that took a VMM
// prepared ahead.
func (b *vmBench) createsPrepared(ctx context.Context, o sandbox.CreateOptions) (Timing, int, error) {
	var d []time.Duration
	prepared := 0
	for range b.runs {
		t0 := time.Now()
		info, err := b.mgr.Create(ctx, o)
		if err != nil {
			return Timing{}, 0, err
		}
		d = append(d, time.Since(t0))
		if info.Prepared {
			prepared++
		}
		if err := b.mgr.Destroy(ctx, info.ID); err != nil {
			return Timing{}, 0, err
		}
	}
	return Summarize(d), prepared, nil
}

// template makes a snapshot template from a fresh sandbox.
func (b *vmBench) template(ctx context.Context, name string, o sandbox.CreateOptions) error {
	src, err := b.mgr.Create(ctx, o)
	if err != nil {
		return err
	}
	defer b.mgr.Destroy(ctx, src.ID)
	_, err = b.mgr.CreateSnapshot(ctx, src.ID, name)
	return err
}

func (b *vmBench) snapshotFigures(ctx context.Context, out map[string]any) error {
	if err := b.template(ctx, "bench-snap", sandbox.CreateOptions{Template: "minimal"}); err != nil {
		return err
	}
	t, prepared, err := b.createsPrepared(ctx, sandbox.CreateOptions{Template: "bench-snap"})
	if err != nil {
		return err
	}
	out["create_from_snapshot_template"] = t
	out["create_from_snapshot_template_prepared"] = prepared
	info, err := b.mgr.Create(ctx, sandbox.CreateOptions{Template: "minimal"})
	if err != nil {
		return err
	}
	defer b.mgr.Destroy(ctx, info.ID)
	var pauses, resumes []time.Duration
	for range b.runs {
		t0 := time.Now()
		if err := b.mgr.Pause(ctx, info.ID); err != nil {
			return err
		}
		pauses = append(pauses, time.Since(t0))
		t0 = time.Now()
		if _, err := b.mgr.Resume(ctx, info.ID); err != nil {
			return err
		}
		resumes = append(resumes, time.Since(t0))
	}
	out["pause"], out["resume"] = Summarize(pauses), Summarize(resumes)
	return nil
}

// diskSizeRatio compares creating from snapshot templates whose disks are
// 64 MiB and 2 GiB.
func (b *vmBench) diskSizeRatio(ctx context.Context, out map[string]any, small, big string) error {
	return b.compareTemplates(ctx, out,
		sizedTemplate{"bench-disk-64m", "create_from_64mib_template", sandbox.CreateOptions{Template: small}},
		sizedTemplate{"bench-disk-2g", "create_from_2gib_template", sandbox.CreateOptions{Template: big}},
		"create_2gib_vs_64mib_template")
}

// memorySizeRatio compares restoring snapshot templates of 256 MiB and
// 2 GiB guests.
func (b *vmBench) memorySizeRatio(ctx context.Context, out map[string]any, img string) error {
	return b.compareTemplates(ctx, out,
		sizedTemplate{"bench-mem-256m", "restore_256mib_ram_template", sandbox.CreateOptions{Template: img, MemoryMB: 256}},
		sizedTemplate{"bench-mem-2g", "restore_2gib_ram_template", sandbox.CreateOptions{Template: img, MemoryMB: 2048}},
		"restore_2gib_vs_256mib_ram")
}

// sizedTemplate is a snapshot template made from a sandbox created with
// opts, and the key its create timing is reported under.
type sizedTemplate struct {
	name, key string
	opts      sandbox.CreateOptions
}

// compareTemplates times creating from a small and a big template and
// reports both and the p50 ratio big/small under ratioKey.
func (b *vmBench) compareTemplates(ctx context.Context, out map[string]any, small, big sizedTemplate, ratioKey string) error {
	var p50 [2]float64
	for _, t := range []sizedTemplate{small, big} {
		if err := b.template(ctx, t.name, t.opts); err != nil {
			return err
		}
	}
	for i, t := range []sizedTemplate{small, big} {
		tm, err := b.creates(ctx, sandbox.CreateOptions{Template: t.name})
		if err != nil {
			return err
		}
		out[t.key], p50[i] = tm, tm.P50
	}
	out[ratioKey] = Round3(p50[1] / p50[0])
	return nil
}

// idleMemory is the VMM's proportional set size beyond what the guest
// itself uses, for an idle sandbox (MiB).
func (b *vmBench) idleMemory(ctx context.Context, out map[string]any, img string) error {
	info, err := b.mgr.Create(ctx, sandbox.CreateOptions{Template: img})
	if err != nil {
		return err
	}
	defer b.mgr.Destroy(ctx, info.ID)
	time.Sleep(3 * time.Second) // let the guest settle
	pss, err := PSSKiB(info.VMMPid)
	if err != nil {
		return err
	}
	used, err := guestUsedKiB(ctx, b.mgr, info.ID)
	if err != nil {
		return err
	}
	out["idle_vmm_pss_mib"] = Round3(float64(pss) / 1024)
	out["idle_guest_touched_mib"] = Round3(float64(used) / 1024)
	out["idle_host_overhead_mib"] = Round3(float64(pss-used) / 1024)
	return nil
}

// PSSKiB reads the Pss total of a process (smaps_rollup): its resident
// memory with each shared page divided among the processes that map it.
func PSSKiB(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no Pss in smaps_rollup")
}

// guestUsedKiB asks the guest how much of its memory it has touched
// (MemTotal - MemFree).
func guestUsedKiB(ctx context.Context, mgr *sandbox.Manager, id string) (int64, error) {
	c, err := mgr.Client(id)
	if err != nil {
		return 0, err
	}
	// Everything the guest has touched, its page cache included: that is
	// what its RAM costs the host at best.
	res, err := c.Shell(ctx, "awk '/MemTotal/{t=$2} /MemFree/{f=$2} END{print t-f}' /proc/meminfo")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(res.Stdout)), 10, 64)
}
