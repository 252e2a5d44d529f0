package qemu

import (
	"fmt"

	"github.com/capsulehq/capsule/internal/vmm"
)

// qemuCommand is everything QEMU's command line is made of. start fills it
// in, opening what must be opened and numbering the descriptors the
// process inherits (3, 4, … in the order they are added); qemuArgs turns
// it into arguments without looking at anything else.
type qemuCommand struct {
	spec  vmm.Spec
	accel vmm.Accel
	// tbSizeMB sizes TCG's translation cache (0: QEMU's default).
	tbSizeMB int
	// cmdline is the guest kernel's command line (see
	// Driver.kernelCmdline); a restore (incoming) boots no kernel.
	cmdline string
	// Guest RAM is either the shared memfd of descriptor memoryFD
	// (share=on: a boot, or a restore that copied the snapshot's memory)
	// or, when memoryFD is 0, privateMem: a snapshot's memory file mapped
	// copy-on-write (share=off).
	memoryFD   int
	privateMem string
	// With spec.Net set, the guest's network is the tap of descriptor
	// tapFD, or when tapFD is 0 QEMU's user-mode network, whose hostPort
	// on 127.0.0.1 is forwarded to the guest's envd port.
	tapFD    int
	hostPort int
	// incoming starts the machine stopped (-S), waiting for a migration
	// stream (-incoming defer; migrate-incoming names the descriptor).
	// devicesOnly says the stream is device state alone, which has no
	// configuration section.
	incoming    bool
	devicesOnly bool
	// balloon adds the virtio-balloon device with free-page reporting
	// (see the package documentation, Memory): every cold boot has one,
	// and a restore has one when the snapshot's machine had.
	balloon bool
}

// qemuArgs is the QEMU command line of c, without the binary. Sockets are
// relative to the process's working directory (the machine's Spec.Dir):
// a unix socket path must stay short.
func qemuArgs(c qemuCommand) []string {
	spec := c.spec
	args := []string{
		"-name", optEscape(spec.ID) + ",process=capsule-vm",
		"-M", "microvm,acpi=on,memory-backend=" + memBackend,
		"-accel", accelOption(c),
		"-cpu", cpuModel(c.accel),
		"-m", itoa(spec.MemoryMB),
		"-smp", itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		// The console: see console.go.
		"-chardev", "socket,id=con0,path=" + consoleSocket + ",server=on,wait=off",
		"-serial", "chardev:con0",
		"-qmp", "unix:" + qmpSocket + ",server=on,wait=off",
	}
	args = append(args, "-object", memoryObject(c))
	if !c.incoming {
		args = append(args, "-kernel", spec.Kernel)
		if spec.Initrd != "" {
			args = append(args, "-initrd", spec.Initrd)
		}
		args = append(args, "-append", c.cmdline)
	}
	for i, dk := range spec.Disks {
		drive := fmt.Sprintf("id=d%d,if=none,file=%s,format=%s,discard=unmap", i, optEscape(dk.Path), dk.Format)
		if dk.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=d%d", i))
	}
	if spec.Net != nil {
		if c.tapFD != 0 {
			args = append(args, "-netdev", "tap,id=n0,fd="+itoa(c.tapFD))
		} else {
			args = append(args, "-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d", c.hostPort, EnvdPort))
		}
		args = append(args, "-device", "virtio-net-device,netdev=n0,mac="+spec.Net.MAC)
	}
	if c.balloon {
		// Last, so that the other devices keep the transports they had
		// before machines had a balloon.
		args = append(args, "-device", "virtio-balloon-device,free-page-reporting=on")
	}
	if c.incoming {
		// -S: the guest stays stopped after the load until cont.
		args = append(args, "-S", "-incoming", "defer")
		if c.devicesOnly {
			args = append(args, "-global", "migration.send-configuration=off")
		}
		if spec.Net != nil && c.tapFD != 0 {
			// No announcement after the load: the tap's side holds the
			// guest's MAC as a permanent neighbour (package netslot), and
			// announcing would wake the guest for rounds of TCG work.
			args = append(args, "-global", "migration.announce-rounds=0")
		}
	}
	return args
}

// memoryObject is the guest RAM backend of c.
func memoryObject(c qemuCommand) string {
	mem := "memory-backend-file,id=" + memBackend + ",size=" + itoa(c.spec.MemoryMB) + "M"
	if c.memoryFD != 0 {
		return mem + ",share=on,mem-path=/dev/fd/" + itoa(c.memoryFD)
	}
	return mem + ",share=off,mem-path=" + optEscape(c.privateMem)
}

// accelOption is the -accel value of c: under TCG with the translation
// cache's size when one is set.
func accelOption(c qemuCommand) string {
	if c.accel == vmm.AccelTCG && c.tbSizeMB > 0 {
		return string(c.accel) + ",tb-size=" + itoa(c.tbSizeMB)
	}
	return string(c.accel)
}
