package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// densityBenchOptions configures `capsule bench density`.
type densityBenchOptions struct {
	benchStackOptions
	memoryMB int
	idle     int           // idle sandboxes restored from the template
	settle   time.Duration // how long sandboxes idle before their PSS is read
	single   int           // sequential creates for the one-create figure
	rounds   int           // rounds of concurrent creates (the median counts)
	conc     int           // concurrent creates per round
	hostMiB  float64       // the host memory max_idle is computed for
	verbose  bool
}

func parseBenchDensityFlags(args []string) (densityBenchOptions, error) {
	fs := flag.NewFlagSet("bench density", flag.ContinueOnError)
	o := densityBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.IntVar(&o.memoryMB, "memory-mib", 512, "guest memory of every sandbox (MiB)")
	fs.IntVar(&o.idle, "idle", 20, "idle sandboxes restored from the template whose mean PSS is measured")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "how long sandboxes stay idle before their PSS is read")
	fs.IntVar(&o.single, "n", 5, "sequential creates for the one-create figure")
	fs.IntVar(&o.conc, "c", 10, "concurrent creates per round")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of concurrent creates (the median round counts)")
	fs.BoolVar(&o.verbose, "v", false, "log the platform's warnings and errors to stderr")
	fs.Float64Var(&o.hostMiB, "host-mib", 16384, "host memory (MiB) the largest number of idle sandboxes is computed for")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.memoryMB < 64 || o.idle < 1 || o.single < 1 || o.conc < 1 || o.rounds < 1 || o.settle < 0 || o.hostMiB <= 0 {
		return o, errors.New("bench density: -memory-mib ≥ 64, positive -idle, -n, -c, -rounds and -host-mib, -settle not negative")
	}
	// Creates of an image always boot cold: the cold figure is a cold boot,
	// and the template is made explicitly.
	o.coldImages = true
	// Every sandbox of the bench at once, whatever the cores (1 vCPU each).
	o.vcpus = 2 * (o.idle + o.conc + 4)
	return o, nil
}

// densityBench is the platform of `capsule serve` in this process (see
// benchStack) and the host's sandbox manager, to find each sandbox's VMM.
type densityBench struct {
	o     densityBenchOptions
	api   *apiBench
	stack *benchStack
}

