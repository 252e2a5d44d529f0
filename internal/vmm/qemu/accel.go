package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capsulehq/capsule/internal/vmm"
)

// EnvAccel overrides accelerator detection: "kvm" or "tcg".
const EnvAccel = "CAPSULE_ACCEL"

// DefaultProbeTimeout is how long a KVM probe guest may take to reach its
// marker before KVM is declared unusable.
const DefaultProbeTimeout = 10 * time.Second

// probeMarker is what the probe guest's kernel prints once it has gone
// through its whole initialization (see probeAccel).
const probeMarker = "Kernel panic"

// probeCmdline makes the probe kernel stop at the earliest point that
// proves the machine works: it finds no root device, panics, and with
// panic=-1 and -no-reboot QEMU exits at once.
const probeCmdline = "console=ttyS0 panic=-1 root=/dev/capsule-accel-probe"

var accelCache struct {
	sync.Mutex
	m map[string]accelResult
}

type accelResult struct {
	accel  vmm.Accel
	reason string
}

// DetectAccel decides how guests execute on this host, in this order: the
// CAPSULE_ACCEL environment variable; TCG when /dev/kvm cannot be opened;
// TCG when /sys/module/kvm_pvm exists (PVM-backed KVM, on which stock
// guest kernels hang right after "Probing EDD"); otherwise a probe boot
// of kernel under KVM that must reach its marker within timeout (TCG when
// it does not). The outcome, with the reason, is cached per process for
// each binary and kernel.
func DetectAccel(ctx context.Context, log *slog.Logger, binary, kernel string, timeout time.Duration) (vmm.Accel, string, error) {
	if v := os.Getenv(EnvAccel); v != "" {
		a, err := parseAccel(v)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", EnvAccel, err)
		}
		return a, EnvAccel + "=" + v, nil
	}
	key := binary + "\x00" + kernel
	accelCache.Lock()
	defer accelCache.Unlock()
	if r, ok := accelCache.m[key]; ok {
		return r.accel, r.reason, nil
	}
	r, err := detectAccel(ctx, log, binary, kernel, timeout)
	if err != nil {
		return "", "", err
	}
	if accelCache.m == nil {
		accelCache.m = map[string]accelResult{}
	}
	accelCache.m[key] = r
	log.Info("qemu accelerator", "accel", r.accel, "reason", r.reason)
	return r.accel, r.reason, nil
}

func parseAccel(v string) (vmm.Accel, error) {
	switch a := vmm.Accel(strings.ToLower(strings.TrimSpace(v))); a {
	case vmm.AccelKVM, vmm.AccelTCG:
		return a, nil
	}
	return "", fmt.Errorf("unknown accelerator %q (want kvm or tcg)", v)
}

func detectAccel(ctx context.Context, log *slog.Logger, binary, kernel string, timeout time.Duration) (accelResult, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return accelResult{vmm.AccelTCG, fmt.Sprintf("no usable /dev/kvm (%v)", err)}, nil
	}
	f.Close()
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return accelResult{vmm.AccelTCG, "/dev/kvm is PVM-backed (kvm_pvm loaded): stock guest kernels hang on it"}, nil
	}
	if kernel == "" {
		return accelResult{}, errors.New("detect accelerator: a probe kernel is needed to check KVM (or set " + EnvAccel + ")")
	}
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	took, err := ProbeAccel(ctx, binary, kernel, vmm.AccelKVM, timeout)
	if err != nil {
		if ctx.Err() != nil {
			return accelResult{}, fmt.Errorf("detect accelerator: %w", ctx.Err())
		}
		log.Warn("KVM probe failed, using TCG", "err", err)
		return accelResult{vmm.AccelTCG, "KVM probe guest failed: " + err.Error()}, nil
	}
	return accelResult{vmm.AccelKVM, fmt.Sprintf("KVM probe guest booted in %v", took.Round(time.Millisecond))}, nil
}

