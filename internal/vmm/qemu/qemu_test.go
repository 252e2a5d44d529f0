package qemu_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
	"github.com/capsulehq/capsule/internal/vmm/vmmtest"
)

// The tests share one image store per test binary run, in a directory
// removed at the end (downloads go to vmmtest.SharedImageCache).
const runPrefix = "capsule-vmm-run-"

var runDir = filepath.Join(os.TempDir(), runPrefix+strconv.Itoa(os.Getpid()))

// envRunDir passes the run directory to a re-executed test binary (see
// TestTapNetwork), which then leaves it to its parent.
const envRunDir = "CAPSULE_VMM_TEST_RUN_DIR"

func TestMain(m *testing.M) {
	if d := os.Getenv(envRunDir); d != "" {
		runDir = d
		os.Exit(m.Run())
	}
	// Remove the run directories of test binaries that died early.
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), runPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), runPrefix))
		if _, serr := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil && serr != nil {
			os.RemoveAll(d)
		}
	}
	code := m.Run()
	if err := os.RemoveAll(runDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// userNetCmdline configures eth0 for QEMU's user-mode network.
const userNetCmdline = "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// setup returns a driver with user-mode networking and the minimal image.
func setup(t *testing.T) (*qemu.Driver, *image.Image) {
	t.Helper()
	testenv.RequireCommand(t, qemu.DefaultBinary)
	testenv.RequireCommand(t, "qemu-img")
	img := vmmtest.MinimalImage(t, runDir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := qemu.New(ctx, qemu.Options{UserNet: true, ProbeKernel: img.Kernel, DieWithParent: true, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return d, img
}

func guest(img *image.Image) vmmtest.Guest {
	return vmmtest.Guest{
		Kernel:  img.Kernel,
		Initrd:  img.Initrd,
		Rootfs:  img.Rootfs,
		Cmdline: userNetCmdline,
		Net:     func(testing.TB) *vmm.NetAttachment { return &vmm.NetAttachment{} },
		EnvdURL: func(m vmm.Machine) string { return "http://" + m.(*qemu.Machine).HostForward() },
	}
}

// TestConformance runs the driver conformance suite, with 20 pause/resume
// cycles.
func TestConformance(t *testing.T) {
	d, img := setup(t)
	g := guest(img)
	g.PauseCycles = 20
	vmmtest.Run(t, d, g)
}

// TestConformanceStream runs the suite with snapshots taken through a
// migration stream (the fallback when QEMU cannot save device state
// alone), which splitStream takes apart.
func TestConformanceStream(t *testing.T) {
	d, img := setup(t)
	qemu.SetStreamSnapshots(d, true)
	g := guest(img)
	g.PauseCycles = 2
	vmmtest.Run(t, d, g)
}

// bootSpec is a machine on a fresh overlay of the image's rootfs.
func bootSpec(t *testing.T, img *image.Image, dir, id string, memMB int) vmm.Spec {
	t.Helper()
	ov := filepath.Join(dir, id+".qcow2")
	if err := disk.CreateOverlay(context.Background(), img.Rootfs, ov, 0); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{
		ID: id, Dir: filepath.Join(dir, id), Kernel: img.Kernel, Initrd: img.Initrd,
		Cmdline: userNetCmdline, MemoryMB: memMB, VCPUs: 1,
		Disks: []vmm.Disk{{Path: ov, Format: "qcow2"}}, Net: &vmm.NetAttachment{},
	}
}

func boot(t *testing.T, d *qemu.Driver, spec vmm.Spec) *qemu.Machine {
	t.Helper()
	m, err := d.Boot(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Kill(context.Background()) })
	return m.(*qemu.Machine)
}

// TestAdoptAndCleanup takes over a running machine with a second driver
// (an agent that restarted), snapshots and kills it from there, and
// cleans up another machine's directory.
func TestAdoptAndCleanup(t *testing.T) {
	d, img := setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	m := boot(t, d, bootSpec(t, img, dir, "adopted", 256))
	var (
		d2   *qemu.Driver
		a    *qemu.Machine
		snap vmm.Snapshot
		r    vmm.Machine
	)
	t.Cleanup(func() {
		if r != nil {
			_ = r.Kill(ctx)
		}
	})
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"another driver adopts a detached machine", func(t *testing.T) {
			var err error
			d2, err = qemu.New(ctx, qemu.Options{UserNet: true, Accel: d.Accel(), Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			m.Detach() // as when the agent that started it exits
			if a, err = d2.Adopt(ctx, m.Dir()); err != nil {
				t.Fatal(err)
			}
			if a.PID() != m.PID() || a.HostForward() != m.HostForward() {
				t.Fatalf("adopted pid %d fwd %s, want %d %s", a.PID(), a.HostForward(), m.PID(), m.HostForward())
			}
		}},
		{"snapshot through the adopted machine", func(t *testing.T) {
			var err error
			if snap, err = a.Snapshot(ctx, filepath.Join(dir, "snap"), true); err != nil {
				t.Fatalf("snapshot through the adopted machine: %v", err)
			}
		}},
		{"kill through the adopted machine", func(t *testing.T) {
			if err := a.Kill(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the original handle did not see the exit")
			}
			if _, err := os.Stat(filepath.Join(m.Dir(), "vmm.json")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("vmm.json left after exit: %v", err)
			}
			if _, err := d2.Adopt(ctx, m.Dir()); err == nil {
				t.Fatal("adopted an exited machine")
			}
		}},
		{"the snapshot taken through the adopted handle restores", func(t *testing.T) {
			ov := filepath.Join(dir, "restored-root.qcow2")
			if err := disk.CreateOverlay(ctx, snap.Disks[0].Path, ov, 0); err != nil {
				t.Fatal(err)
			}
			spec := bootSpec(t, img, dir, "restored", 256)
			spec.Disks = []vmm.Disk{{Path: ov, Format: "qcow2"}}
			var err error
			if r, err = d.Restore(ctx, spec, snap); err != nil {
				t.Fatal(err)
			}
		}},
		{"Cleanup kills what runs in a directory without QMP", func(t *testing.T) {
			if err := qemu.Cleanup(ctx, r.(*qemu.Machine).Dir()); err != nil {
				t.Fatal(err)
			}
			select {
			case <-r.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("Cleanup left the machine running")
			}
			if err := qemu.Cleanup(ctx, r.(*qemu.Machine).Dir()); err != nil {
				t.Fatalf("second Cleanup: %v", err)
			}
			if err := qemu.Cleanup(ctx, t.TempDir()); err != nil {
				t.Fatalf("Cleanup of an empty directory: %v", err)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

func TestRestoreRejectsMismatch(t *testing.T) {
	d, img := setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	m := boot(t, d, bootSpec(t, img, dir, "src", 256))
	snap, err := m.Snapshot(ctx, filepath.Join(dir, "snap"), false)
	if err != nil {
		t.Fatal(err)
	}
	spec := bootSpec(t, img, dir, "bad", 512)
	if _, err := d.Restore(ctx, spec, snap); err == nil || !strings.Contains(err.Error(), "MiB") {
		t.Fatalf("restore with other memory: %v", err)
	}
	spec = bootSpec(t, img, dir, "bad2", 256)
	spec.Disks = nil
	if _, err := d.Restore(ctx, spec, snap); err == nil || !strings.Contains(err.Error(), "disks") {
		t.Fatalf("restore without disks: %v", err)
	}
	if _, err := d.Restore(ctx, spec, vmm.Snapshot{Dir: t.TempDir()}); err == nil {
		t.Fatal("restore from an empty directory worked")
	}
}

// TestProbe boots the accelerator probe under TCG (the marker must
// appear) and with a file that is no kernel (it must fail).
func TestProbe(t *testing.T) {
	_, img := setup(t)
	ctx := context.Background()
	took, err := qemu.ProbeAccel(ctx, qemu.DefaultBinary, img.Kernel, vmm.AccelTCG, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TCG probe boot: %v", took)
	bogus := filepath.Join(t.TempDir(), "bogus")
	if err := os.WriteFile(bogus, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := qemu.ProbeAccel(ctx, qemu.DefaultBinary, bogus, vmm.AccelTCG, 20*time.Second); err == nil {
		t.Fatal("the probe passed with no kernel")
	}
}