// benchDensity measures how many sandboxes a host holds and what a create
// costs under load, through the API of the control plane `capsule serve`
// runs with its embedded agent:
//
//   - idle_pss_cold_boot_mib: the PSS of the VMM of one cold-booted
//     sandbox of "minimal" (o.memoryMB of guest memory), idle for o.settle;
//   - template_memory_mib: the allocated size of the memory file of a
//     snapshot template made of that sandbox (POST /v1/snapshots);
//   - create_one: o.n sequential creates from that template;
//     create_ten_concurrent: the wall time of o.c creates at once (the
//     median of o.rounds rounds); ten_concurrent_creates_vs_one: the
//     second over the p50 of the first;
//   - idle_pss_from_template_mib: the mean PSS of o.idle sandboxes
//     restored from the template, all idle for o.settle;
//     pause_memory_mib: the allocated size of the memory file of one of
//     them paused;
//   - max_idle_512mib_in_16gib: o.hostMiB over that mean (bench.MaxIdle).
func benchDensity(ctx context.Context, o densityBenchOptions) (out map[string]any, err error) {
	if o.log == nil && o.verbose {
		o.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	stack, api, err := startAPIBench(ctx, "density", o.benchStackOptions)
	if err != nil {
		return nil, err
	}
	defer stack.close()
	b := &densityBench{o: o, stack: stack, api: api}
	// The team may run every sandbox of the bench at once.
	if _, err := stack.st.Pool().Exec(ctx, `UPDATE teams SET max_running_sandboxes = $2, max_total_memory_mb = $3, max_total_vcpus = $4 WHERE id = $1`,
		stack.team.ID, o.idle+o.conc+4, (o.idle+o.conc+4)*o.memoryMB, 4*(o.idle+o.conc+4)); err != nil {
		return nil, fmt.Errorf("raise the team's limits: %w", err)
	}
	out = map[string]any{"memory_mib": o.memoryMB, "accel": string(stack.host.driver.Accel()), "settle_s": o.settle.Seconds(), "prepared_vmms": o.preparedVMMs}

	// Cold boot.
	cold, err := b.create(ctx, "minimal", o.memoryMB)
	if err != nil {
		return out, fmt.Errorf("cold boot: %w", err)
	}
	if err := b.idleFor(ctx); err != nil {
		return out, err
	}
	pss, err := b.pss(cold)
	if err != nil {
		return out, err
	}
	out["idle_pss_cold_boot_mib"] = pss
	// The template, made of the cold sandbox.
	const template = "bench-density"
	before, err := stack.host.mgr.Templates()
	if err != nil {
		return out, err
	}
	resp, data, err := b.api.do(ctx, "POST", "/v1/snapshots", fmt.Appendf(nil, `{"sandbox_id":%q,"name":%q,"overwrite":true}`, cold.ID, template))
	if err == nil && resp.StatusCode != 201 && resp.StatusCode != 200 {
		err = fmt.Errorf("POST /v1/snapshots: %d: %.200s", resp.StatusCode, data)
	}
	if err != nil {
		return out, fmt.Errorf("snapshot template: %w", err)
	}
	if err := b.api.destroy(ctx, cold.ID); err != nil {
		return out, err
	}
	after, err := stack.host.mgr.Templates()
	if err != nil {
		return out, err
	}
	for _, t := range after {
		if !slices.ContainsFunc(before, func(p *sandbox.Template) bool { return p.Name == t.Name }) && t.Snapshot != "" {
			if out["template_memory_mib"], err = bench.AllocatedMiB(t.Snapshot, "memory-*"); err != nil {
				return out, err
			}
		}
	}

	// One create at a time, then o.conc at once.
	var singles []time.Duration
	phases := map[string][]time.Duration{}
	for range o.single {
		t0 := time.Now()
		sb, err := b.create(ctx, template, 0)
		if err != nil {
			return out, err
		}
		singles = append(singles, time.Since(t0))
		for k, v := range sb.timing {
			phases[k] = append(phases[k], v)
		}
		if err := b.api.destroy(ctx, sb.ID); err != nil {
			return out, err
		}
	}
	one := bench.Summarize(singles)
	out["create_one"] = one
	phaseOut := map[string]float64{}
	for k, v := range phases {
		phaseOut[k] = bench.Summarize(v).P50
	}
	out["create_phases_p50_ms"] = phaseOut
	var walls []time.Duration
	var each []time.Duration
	// failures are the creates that failed (recorded, not fatal: see below).
	var failures []string
	defer func() {
		if len(failures) > 0 {
			out["failures"] = failures
		}
	}()
	for range o.rounds {
		created := make([]string, o.conc)
		wall, d, err := bench.Concurrent(ctx, o.conc, func(ctx context.Context, i int) error {
			sb, err := b.create(ctx, template, 0)
			created[i] = sb.ID
			return err
		})
		for _, id := range created {
			if id != "" {
				if derr := b.api.destroy(ctx, id); derr != nil && err == nil {
					err = derr
				}
			}
		}
		if err != nil {
			// A shared, overloaded machine can time creates out: the
			// rest of the figures are still worth having.
			failures = append(failures, fmt.Sprintf("concurrent creates: %v", err))
			continue
		}
		walls, each = append(walls, wall), append(each, d...)
	}
	if len(walls) > 0 {
		slices.Sort(walls)
		wall := walls[len(walls)/2]
		out["create_ten_concurrent"] = map[string]any{"wall_ms": bench.Summarize([]time.Duration{wall}).P50, "each": bench.Summarize(each), "rounds": len(walls)}
		if one.P50 > 0 {
			out["ten_concurrent_creates_vs_one"] = bench.Round3(bench.Summarize([]time.Duration{wall}).P50 / one.P50)
		}
	}

	// Idle sandboxes restored from the template.
	var idle []densitySandbox
	defer func() {
		for _, sb := range idle {
			_ = b.api.destroy(context.WithoutCancel(ctx), sb.ID)
		}
	}()
	for range o.idle {
		sb, err := b.create(ctx, template, 0)
		if err != nil {
			failures = append(failures, fmt.Sprintf("idle create: %v", err))
			continue
		}
		idle = append(idle, sb)
	}
	if len(idle) == 0 {
		return out, errors.New("no idle sandbox could be created")
	}
	if err := b.idleFor(ctx); err != nil {
		return out, err
	}
	var sum float64
	for _, sb := range idle {
		p, err := b.pss(sb)
		if err != nil {
			return out, err
		}
		sum += p
	}
	mean := bench.Round3(sum / float64(len(idle)))
	out["idle_pss_from_template_mib"] = mean
	out["idle_sandboxes"] = len(idle)
	out["max_idle_512mib_in_16gib"] = bench.MaxIdle(o.hostMiB, mean)
	out["max_idle_method"] = fmt.Sprintf("floor(%g MiB / idle_pss_from_template_mib)", o.hostMiB)
	// A pause of one of them.
	last := idle[len(idle)-1]
	if resp, data, err := b.api.do(ctx, "POST", "/v1/sandboxes/"+last.ID+"/pause", nil); err != nil || resp.StatusCode != 200 {
		return out, fmt.Errorf("pause: %v %.200s", err, data)
	}
	if out["pause_memory_mib"], err = bench.AllocatedMiB(filepath.Join(stack.hostDataDir, "sandboxes", last.agentID), "memory-*"); err != nil {
		return out, err
	}
	return out, nil
}

// densitySandbox is a sandbox the bench created: its wire ID, the
// manager's ID of it and its create's Server-Timing phases.
type densitySandbox struct {
	ID      string
	agentID string
	timing  map[string]time.Duration
}

// create creates a sandbox of template through the API (memoryMB 0: the
// template's) and finds it on the host by its metadata.
func (b *densityBench) create(ctx context.Context, template string, memoryMB int) (densitySandbox, error) {
	tag := sandbox.NewID()
	req := map[string]any{"template": template, "metadata": map[string]string{"bench": tag}}
	if memoryMB > 0 {
		req["memory_mb"] = memoryMB
	}
	body, _ := json.Marshal(req)
	resp, data, err := b.api.do(ctx, "POST", "/v1/sandboxes", body)
	if err != nil {
		return densitySandbox{}, err
	}
	var sb createdSandbox
	if resp.StatusCode != 201 || json.Unmarshal(data, &sb) != nil || sb.State != "running" {
		return densitySandbox{}, fmt.Errorf("POST /v1/sandboxes: %d: %.300s", resp.StatusCode, data)
	}
	out := densitySandbox{ID: sb.ID, timing: serverTimings(resp.Header.Get("Server-Timing"))}
	for _, in := range b.stack.host.mgr.List() {
		if in.Metadata["bench"] == tag {
			out.agentID = in.ID
		}
	}
	if out.agentID == "" {
		return out, fmt.Errorf("sandbox %s not found on the host", sb.ID)
	}
	return out, nil
}

// pss is the PSS of a sandbox's VMM in MiB.
func (b *densityBench) pss(sb densitySandbox) (float64, error) {
	in, err := b.stack.host.mgr.Get(sb.agentID)
	if err != nil {
		return 0, err
	}
	kib, err := bench.PSSKiB(in.VMMPid)
	if err != nil {
		return 0, fmt.Errorf("PSS of %s: %w", sb.ID, err)
	}
	return bench.Round3(float64(kib) / 1024), nil
}

func (b *densityBench) idleFor(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(b.o.settle):
		return nil
	}
}
