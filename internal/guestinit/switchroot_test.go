package guestinit

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSwitchRootConfigResolve(t *testing.T) {
	bp := func(cmdline string) *BootParams {
		p, err := ParseCmdline(cmdline)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	defaults := SwitchRootConfig{
		ModulesDir: InitramfsModulesDir, Device: "/dev/vda", FSType: "ext4", NewRoot: DefaultNewRoot,
		Init: DefaultInit, Args: []string{}, DeviceWait: 10 * time.Second,
	}
	tests := []struct {
		name string
		in   SwitchRootConfig
		bp   *BootParams
		want SwitchRootConfig
		err  string
	}{
		{name: "defaults", in: SwitchRootConfig{Args: []string{}}, want: defaults},
		{name: "nil params", in: SwitchRootConfig{Args: []string{}}, want: defaults},
		{
			name: "from the command line",
			in:   SwitchRootConfig{Args: []string{}},
			bp:   bp("root=vdb rootfstype=xfs rootflags=noatime ro init=/sbin/init"),
			want: SwitchRootConfig{
				ModulesDir: InitramfsModulesDir, Device: "/dev/vdb", FSType: "xfs", Options: "noatime", ReadOnly: true,
				NewRoot: DefaultNewRoot, Init: "/sbin/init", Args: []string{}, DeviceWait: 10 * time.Second,
			},
		},
		{
			name: "config wins",
			in:   SwitchRootConfig{Device: "/dev/sda", FSType: "ext2", Init: "/bin/x", NewRoot: "/r", ModulesDir: "/m", Args: []string{"-v"}, DeviceWait: time.Second},
			bp:   bp("root=/dev/vdb rootfstype=xfs init=/sbin/init"),
			want: SwitchRootConfig{ModulesDir: "/m", Device: "/dev/sda", FSType: "ext2", NewRoot: "/r", Init: "/bin/x", Args: []string{"-v"}, DeviceWait: time.Second},
		},
		{name: "UUID", bp: bp("root=UUID=1234"), err: "only device paths"},
		{name: "relative init", bp: bp("init=sbin/init"), err: "absolute"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.resolve(tc.bp)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestRemoveTreeOnDevice(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(outside, "precious"), []byte("x"), 0o644))
	must(os.MkdirAll(filepath.Join(root, "lib/modules/sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "init"), []byte("elf"), 0o755))
	must(os.WriteFile(filepath.Join(root, "lib/modules/virtio.ko"), nil, 0o644))
	must(os.WriteFile(filepath.Join(root, "lib/modules/sub/x"), nil, 0o444))
	must(os.Symlink(outside, filepath.Join(root, "link-to-outside")))
	must(os.MkdirAll(filepath.Join(root, "newroot/usr"), 0o755))
	must(os.WriteFile(filepath.Join(root, "newroot/usr/keep"), nil, 0o644))

	if err := removeTreeOnDevice(root, filepath.Join(root, "newroot")); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "newroot" {
		t.Errorf("left in root: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(root, "newroot/usr/keep")); err != nil {
		t.Errorf("kept tree damaged: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "precious")); err != nil {
		t.Errorf("followed a symlink out of the tree: %v", err)
	}
	if err := removeTreeOnDevice(filepath.Join(root, "absent"), ""); err == nil {
		t.Error("missing directory accepted")
	}
}

func TestInitramfsGuards(t *testing.T) {
	// Not PID 1 here: neither detection nor the switch may proceed.
	if InInitramfs() {
		t.Fatal("InInitramfs is true in a test")
	}
	if err := SwitchRoot(quietLog(), SwitchRootConfig{}); err == nil || !strings.Contains(err.Error(), "not PID 1") {
		t.Fatalf("SwitchRoot outside PID 1: %v", err)
	}
}

func TestWaitPath(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vda")
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = os.WriteFile(p, nil, 0o600)
	}()
	if err := waitPath(p, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := waitPath(filepath.Join(dir, "vdb"), 30*time.Millisecond); err == nil || !strings.Contains(err.Error(), "did not appear") {
		t.Fatalf("missing device: %v", err)
	}
}
