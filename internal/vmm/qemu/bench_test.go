package qemu_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
	"github.com/capsulehq/capsule/internal/vmm/vmmtest"
)

// BenchmarkLifecycle measures one machine's life for a small and a big
// guest: cold boot, pause, lazy resume, pause of the lazily resumed
// machine (its RAM goes through the migration stream), resume with
// CopyMemory, a snapshot with keepRunning and a template restore. With
// fill, the guest first writes that many MiB of non-zero data into its
// RAM (tmpfs). Run it once:
//
//	go test -run '^$' -bench Lifecycle -benchtime 1x ./internal/vmm/qemu/
func BenchmarkLifecycle(b *testing.B) {
	for _, c := range []struct{ mem, fill int }{{256, 0}, {2048, 0}, {2048, 1024}} {
		b.Run(fmt.Sprintf("mem=%dMiB/fill=%dMiB", c.mem, c.fill), func(b *testing.B) {
			for range b.N {
				lifecycle(b, c.mem, c.fill)
			}
		})
	}
}

func lifecycle(b *testing.B, memMB, fillMB int) {
	testenv.RequireCommand(b, qemu.DefaultBinary)
	img := vmmtest.MinimalImage(b, runDir)
	ctx := context.Background()
	d, err := qemu.New(ctx, qemu.Options{UserNet: true, ProbeKernel: img.Kernel, DieWithParent: true, Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	var machines []vmm.Machine
	defer func() {
		for _, m := range machines {
			_ = m.Kill(ctx)
		}
	}()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	report := func(v float64, unit string) {
		b.ReportMetric(v, unit)
		b.Logf("%-28s %8.1f", unit, v)
	}
	health := func(m vmm.Machine) {
		url := "http://" + m.(*qemu.Machine).HostForward() + "/health"
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if r, err := http.Get(url); err == nil {
				r.Body.Close()
				if r.StatusCode/100 == 2 {
					return
				}
			}
		}
		b.Fatal("envd never answered")
	}
	spec := func(id string, disks []vmm.Disk) vmm.Spec {
		return vmm.Spec{ID: id, Dir: filepath.Join(dir, id), Kernel: img.Kernel, Initrd: img.Initrd,
			Cmdline: userNetCmdline, MemoryMB: memMB, VCPUs: 1, Disks: disks, Net: &vmm.NetAttachment{}}
	}
	ov := filepath.Join(dir, "root.qcow2")
	if err := disk.CreateOverlay(ctx, img.Rootfs, ov, 0); err != nil {
		b.Fatal(err)
	}

	t0 := time.Now()
	m, err := d.Boot(ctx, spec("boot", []vmm.Disk{{Path: ov, Format: "qcow2"}}))
	if err != nil {
		b.Fatal(err)
	}
	machines = append(machines, m)
	health(m)
	report(ms(time.Since(t0)), "ms-boot-to-health")
	if fillMB > 0 {
		fill(b, m, fillMB)
	}

	pauseDir := filepath.Join(dir, "pause")
	t0 = time.Now()
	snap, err := m.Snapshot(ctx, pauseDir, false)
	if err != nil {
		b.Fatal(err)
	}
	report(ms(time.Since(t0)), "ms-pause-shared")
	report(float64(allocated(b, pauseDir, "memory-"))/(1<<20), "MiB-memory-file")

	t0 = time.Now()
	m, err = d.Restore(ctx, spec("lazy", snap.Disks), snap)
	if err != nil {
		b.Fatal(err)
	}
	machines = append(machines, m)
	report(ms(time.Since(t0)), "ms-resume-lazy")
	health(m)
	report(ms(time.Since(t0)), "ms-resume-lazy-to-health")

	t0 = time.Now()
	if snap, err = m.Snapshot(ctx, pauseDir, false); err != nil {
		b.Fatal(err)
	}
	report(ms(time.Since(t0)), "ms-pause-private")

	s := spec("copy", snap.Disks)
	s.CopyMemory = true
	t0 = time.Now()
	if m, err = d.Restore(ctx, s, snap); err != nil {
		b.Fatal(err)
	}
	machines = append(machines, m)
	report(ms(time.Since(t0)), "ms-resume-copy")
	health(m)
	report(ms(time.Since(t0)), "ms-resume-copy-to-health")

	tplDir := filepath.Join(dir, "template")
	t0 = time.Now()
	tpl, err := m.Snapshot(ctx, tplDir, true)
	if err != nil {
		b.Fatal(err)
	}
	report(ms(time.Since(t0)), "ms-snapshot-keep-running")
	report(pausedSeconds(b, tplDir)*1000, "ms-guest-paused")

	cov := filepath.Join(dir, "clone.qcow2")
	if err := disk.CreateOverlay(ctx, tpl.Disks[0].Path, cov, 0); err != nil {
		b.Fatal(err)
	}
	t0 = time.Now()
	c, err := d.Restore(ctx, spec("clone", []vmm.Disk{{Path: cov, Format: "qcow2"}}), tpl)
	if err != nil {
		b.Fatal(err)
	}
	machines = append(machines, c)
	report(ms(time.Since(t0)), "ms-template-restore")
	health(c)
	report(ms(time.Since(t0)), "ms-template-restore-health")
	report(float64(rssAnon(c.PID()))/(1<<20), "MiB-clone-anon-rss")
}

// fill writes mb MiB of non-zero data into the guest's tmpfs.
func fill(b *testing.B, m vmm.Machine, mb int) {
	script := fmt.Sprintf("head -c %d /dev/urandom > /dev/shm/seed && i=0; while [ $i -lt %d ]; do cat /dev/shm/seed; i=$((i+1)); done > /dev/shm/fill; rm /dev/shm/seed; echo done", 16<<20, mb/16)
	t0 := time.Now()
	out, err := vmmtest.RunInGuest(context.Background(), "http://"+m.(*qemu.Machine).HostForward(), script)
	if err != nil || !strings.Contains(out, "done") {
		b.Fatalf("fill: %v %q", err, out)
	}
	b.Logf("filled %d MiB in %v", mb, time.Since(t0).Round(time.Millisecond))
}

// allocated is the space taken by the file of dir whose name starts with
// prefix.
func allocated(b *testing.B, dir, prefix string) int64 {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			fi, err := os.Stat(filepath.Join(dir, e.Name()))
			if err != nil {
				b.Fatal(err)
			}
			return fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
	}
	return 0
}

func pausedSeconds(b *testing.B, dir string) float64 {
	raw, err := os.ReadFile(filepath.Join(dir, "snapshot.json"))
	if err != nil {
		b.Fatal(err)
	}
	i := strings.Index(string(raw), `"pausedSeconds": `)
	if i < 0 {
		return 0
	}
	v := strings.TrimSpace(strings.SplitN(string(raw[i+len(`"pausedSeconds": `):]), ",", 2)[0])
	f, _ := strconv.ParseFloat(v, 64)
	return f
}

// rssAnon is the process's anonymous resident memory (VmRSS minus file
// and shared memory: the pages a clone owns).
func rssAnon(pid int) int64 {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}
