package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/vmm"
)

func TestQemuArgs(t *testing.T) {
	// common is what every machine starts with.
	common := func(id string, accel vmm.Accel, cpu string) []string {
		return []string{
			"-name", id + ",process=capsule-vm",
			"-M", "microvm,acpi=on,memory-backend=mem",
			"-accel", string(accel),
			"-cpu", cpu,
			"-m", "512",
			"-smp", "2",
			"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
			"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
			"-chardev", "socket,id=con0,path=console.sock,server=on,wait=off",
			"-serial", "chardev:con0",
			"-qmp", "unix:qmp.sock,server=on,wait=off",
		}
	}
	spec := func(net *vmm.NetAttachment, disks ...vmm.Disk) vmm.Spec {
		return vmm.Spec{
			ID: "sb-1", Dir: "/run/capsule/sb-1", MemoryMB: 512, VCPUs: 2,
			Kernel: "/img/vmlinux", Initrd: "/img/initrd", Disks: disks, Net: net,
		}
	}
	rootfs := vmm.Disk{Path: "/data/sb-1/rootfs.qcow2", Format: "qcow2"}
	net := &vmm.NetAttachment{MAC: "02:00:00:00:00:01"}
	cat := func(parts ...[]string) []string { return slices.Concat(parts...) }
	// The expected arguments of the rootfs, a tap and user networking.
	rootfsArgs := []string{
		"-drive", "id=d0,if=none,file=/data/sb-1/rootfs.qcow2,format=qcow2,discard=unmap",
		"-device", "virtio-blk-device,drive=d0",
	}
	netDevice := []string{"-device", "virtio-net-device,netdev=n0,mac=02:00:00:00:00:01"}
	tapArgs := func(fd string) []string { return cat([]string{"-netdev", "tap,id=n0,fd=" + fd}, netDevice) }
	userNetArgs := func(port string) []string {
		return cat([]string{"-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:" + port + "-:49983"}, netDevice)
	}
	bootArgs := func(cmdline string) []string {
		return []string{"-kernel", "/img/vmlinux", "-initrd", "/img/initrd", "-append", cmdline}
	}
	sharedMem := []string{"-object", "memory-backend-file,id=mem,size=512M,share=on,mem-path=/dev/fd/3"}

	tests := []struct {
		name string
		cmd  qemuCommand
		want []string
	}{
		{
			name: "cold boot under KVM on a tap",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelKVM,
				cmdline: "console=ttyS0 panic=-1", memoryFD: 3, tapFD: 4,
			},
			want: cat(common("sb-1", vmm.AccelKVM, "host"), sharedMem, bootArgs("console=ttyS0 panic=-1"), rootfsArgs, tapArgs("4")),
		},
		{
			name: "cold boot under TCG with user networking",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelTCG,
				cmdline: "console=ttyS0 panic=-1 no_timer_check", memoryFD: 3, hostPort: 40123,
			},
			want: cat(common("sb-1", vmm.AccelTCG, "max"), sharedMem, bootArgs("console=ttyS0 panic=-1 no_timer_check"), rootfsArgs, userNetArgs("40123")),
		},
		{
			// A template's machine boots on shared memory too, so that its
			// snapshot can copy the memfd; no initrd, no network, a
			// read-only base disk and a writable one.
			name: "template boot with shared memory and a read-only disk",
			cmd: qemuCommand{
				spec: vmm.Spec{
					ID: "tpl,1", MemoryMB: 512, VCPUs: 2, Kernel: "/img/vmlinux",
					Disks: []vmm.Disk{
						{Path: "/img/base,v1.raw", Format: "raw", ReadOnly: true},
						{Path: "/data/tpl/scratch.qcow2", Format: "qcow2"},
					},
				},
				accel: vmm.AccelKVM, cmdline: "console=ttyS0 panic=-1 init=/sbin/envd", memoryFD: 3,
			},
			want: cat(common("tpl,,1", vmm.AccelKVM, "host"), sharedMem, []string{
				"-kernel", "/img/vmlinux",
				"-append", "console=ttyS0 panic=-1 init=/sbin/envd",
				"-drive", "id=d0,if=none,file=/img/base,,v1.raw,format=raw,discard=unmap,readonly=on",
				"-device", "virtio-blk-device,drive=d0",
				"-drive", "id=d1,if=none,file=/data/tpl/scratch.qcow2,format=qcow2,discard=unmap",
				"-device", "virtio-blk-device,drive=d1",
			}),
		},
		{
			// Free-page reporting: the balloon comes after every other
			// device, so those keep their virtio-mmio transports.
			name: "cold boot with the balloon",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelTCG,
				cmdline: "console=ttyS0", memoryFD: 3, tapFD: 4, balloon: true,
			},
			want: cat(common("sb-1", vmm.AccelTCG, "max"), sharedMem, bootArgs("console=ttyS0"), rootfsArgs, tapArgs("4"),
				[]string{"-device", "virtio-balloon-device,free-page-reporting=on"}),
		},
		{
			// A restore's balloon (its snapshot had one) comes before the
			// incoming flags.
			name: "restore of a machine with the balloon",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelKVM,
				privateMem: "/data/templates/t1/memory-1", tapFD: 3,
				incoming: true, devicesOnly: true, balloon: true,
			},
			want: cat(common("sb-1", vmm.AccelKVM, "host"), []string{
				"-object", "memory-backend-file,id=mem,size=512M,share=off,mem-path=/data/templates/t1/memory-1",
			}, rootfsArgs, tapArgs("3"), []string{
				"-device", "virtio-balloon-device,free-page-reporting=on",
				"-S", "-incoming", "defer",
				"-global", "migration.send-configuration=off",
				"-global", "migration.announce-rounds=0",
			}),
		},
		{
			// The snapshot's memory file is mapped copy-on-write; the
			// device state comes later through migrate-incoming.
			name: "restore from a template snapshot with private memory",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelKVM,
				privateMem: "/data/templates/t1/memory-20261207T041500-abcd", tapFD: 3,
				incoming: true, devicesOnly: true,
			},
			want: cat(common("sb-1", vmm.AccelKVM, "host"), []string{
				"-object", "memory-backend-file,id=mem,size=512M,share=off,mem-path=/data/templates/t1/memory-20261207T041500-abcd",
			}, rootfsArgs, tapArgs("3"), []string{
				"-S", "-incoming", "defer",
				"-global", "migration.send-configuration=off",
				"-global", "migration.announce-rounds=0",
			}),
		},
		{
			// CopyMemory: the snapshot's memory was copied into a memfd;
			// the state is a migration stream, which keeps its
			// configuration section.
			name: "resume from a migration stream with copied memory",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelTCG,
				cmdline: "ignored on restore", memoryFD: 3, hostPort: 40124, incoming: true,
			},
			want: cat(common("sb-1", vmm.AccelTCG, "max"), sharedMem, rootfsArgs, userNetArgs("40124"),
				[]string{"-S", "-incoming", "defer"}),
		},
		{
			// The translation cache is sized under TCG, ignored under KVM.
			name: "TCG translation cache size",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelTCG, tbSizeMB: 32,
				cmdline: "console=ttyS0", memoryFD: 3, tapFD: 4,
			},
			want: cat(common("sb-1", "tcg,tb-size=32", "max"), sharedMem, bootArgs("console=ttyS0"), rootfsArgs, tapArgs("4")),
		},
		{
			name: "no translation cache under KVM",
			cmd: qemuCommand{
				spec: spec(net, rootfs), accel: vmm.AccelKVM, tbSizeMB: 32,
				cmdline: "console=ttyS0", memoryFD: 3, tapFD: 4,
			},
			want: cat(common("sb-1", vmm.AccelKVM, "host"), sharedMem, bootArgs("console=ttyS0"), rootfsArgs, tapArgs("4")),
		},
		{
			name: "private memory path with a comma is escaped",
			cmd: qemuCommand{
				spec:       vmm.Spec{ID: "sb-2", MemoryMB: 512, VCPUs: 2},
				accel:      vmm.AccelTCG,
				privateMem: "/data/a,b/memory", incoming: true,
			},
			want: cat(common("sb-2", vmm.AccelTCG, "max"), []string{
				"-object", "memory-backend-file,id=mem,size=512M,share=off,mem-path=/data/a,,b/memory",
				"-S", "-incoming", "defer",
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := qemuArgs(tt.cmd)
			if !slices.Equal(got, tt.want) {
				t.Errorf("qemuArgs:\n got %s\nwant %s", strings.Join(got, " "), strings.Join(tt.want, " "))
				for i := range max(len(got), len(tt.want)) {
					var g, w string
					if i < len(got) {
						g = got[i]
					}
					if i < len(tt.want) {
						w = tt.want[i]
					}
					if g != w {
						t.Errorf("first difference at %d: got %q, want %q", i, g, w)
						break
					}
				}
			}
		})
	}
}

