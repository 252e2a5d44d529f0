package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/sandbox/metrics"
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
//   - where a create's CPU goes: create_one_cpu_ms, the machine's busy
//     CPU (/proc/stat, every process) over one create, median of the
//     sequential ones; create_one_vmm_cpu_ms, the CPU its VMM had used
//     when the create returned; create_one_capsule_cpu_ms, that of this
//     process (control plane, host agent, the bench's client);
//     create_ten_concurrent.cpu_ms_per_create, the busy CPU of the median
//     round over o.c (vmm_cpu_ms_per_create: its VMMs' CPU when the round
//     ended, capsule_cpu_ms_per_create: this process', both over o.c);
//     ten_concurrent_floor_vs_one, the least ratio that
//     CPU alone allows: o.c creates need o.c × that CPU, which the cores
//     give in no less than o.c × cpu / cores of wall time
//     (bench.CPUFloorRatio);
//   - idle_pss_from_template_mib: the mean PSS of o.idle sandboxes
//     restored from the template, all idle for o.settle, and
//     idle_pss_breakdown_mib where it goes (bench.PSSBreakdown; the same
//     for the cold-booted sandbox: idle_pss_cold_boot_breakdown_mib);
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
	out = map[string]any{"memory_mib": o.memoryMB, "accel": string(stack.host.driver.Accel()), "settle_s": o.settle.Seconds(), "cores": runtime.NumCPU(), "prepared_vmms": o.preparedVMMs}

	// Cold boot.
	cold, err := b.create(ctx, "minimal", o.memoryMB)
	if err != nil {
		return out, fmt.Errorf("cold boot: %w", err)
	}
	if err := b.idleFor(ctx); err != nil {
		return out, err
	}
	pss, breakdown, err := b.pss(cold)
	if err != nil {
		return out, err
	}
	out["idle_pss_cold_boot_mib"] = pss
	out["idle_pss_cold_boot_breakdown_mib"] = breakdown.MiB()
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
	var singles, cpuOne, vmmOne, selfOne []time.Duration
	phases := map[string][]time.Duration{}
	for range o.single {
		busy0, self0, err := cpuNow()
		if err != nil {
			return out, err
		}
		t0 := time.Now()
		sb, err := b.create(ctx, template, 0)
		if err != nil {
			return out, err
		}
		wall := time.Since(t0)
		busy1, self1, err := cpuNow()
		if err != nil {
			return out, err
		}
		vmm, err := b.vmmCPU(sb)
		if err != nil {
			return out, err
		}
		singles, cpuOne, selfOne, vmmOne = append(singles, wall), append(cpuOne, busy1-busy0), append(selfOne, self1-self0), append(vmmOne, vmm)
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
	out["create_one_cpu_ms"] = bench.MS(bench.Median(cpuOne))
	out["create_one_vmm_cpu_ms"] = bench.MS(bench.Median(vmmOne))
	out["create_one_capsule_cpu_ms"] = bench.MS(bench.Median(selfOne))
	// A round's wall time, the machine's busy CPU over it, this process'
	// and that of the round's VMMs when it ended.
	type round struct{ wall, cpu, self, vmm time.Duration }
	var rounds []round
	var each []time.Duration
	// failures are the creates that failed (recorded, not fatal: see below).
	var failures []string
	defer func() {
		if len(failures) > 0 {
			out["failures"] = failures
		}
	}()
	for range o.rounds {
		created := make([]densitySandbox, o.conc)
		busy0, self0, err := cpuNow()
		if err != nil {
			return out, err
		}
		wall, d, err := bench.Concurrent(ctx, o.conc, func(ctx context.Context, i int) error {
			sb, err := b.create(ctx, template, 0)
			created[i] = sb
			return err
		})
		busy1, self1, cerr := cpuNow()
		var vmm time.Duration
		for _, sb := range created {
			if cerr == nil && sb.agentID != "" {
				var c time.Duration
				c, cerr = b.vmmCPU(sb)
				vmm += c
			}
		}
		if cerr != nil && err == nil {
			err = cerr
		}
		for _, sb := range created {
			if sb.ID != "" {
				if derr := b.api.destroy(ctx, sb.ID); derr != nil && err == nil {
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
		rounds, each = append(rounds, round{wall, busy1 - busy0, self1 - self0, vmm}), append(each, d...)
	}
	if len(rounds) > 0 {
		slices.SortFunc(rounds, func(a, b round) int { return cmp.Compare(a.wall, b.wall) })
		median := rounds[len(rounds)/2]
		n := time.Duration(o.conc)
		cpuEach := median.cpu / n
		out["create_ten_concurrent"] = map[string]any{"wall_ms": bench.MS(median.wall), "each": bench.Summarize(each), "rounds": len(rounds),
			"cpu_ms_per_create": bench.MS(cpuEach), "vmm_cpu_ms_per_create": bench.MS(median.vmm / n), "capsule_cpu_ms_per_create": bench.MS(median.self / n)}
		if one.P50 > 0 {
			out["ten_concurrent_creates_vs_one"] = bench.Round3(bench.MS(median.wall) / one.P50)
			oneWall := time.Duration(one.P50 * float64(time.Millisecond))
			out["ten_concurrent_floor_vs_one"] = bench.CPUFloorRatio(cpuEach, o.conc, runtime.NumCPU(), oneWall)
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
	sums := map[string]float64{}
	for _, sb := range idle {
		p, breakdown, err := b.pss(sb)
		if err != nil {
			return out, err
		}
		sum += p
		for k, v := range breakdown.MiB() {
			sums[k] += v
		}
	}
	mean := bench.Round3(sum / float64(len(idle)))
	out["idle_pss_from_template_mib"] = mean
	for k, v := range sums {
		sums[k] = bench.Round3(v / float64(len(idle)))
	}
	out["idle_pss_breakdown_mib"] = sums
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

// pss is the PSS of a sandbox's VMM in MiB (smaps_rollup) and where it
// goes (smaps, read right after).
func (b *densityBench) pss(sb densitySandbox) (float64, bench.PSSBreakdown, error) {
	in, err := b.stack.host.mgr.Get(sb.agentID)
	if err != nil {
		return 0, bench.PSSBreakdown{}, err
	}
	kib, err := bench.PSSKiB(in.VMMPid)
	if err != nil {
		return 0, bench.PSSBreakdown{}, fmt.Errorf("PSS of %s: %w", sb.ID, err)
	}
	breakdown, err := bench.ReadPSSBreakdown(in.VMMPid, int64(in.MemoryMB)<<20)
	if err != nil {
		return 0, breakdown, fmt.Errorf("PSS of %s: %w", sb.ID, err)
	}
	return bench.Round3(float64(kib) / 1024), breakdown, nil
}

// vmmCPU is the CPU time a sandbox's VMM has used so far.
func (b *densityBench) vmmCPU(sb densitySandbox) (time.Duration, error) {
	in, err := b.stack.host.mgr.Get(sb.agentID)
	if err != nil {
		return 0, err
	}
	cpu, err := metrics.ProcessCPU(in.VMMPid)
	if err != nil {
		return 0, fmt.Errorf("CPU of the VMM of %s: %w", sb.ID, err)
	}
	return cpu, nil
}

// cpuNow is the machine's busy CPU and this process' CPU so far.
func cpuNow() (busy, self time.Duration, err error) {
	if busy, err = bench.BusyCPU(); err != nil {
		return 0, 0, err
	}
	self, err = metrics.ProcessCPU(os.Getpid())
	return busy, self, err
}

func (b *densityBench) idleFor(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(b.o.settle):
		return nil
	}
}
