package guestinit

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeOps records the shutdown sequence. Children "exit" once the signal
// in dieOn has been sent.
type fakeOps struct {
	calls    []string
	dieOn    unix.Signal // 0: never
	alive    bool
	slept    time.Duration
	mounts   []MountInfo
	powerErr error
}

func (f *fakeOps) killAll(sig unix.Signal) error {
	f.calls = append(f.calls, "kill "+sig.String())
	if sig == f.dieOn {
		f.alive = false
	}
	return nil
}
func (f *fakeOps) reap(all bool) []Exit {
	if !all {
		f.calls = append(f.calls, "reap owned-too=false")
	}
	return nil
}
func (f *fakeOps) hasChildren() bool { return f.alive }
func (f *fakeOps) sync()             { f.calls = append(f.calls, "sync") }
func (f *fakeOps) mountTable() ([]MountInfo, error) {
	f.calls = append(f.calls, "mounttable")
	return f.mounts, nil
}
func (f *fakeOps) unmount(points []string) error {
	f.calls = append(f.calls, "unmount "+strings.Join(points, ","))
	return nil
}
func (f *fakeOps) remountRootReadOnly() error {
	f.calls = append(f.calls, "remount-ro")
	return nil
}
func (f *fakeOps) powerOff() error {
	f.calls = append(f.calls, "poweroff")
	return f.powerErr
}
func (f *fakeOps) sleep(d time.Duration) { f.slept += d }

func TestShutdownSequence(t *testing.T) {
	mounts := []MountInfo{{MountPoint: "/"}, {MountPoint: "/proc"}, {MountPoint: "/dev"}, {MountPoint: "/dev/pts"}}
	tests := []struct {
		name      string
		dieOn     unix.Signal
		wantCalls []string
		wantErr   string
		minSlept  time.Duration
	}{
		{
			name:  "children exit on SIGTERM",
			dieOn: unix.SIGTERM,
			wantCalls: []string{"kill terminated", "sync", "mounttable", "unmount /dev/pts,/dev,/proc",
				"remount-ro", "sync", "poweroff"},
		},
		{
			name:  "SIGKILL needed",
			dieOn: unix.SIGKILL,
			wantCalls: []string{"kill terminated", "kill killed", "sync", "mounttable", "unmount /dev/pts,/dev,/proc",
				"remount-ro", "sync", "poweroff"},
			minSlept: termGrace,
		},
		{
			name:  "stragglers survive everything",
			dieOn: 0,
			wantCalls: []string{"kill terminated", "kill killed", "sync", "mounttable", "unmount /dev/pts,/dev,/proc",
				"remount-ro", "sync", "poweroff"},
			wantErr:  "still running",
			minSlept: termGrace + killGrace,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeOps{dieOn: tc.dieOn, alive: true, mounts: mounts}
			err := shutdown(quietLog(), f)
			if !reflect.DeepEqual(f.calls, tc.wantCalls) {
				t.Errorf("calls\n got %q\nwant %q", f.calls, tc.wantCalls)
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
			if f.slept < tc.minSlept || f.slept > tc.minSlept+killGrace+time.Second {
				t.Errorf("slept %v, want about %v", f.slept, tc.minSlept)
			}
		})
	}

	f := &fakeOps{dieOn: unix.SIGTERM, alive: true, powerErr: errors.New("ENOSYS")}
	if err := shutdown(quietLog(), f); err == nil || !strings.Contains(err.Error(), "ENOSYS") {
		t.Errorf("power-off failure not reported: %v", err)
	}
}

// TestShutdownRefusesOutsidePID1 checks the guards without ever calling a
// system-wide operation: the real operations cannot even be built here.
func TestShutdownRefusesOutsidePID1(t *testing.T) {
	if ops, err := newInitOps(quietLog(), NewReaper(quietLog())); ops != nil || !errors.Is(err, errNotInit) {
		t.Fatalf("newInitOps outside PID 1 = %v, %v", ops, err)
	}
	// The per-operation guards hold even on a hand-made value.
	o := &initOps{log: quietLog(), reaper: NewReaper(quietLog())}
	if err := o.powerOff(); !errors.Is(err, errNotInit) {
		t.Fatalf("powerOff outside PID 1: %v", err)
	}
	if err := o.killAll(0); !errors.Is(err, errNotInit) { // signal 0 would only probe, anyway
		t.Fatalf("killAll outside PID 1: %v", err)
	}
	// Shutdown on a System returns instead of stopping the machine, and
	// stops its reaper.
	stopped := false
	s := &System{Reaper: NewReaper(quietLog()), stopReaper: func() { stopped = true }}
	done := make(chan struct{})
	go func() { s.Shutdown(quietLog()); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return outside PID 1")
	}
	if !stopped {
		t.Error("reaper not stopped")
	}
	var nilSys *System
	nilSys.Shutdown(nil)
}

func TestDescribeStatus(t *testing.T) {
	for ws, want := range map[unix.WaitStatus]string{
		7 << 8: "exit 7",
		9:      fmt.Sprintf("signal %s", unix.SIGKILL),
		0x137f: "status 4991", // stopped by SIGSTOP
	} {
		if got := describeStatus(ws); got != want {
			t.Errorf("describeStatus(%#x) = %q, want %q", int(ws), got, want)
		}
	}
}
