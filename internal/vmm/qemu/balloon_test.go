package qemu_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/vmm"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
	"github.com/capsulehq/capsule/internal/vmm/vmmtest"
)

// waitEnvd polls the machine's envd until /health answers.
func waitEnvd(t *testing.T, m vmm.Machine) string {
	t.Helper()
	base := "http://" + m.(*qemu.Machine).HostForward()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return base
			}
		}
		select {
		case <-m.Done():
			t.Fatal("the machine exited before envd answered")
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("envd did not answer")
	return ""
}

func runIn(t *testing.T, base, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := vmmtest.RunInGuest(ctx, base, script)
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return strings.TrimSpace(out)
}

// memoryFile is the memory file of the snapshot in dir, its hash and its
// allocated bytes.
func memoryFile(t *testing.T, dir string) (path string, sum [32]byte, allocated int64) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "memory-*"))
	if err != nil || len(files) != 1 {
		t.Fatalf("memory files in %s: %v %v", dir, files, err)
	}
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	copy(sum[:], h.Sum(nil))
	return files[0], sum, st.Blocks * 512
}

// TestBalloonCannotPunchTemplate performs the attack the fallocate guard
// (guard.go) exists for: a template whose guest had 64 MiB of data in
// RAM, and a clone restored from it (the template's memory file mapped
// privately) that frees all of it, which free-page reporting hands to
// QEMU to discard. Guarded, QEMU's hole punches fail (its log says so:
// the attack did run), the template's file keeps every byte and another
// clone reads the data intact. Unguarded, on a copy of the template, the
// same clone punches holes into the file: what every other clone of it
// would read as zeros.
func TestBalloonCannotPunchTemplate(t *testing.T) {
	d, img := setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	tpl := filepath.Join(dir, "template")
	var want string // md5 of the guest's data
	var tplSum [32]byte
	var tplAlloc int64
	restore := func(t *testing.T, id, snapDir string) (vmm.Machine, string) {
		t.Helper()
		snap := vmm.Snapshot{Dir: snapDir}
		files, _ := filepath.Glob(filepath.Join(snapDir, "disk0-*"))
		base := img.Rootfs
		if len(files) == 1 {
			base = files[0]
		}
		spec := bootSpec(t, img, dir, id, 256)
		ov := filepath.Join(dir, id+"-root.qcow2")
		if err := disk.CreateOverlay(ctx, base, ov, 0); err != nil {
			t.Fatal(err)
		}
		spec.Disks = []vmm.Disk{{Path: ov, Format: "qcow2"}}
		m, err := d.Restore(ctx, spec, snap)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Kill(context.Background()) })
		return m, waitEnvd(t, m)
	}
	// attack frees the data in a clone and waits until free-page
	// reporting has run: until done says so, or a minute.
	attack := func(t *testing.T, base string, done func() bool) {
		t.Helper()
		runIn(t, base, "rm /run/atk/data && sync")
		deadline := time.Now().Add(time.Minute)
		for !done() {
			if time.Now().After(deadline) {
				t.Fatal("free-page reporting did not run within a minute")
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a template with 64 MiB of data in guest RAM", func(t *testing.T) {
			m := boot(t, d, bootSpec(t, img, dir, "tpl", 256))
			base := waitEnvd(t, m)
			want = runIn(t, base, "mkdir -p /run/atk && mount -t tmpfs -o size=100m tmpfs /run/atk && "+
				"dd if=/dev/urandom of=/run/atk/data bs=1M count=64 2>/dev/null && md5sum /run/atk/data | cut -d' ' -f1")
			if _, err := m.Snapshot(ctx, tpl, true); err != nil {
				t.Fatal(err)
			}
			_ = m.Kill(ctx)
			_, tplSum, tplAlloc = memoryFile(t, tpl)
			if tplAlloc < 64<<20 {
				t.Fatalf("template memory holds %d bytes, less than the guest's data", tplAlloc)
			}
		}},
		{"a guarded clone frees it: QEMU's punches fail", func(t *testing.T) {
			m, base := restore(t, "clone-a", tpl)
			log := filepath.Join(m.(*qemu.Machine).Dir(), "qemu.log")
			attack(t, base, func() bool {
				b, _ := os.ReadFile(log)
				return bytes.Count(b, []byte("Failed to fallocate")) >= 8
			})
			_ = m.Kill(ctx)
			if _, sum, alloc := memoryFile(t, tpl); sum != tplSum || alloc != tplAlloc {
				t.Fatalf("the template's memory changed: %d bytes allocated, was %d", alloc, tplAlloc)
			}
		}},
		{"another clone reads the data intact", func(t *testing.T) {
			_, base := restore(t, "clone-b", tpl)
			if got := runIn(t, base, "md5sum /run/atk/data | cut -d' ' -f1"); got != want {
				t.Fatalf("md5 %s, want %s", got, want)
			}
		}},
		{"unguarded, the same clone punches holes into the file", func(t *testing.T) {
			cp := filepath.Join(dir, "template-copy")
			if out, err := exec.Command("cp", "-a", "--sparse=always", tpl, cp).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v: %s", err, out)
			}
			_, _, before := memoryFile(t, cp)
			qemu.SetUnguarded(d, true)
			defer qemu.SetUnguarded(d, false)
			m, base := restore(t, "clone-c", cp)
			attack(t, base, func() bool {
				_, _, alloc := memoryFile(t, cp)
				return alloc <= before-32<<20
			})
			_ = m.Kill(ctx)
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}