// ProbeAccel boots kernel (no initramfs, no disk) under accel and waits
// for probeMarker on its console. The kernel runs its entire
// initialization, including the timer and SMP setup where broken
// accelerators hang, then panics for want of a root device; panic=-1 and
// -no-reboot end QEMU right there. That works with any bootable x86
// kernel, needs no initramfs of ours and costs well under a second with
// KVM.
func ProbeAccel(ctx context.Context, binary, kernel string, accel vmm.Accel, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cpu := "host"
	if accel == vmm.AccelTCG {
		cpu = "max"
	}
	cmd := exec.CommandContext(ctx, binary,
		"-M", "microvm,acpi=on", "-accel", string(accel), "-cpu", cpu,
		"-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", probeCmdline+" "+timerCmdline(accel))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", binary, err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	found := make(chan bool, 1)
	var console bytes.Buffer
	go func() {
		sc := bufio.NewScanner(io.TeeReader(out, &limitedBuffer{b: &console, max: 64 << 10}))
		for sc.Scan() {
			if strings.Contains(sc.Text(), probeMarker) {
				found <- true
				return
			}
		}
		found <- false
	}()
	select {
	case ok := <-found:
		if ok {
			return time.Since(start), nil
		}
		_ = cmd.Wait()
		return 0, fmt.Errorf("probe guest exited without %q: %s%s", probeMarker, lastLines(stderr.String(), 3), lastLines(console.String(), 3))
	case <-ctx.Done():
		return 0, fmt.Errorf("probe guest did not reach %q within %v; console ends: %s", probeMarker, timeout, lastLines(console.String(), 3))
	}
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, " | ")
}

// timerCmdline returns the kernel parameters that make boots
// deterministic under accel.
//
// Under TCG the guest's TSC is the host's TSC (QEMU reads the host counter
// for RDTSC), but the kernel does not know its frequency: it calibrates
// against the emulated PIT, and that calibration depends on how fast the
// emulation runs, which depends on the host's load. Seen: boots stuck at
// "Unable to calibrate against PIT", and the clocksource watchdog marking
// the TSC unstable because jiffies (timer interrupts delivered late by a
// busy emulator) disagree with it, which leaves the guest on jiffies time.
// So the host measures its TSC frequency once and passes it:
// tsc_early_khz skips the calibration, tsc=reliable disables the watchdog
// on the TSC (it is the host's invariant TSC, as reliable as the host's
// own clock), and no_timer_check skips the IO-APIC timer check, another
// test that fails when interrupts arrive late. With the frequency pinned,
// lpj needs no pinning: the delay loop is derived from it. The host TSC
// must be invariant (constant_tsc and nonstop_tsc); otherwise only
// no_timer_check is passed. Under KVM the guest uses kvm-clock and needs
// none of this.
func timerCmdline(accel vmm.Accel) string {
	if accel != vmm.AccelTCG {
		return ""
	}
	khz := hostTSCKHz()
	if khz == 0 {
		return "no_timer_check"
	}
	return fmt.Sprintf("tsc_early_khz=%d tsc=reliable no_timer_check", khz)
}

var tscOnce struct {
	sync.Once
	khz int64
}

// hostTSCKHz returns the host's TSC frequency in kHz, or 0 when the host
// TSC is not invariant or cannot be read.
func hostTSCKHz() int64 {
	tscOnce.Do(func() {
		if !haveRDTSC || !invariantTSC() {
			return
		}
		tscOnce.khz = measureTSCKHz(100 * time.Millisecond)
	})
	return tscOnce.khz
}

// invariantTSC reports whether /proc/cpuinfo lists constant_tsc and
// nonstop_tsc.
func invariantTSC() bool {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, flags, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "flags" {
			f := " " + strings.TrimSpace(flags) + " "
			return strings.Contains(f, " constant_tsc ") && strings.Contains(f, " nonstop_tsc ")
		}
	}
	return false
}

// measureTSCKHz counts TSC ticks against the monotonic clock over d. Each
// end is the tightest of a few clock/TSC/clock readings, so that a
// preemption between them does not skew the result.
func measureTSCKHz(d time.Duration) int64 {
	sample := func() (time.Time, uint64) {
		best := time.Duration(1<<63 - 1)
		var t time.Time
		var c uint64
		for range 5 {
			t0 := time.Now()
			c0 := rdtsc()
			t1 := time.Now()
			if w := t1.Sub(t0); w < best {
				best, t, c = w, t0.Add(w/2), c0
			}
		}
		return t, c
	}
	t0, c0 := sample()
	time.Sleep(d)
	t1, c1 := sample()
	el := t1.Sub(t0)
	if el <= 0 || c1 <= c0 {
		return 0
	}
	return int64((float64(c1-c0)/el.Seconds())/1000 + 0.5)
}
