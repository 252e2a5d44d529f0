package image

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/testenv"
)

// TestBootMinimalImage boots the minimal image under QEMU (TCG, microvm
// with ACPI) from a qcow2 overlay and waits for envd's /health through
// QEMU's user-mode network (a host port forwarded to the guest's 49983;
// traffic stays on this machine).
func TestBootMinimalImage(t *testing.T) {
	qemu := testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "qemu-img")
	img := minimalImage(t)
	baseInfo, err := os.Stat(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	overlay := filepath.Join(dir, "disk.qcow2")
	if err := disk.CreateOverlay(ctx, img.Rootfs, overlay, 0); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	serial := filepath.Join(dir, "serial.log")
	// Timer calibration under TCG is load-sensitive (a boot was seen
	// stuck after "Unable to calibrate against PIT"): give the TSC
	// frequency (TCG's TSC runs at the host's) and skip its watchdog.
	cmdline := "console=ttyS0 panic=-1 no_timer_check " + tscParams() +
		"ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
	args := []string{
		"-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "file:" + serial,
		"-kernel", img.Kernel, "-initrd", img.Initrd, "-append", cmdline,
		"-drive", "file=" + overlay + ",format=qcow2,if=none,id=root,cache=unsafe",
		"-device", "virtio-blk-device,drive=root",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:49983", port),
		"-device", "virtio-net-device,netdev=n0",
		"-no-reboot",
	}
	start := time.Now()
	cmd := exec.Command(qemu, args...)
	out, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("QEMU exited before envd answered: %v\n%s\n%s", err, readTail(filepath.Join(dir, "qemu.log")), readTail(serial))
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				break
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("envd did not answer %s within 60 s (last: %v); serial console:\n%s", url, err, readTail(serial))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("boot to envd /health: %s (TCG)", time.Since(start).Round(10*time.Millisecond))
	if !strings.Contains(readTail(serial), "switching root") {
		t.Errorf("serial console does not show the switch root:\n%s", readTail(serial))
	}
	// The guest wrote to its overlay, never to the template.
	if fi, err := os.Stat(img.Rootfs); err != nil || !fi.ModTime().Equal(baseInfo.ModTime()) || fi.Size() != baseInfo.Size() {
		t.Errorf("template rootfs changed by the boot: %v", err)
	}
}

// tscParams pins the guest's TSC frequency to the host's (from
// /proc/cpuinfo), or returns "" when it is unknown.
func tscParams() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return ""
		}
		return fmt.Sprintf("tsc_early_khz=%d tsc=reliable ", int(mhz*1000))
	}
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// readTail returns the last 6 KB of a log file.
func readTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(data) > 6000 {
		data = data[len(data)-6000:]
	}
	return string(data)
}
