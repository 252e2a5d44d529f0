package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
)

// forkBenchOptions configures `capsule bench fork`.
type forkBenchOptions struct {
	benchStackOptions
	template string
	n        int // forks of 1
	n8       int // forks of 8
	// settle is how long sandboxes idle before their memory is read.
	settle time.Duration
}

func parseBenchForkFlags(args []string) (forkBenchOptions, error) {
	fs := flag.NewFlagSet("bench fork", flag.ContinueOnError)
	o := forkBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.StringVar(&o.template, "template", "base", "template of the source sandbox (base or minimal)")
	fs.IntVar(&o.n, "n", 10, "forks of 1 (source_hold, fork_1_to_ready)")
	fs.IntVar(&o.n8, "n8", 3, "forks of 8 at once (fork_8_all_ready)")
	fs.DurationVar(&o.settle, "settle", 10*time.Second, "idle time before the memory of 8 forks and of 8 sandboxes is read")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.n < 1 || o.n8 < 1 || (o.template != "base" && o.template != "minimal") {
		return o, errors.New("bench fork: -n and -n8 must be positive, -template base or minimal")
	}
	return o, nil
}

// forkAnswer is POST /v1/sandboxes/{id}/fork's answer.
type forkAnswer struct {
	SourceHoldMS float64 `json:"source_hold_ms"`
	Forks        []struct {
		Sandbox *createdSandbox `json:"sandbox"`
		Error   *errorJSON      `json:"error"`
	} `json:"forks"`
}

type errorJSON struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// benchFork measures forks through the API of a control plane in this
// process (as bench api; images boot cold, so that sandboxes of the
// template share no memory): the source's hold (how long its guest is
// stopped while its memory is saved, as the host reports it), a fork of 1
// until it is ready (the API answers once the fork's envd runs and has
// its identity), 8 forks at once until all are ready, and the host memory
// (PSS of the VMM processes, idle) of 8 forks against 8 independent
// sandboxes of the same template: fork_memory_ratio for the whole VMM
// processes, fork_guest_memory_ratio for their guest RAM mappings alone.
func benchFork(ctx context.Context, o forkBenchOptions) (out map[string]any, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("bench fork: needs root (the host agent's VMs and network)")
	}
	o.base, o.coldImages = o.template == "base", true
	// Its own network pool (reserved in internal/hosttest): bench fork
	// may run beside another bench of the stack.
	o.net = nsSlotNet{"cbf", netip.MustParsePrefix("198.18.152.0/24"), netip.MustParsePrefix("198.18.153.0/24")}
	// The source and 8 forks (or 8 sandboxes) at once, idle: more vCPUs
	// than the default 4 per core.
	o.vcpus = 32
	o.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	stack, err := startBenchStack(ctx, o.benchStackOptions, "bench-fork-")
	if err != nil {
		return nil, err
	}
	defer stack.close()
	b := stack.api()
	out = map[string]any{"template": o.template}

	src, _, _, err := b.create(ctx, o.template)
	if err != nil {
		return nil, err
	}
	defer func() { _ = b.destroy(context.Background(), src.ID) }()

	var holds, ones, eights []time.Duration
	for range o.n {
		ans, el, err := b.fork(ctx, src.ID, 1)
		if err != nil {
			return out, err
		}
		holds, ones = append(holds, time.Duration(ans.SourceHoldMS*float64(time.Millisecond))), append(ones, el)
		if err := b.destroyForks(ans); err != nil {
			return out, err
		}
	}
	for range o.n8 {
		ans, el, err := b.fork(ctx, src.ID, 8)
		if err != nil {
			return out, err
		}
		holds, eights = append(holds, time.Duration(ans.SourceHoldMS*float64(time.Millisecond))), append(eights, el)
		if err := b.destroyForks(ans); err != nil {
			return out, err
		}
	}
	out["source_hold"], out["fork_1_to_ready"], out["fork_8_all_ready"] = bench.Summarize(holds), bench.Summarize(ones), bench.Summarize(eights)

	// Memory: 8 idle forks, then 8 independent sandboxes.
	ans, _, err := b.fork(ctx, src.ID, 8)
	if err != nil {
		return out, err
	}
	var forkIDs []string
	for _, f := range ans.Forks {
		forkIDs = append(forkIDs, f.Sandbox.ID)
	}
	forkMem, err := settledMemory(ctx, o.settle, forkIDs)
	_ = b.destroyForks(ans)
	if err != nil {
		return out, err
	}
	out["forks_8_pss_mib"] = bench.Round3(float64(forkMem.Pss) / (1 << 20))
	out["forks_8_guest_pss_mib"] = bench.Round3(float64(forkMem.GuestPss) / (1 << 20))
	// Cold boots, two at a time: eight at once outlast the boot timeout
	// on a loaded TCG host.
	ids := make([]string, 8)
	errs := make([]error, 8)
	defer func() {
		for _, id := range ids {
			if id != "" {
				_ = b.destroy(context.Background(), id)
			}
		}
	}()
	for i := 0; i < len(ids); i += 2 {
		var wg sync.WaitGroup
		for j := i; j < i+2; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sb, _, _, err := b.create(ctx, o.template)
				ids[j], errs[j] = sb.ID, err
			}()
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		return out, err
	}
	indMem, err := settledMemory(ctx, o.settle, ids)
	if err != nil {
		return out, err
	}
	out["sandboxes_8_pss_mib"] = bench.Round3(float64(indMem.Pss) / (1 << 20))
	out["sandboxes_8_guest_pss_mib"] = bench.Round3(float64(indMem.GuestPss) / (1 << 20))
	out["fork_memory_ratio"] = bench.Round4(float64(forkMem.Pss) / float64(indMem.Pss))
	out["fork_guest_memory_ratio"] = bench.Round4(float64(forkMem.GuestPss) / float64(indMem.GuestPss))
	return out, nil
}

