package qemu_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/vmm/qemu"
	"github.com/capsulehq/capsule/internal/vmm/vmmtest"
)

// TestConsoleLogCapped lets a guest flood its serial console: the log never
// grows past its cap (plus one rotated file), the newest output is in the
// log, and while no agent reads the console (detached, as between an
// agent's exit and the next one's Adopt) the guest does not stall on it.
// The adopting driver logs the console again.
func TestConsoleLogCapped(t *testing.T) {
	d, img := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const capBytes = 16 << 10
	spec := bootSpec(t, img, t.TempDir(), "spam", 256)
	spec.ConsoleLogMax = capBytes
	m := boot(t, d, spec)
	envdURL := "http://" + m.HostForward()
	logPath := m.ConsoleLog()

	// spam writes about 120 KiB (7.5 times the cap) to the serial port,
	// the last line being the marker.
	spam := func(marker string) string {
		return fmt.Sprintf(`i=0; while [ $i -lt 2000 ]; do echo "spam $i ........................................................"; i=$((i+1)); done >/dev/ttyS0; echo %s >/dev/ttyS0`, marker)
	}
	sizes := func(t *testing.T) (cur, prev int64) {
		t.Helper()
		for i, p := range []string{logPath, logPath + ".1"} {
			fi, err := os.Stat(p)
			if i == 1 && errors.Is(err, os.ErrNotExist) {
				break // not rotated yet
			}
			if err != nil {
				t.Fatalf("console log: %v", err)
			}
			if fi.Size() > capBytes {
				t.Fatalf("%s has %d bytes, over the cap of %d", p, fi.Size(), capBytes)
			}
			if i == 0 {
				cur = fi.Size()
			} else {
				prev = fi.Size()
			}
		}
		return cur, prev
	}
	// waitLogged waits until the marker reached the log (the copy runs
	// behind the guest), checking the cap all along.
	waitLogged := func(t *testing.T, marker string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			sizes(t)
			b, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(marker)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q never reached the console log; it ends with %q", marker, b[max(0, len(b)-200):])
			}
			time.Sleep(50 * time.Millisecond) // polling the file the copy writes
		}
	}

	if !t.Run("the boot is logged", func(t *testing.T) {
		// The kernel prints its banner first, once the serial console
		// registers: the driver is connected by then.
		waitLogged(t, "Linux version")
	}) {
		return
	}
	if !t.Run("a flooding guest stays within the cap", func(t *testing.T) {
		if _, err := vmmtest.RunInGuest(ctx, envdURL, spam("SPAM-DONE-1")); err != nil {
			t.Fatal(err)
		}
		waitLogged(t, "SPAM-DONE-1")
		if _, prev := sizes(t); prev == 0 {
			t.Fatal("no rotated log after 7 times the cap")
		}
	}) {
		return
	}

	if !t.Run("nobody reads: the guest does not stall and nothing is logged", func(t *testing.T) {
		m.Detach()
		before, _ := sizes(t)
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Minute)
		defer rcancel()
		if _, err := vmmtest.RunInGuest(rctx, envdURL, spam("SPAM-DONE-2")); err != nil {
			t.Fatalf("flooding an unread console: %v", err)
		}
		if after, _ := sizes(t); after != before {
			t.Fatalf("the log changed from %d to %d bytes while detached", before, after)
		}
	}) {
		return
	}

	t.Run("an adopting driver logs the console again", func(t *testing.T) {
		d2, err := qemu.New(ctx, qemu.Options{UserNet: true, Accel: d.Accel(), Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		a, err := d2.Adopt(ctx, m.Dir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Kill(context.Background()) })
		if _, err := vmmtest.RunInGuest(ctx, envdURL, spam("SPAM-DONE-3")); err != nil {
			t.Fatal(err)
		}
		waitLogged(t, "SPAM-DONE-3")
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("SPAM-DONE-2")) {
			t.Fatal("output written while detached reached the log")
		}
		if err := a.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		sizes(t)
	})
}