// TestPrepareNumbersInheritedFiles checks that prepare hands QEMU the
// descriptors in the order they are numbered: the memfd, then the tap,
// then the incoming stream (whose number start gives migrate-incoming).
func TestPrepareNumbersInheritedFiles(t *testing.T) {
	d := &Driver{binary: "qemu-system-x86_64", accel: vmm.AccelKVM}
	memfd, tap, state := newTestFile(t, "memfd"), newTestFile(t, "tap"), newTestFile(t, "state")
	spec := vmm.Spec{
		ID: "sb-3", MemoryMB: 512, VCPUs: 1, Kernel: "/img/vmlinux",
		Net: &vmm.NetAttachment{MAC: "02:00:00:00:00:03", Tap: tap},
	}
	rec, files, err := d.prepare(launchConfig{
		spec: spec, memfd: memfd, incoming: state, meta: &snapshotMeta{StateFormat: stateMigration},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{memfd.Name(), tap.Name(), state.Name()}; !slices.Equal(fileNames(files), want) {
		t.Errorf("inherited files %v, want %v", fileNames(files), want)
	}
	if rec.Memory != memShared || rec.MemoryFD != 3 {
		t.Errorf("record memory %q fd %d, want %q fd 3", rec.Memory, rec.MemoryFD, memShared)
	}
	want := qemuArgs(qemuCommand{spec: spec, accel: vmm.AccelKVM, memoryFD: 3, tapFD: 4, incoming: true})
	if !slices.Equal(rec.Args, want) {
		t.Errorf("args:\n got %s\nwant %s", strings.Join(rec.Args, " "), strings.Join(want, " "))
	}
}

func newTestFile(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func fileNames(files []*os.File) []string {
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	return names
}