// fork times POST /v1/sandboxes/{id}/fork of count forks, which must all
// succeed.
func (b *apiBench) fork(ctx context.Context, id string, count int) (forkAnswer, time.Duration, error) {
	body, _ := json.Marshal(map[string]any{"count": count})
	t0 := time.Now()
	resp, data, err := b.do(ctx, "POST", "/v1/sandboxes/"+id+"/fork", body)
	el := time.Since(t0)
	var ans forkAnswer
	if err != nil {
		return ans, 0, err
	}
	if resp.StatusCode != 201 || json.Unmarshal(data, &ans) != nil || len(ans.Forks) != count {
		return ans, 0, fmt.Errorf("POST /v1/sandboxes/%s/fork: %d: %.300s", id, resp.StatusCode, data)
	}
	for i, f := range ans.Forks {
		if f.Sandbox == nil || f.Sandbox.State != "running" {
			_ = b.destroyForks(ans)
			return ans, 0, fmt.Errorf("fork %d of %d failed: %+v", i+1, count, f.Error)
		}
	}
	return ans, el, nil
}

func (b *apiBench) destroyForks(ans forkAnswer) error {
	var errs []error
	for _, f := range ans.Forks {
		if f.Sandbox != nil {
			errs = append(errs, b.destroy(context.Background(), f.Sandbox.ID))
		}
	}
	return errors.Join(errs...)
}

// settledMemory waits settle, then sums the memory of the sandboxes' VMM
// processes.
func settledMemory(ctx context.Context, settle time.Duration, ids []string) (bench.ProcessMemory, error) {
	select {
	case <-ctx.Done():
		return bench.ProcessMemory{}, ctx.Err()
	case <-time.After(settle):
	}
	var sum bench.ProcessMemory
	for _, id := range ids {
		pid, err := bench.FindVMM(id)
		if err != nil {
			return sum, err
		}
		m, err := bench.ReadProcessMemory(pid)
		if err != nil {
			return sum, err
		}
		sum.Pss += m.Pss
		sum.GuestPss += m.GuestPss
	}
	return sum, nil
}
