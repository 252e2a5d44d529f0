package guestinit

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"virtio_net.ko":                                   "virtio_net",
		"virtio-net.ko.xz":                                "virtio_net",
		"kernel/drivers/block/virtio_blk.ko.zst":          "virtio_blk",
		" virtio_mmio ":                                   "virtio_mmio",
		"/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko.gz":    "ext4",
		"crc32c-intel":                                    "crc32c_intel",
		"kernel/net/core/failover.ko\n":                   "failover",
		"not_a_module.txt":                                "not_a_module.txt",
		"kernel/drivers/net/net_failover.ko":              "net_failover",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko":  "virtio_pci_modern_dev",
		"kernel/drivers/virtio/virtio_pci_legacy_dev.ko ": "virtio_pci_legacy_dev",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPlanModules(t *testing.T) {
	mod := func(name string, deps ...string) Module {
		return Module{Name: name, Path: "/m/" + name + ".ko", Depends: deps}
	}
	// The virtio stack of a Debian cloud kernel.
	stack := []Module{
		mod("virtio_net", "net_failover", "virtio", "virtio_ring"),
		mod("net_failover", "failover"),
		mod("failover"),
		mod("virtio_blk", "virtio", "virtio_ring"),
		mod("virtio_mmio", "virtio", "virtio_ring"),
		mod("virtio"),
		mod("virtio_ring"),
		mod("ext4", "crc16", "mbcache", "jbd2"), // crc16 built in
		mod("mbcache"),
		mod("jbd2"),
	}
	tests := []struct {
		name  string
		mods  []Module
		order []string
		want  []string
		err   string
	}{
		{
			name: "no order: dependencies first, then by name",
			mods: stack,
			want: []string{"failover", "jbd2", "mbcache", "ext4", "net_failover", "virtio", "virtio_ring", "virtio_blk", "virtio_mmio", "virtio_net"},
		},
		{
			name:  "order is followed where dependencies allow",
			mods:  stack,
			order: []string{"virtio_mmio.ko", "virtio_ring.ko", "virtio.ko", "virtio-blk.ko", "virtio_net.ko"},
			// virtio_mmio (first) lifts virtio and virtio_ring to its rank.
			want: []string{"virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net", "jbd2", "mbcache", "ext4"},
		},
		{
			name:  "kernel modules.order paths and duplicates",
			mods:  []Module{mod("b"), mod("a"), mod("c")},
			order: []string{"kernel/x/c.ko", "kernel/x/b.ko", "kernel/x/c.ko"},
			want:  []string{"c", "b", "a"},
		},
		{
			name: "no dependency information",
			mods: []Module{mod("z"), mod("y"), mod("x")},
			want: []string{"x", "y", "z"},
		},
		{
			name: "self and repeated dependencies",
			mods: []Module{mod("a", "a", "b", "b"), mod("b")},
			want: []string{"b", "a"},
		},
		{name: "empty", want: nil},
		{name: "listed but missing", mods: []Module{mod("a")}, order: []string{"b.ko"}, err: "missing"},
		{name: "cycle", mods: []Module{mod("a", "b"), mod("b", "c"), mod("c", "a"), mod("d")}, err: "cycle among a, b, c"},
		{name: "duplicate", mods: []Module{mod("a"), {Name: "a", Path: "/m/a.ko.xz"}}, err: "twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanModules(tc.mods, tc.order)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(names(got), tc.want) {
				t.Fatalf("got %v, want %v", names(got), tc.want)
			}
		})
	}
}

// fakeModule writes a minimal ELF64 relocatable file with a .modinfo
// section holding the given NUL-separated strings.
func fakeModule(t *testing.T, path string, modinfo ...string) {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	shstrOff := infoOff + uint64(len(info))
	shOff := (shstrOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(binary.Write(&b, binary.LittleEndian, hdr))
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	must(binary.Write(&b, binary.LittleEndian, elf.Section64{}))
	must(binary.Write(&b, binary.LittleEndian, elf.Section64{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1}))
	must(binary.Write(&b, binary.LittleEndian, elf.Section64{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1}))
	must(os.WriteFile(path, b.Bytes(), 0o644))
}

func TestScanModulesAndOrderFile(t *testing.T) {
	dir := t.TempDir()
	fakeModule(t, filepath.Join(dir, "virtio_net.ko"), "license=GPL", "depends=net_failover,virtio_ring,virtio", "alias=virtio:d00000001v*", "name=virtio_net", "vermagic=6.1.0")
	fakeModule(t, filepath.Join(dir, "net_failover.ko"), "depends=failover", "name=net_failover")
	fakeModule(t, filepath.Join(dir, "failover.ko"), "depends=", "name=failover")
	fakeModule(t, filepath.Join(dir, "renamed-file.ko"), "name=virtio-ring") // .modinfo name wins
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "virtio.ko.xz"), []byte("not parsed"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "broken.ko"), []byte("not an ELF"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "README"), nil, 0o644))
	must(os.Mkdir(filepath.Join(dir, "sub.ko"), 0o755))

	mods, err := ScanModules(dir)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Module{}
	for _, m := range mods {
		byName[m.Name] = m
	}
	if len(mods) != 6 {
		t.Fatalf("modules: %v", names(mods))
	}
	if got := byName["virtio_net"].Depends; !reflect.DeepEqual(got, []string{"net_failover", "virtio_ring", "virtio"}) {
		t.Errorf("virtio_net depends %v", got)
	}
	if m, ok := byName["virtio_ring"]; !ok || filepath.Base(m.Path) != "renamed-file.ko" {
		t.Errorf("renamed module: %+v", m)
	}
	if byName["failover"].Depends != nil || byName["broken"].Depends != nil || byName["virtio"].Depends != nil {
		t.Errorf("unexpected dependencies: %+v", mods)
	}

	must(os.WriteFile(filepath.Join(dir, ModulesOrderFile), []byte("# load order\nkernel/drivers/virtio/virtio.ko\n\nkernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/net/virtio_net.ko\n"), 0o644))
	order, err := readModulesOrder(filepath.Join(dir, ModulesOrderFile))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := PlanModules(mods, order)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio", "virtio_ring", "failover", "net_failover", "virtio_net", "broken"}
	if !reflect.DeepEqual(names(plan), want) {
		t.Errorf("plan %v, want %v", names(plan), want)
	}
	if o, err := readModulesOrder(filepath.Join(dir, "absent")); o != nil || err != nil {
		t.Errorf("absent order file: %v %v", o, err)
	}
	if _, err := ScanModules(filepath.Join(dir, "absent")); err == nil {
		t.Error("ScanModules of a missing directory succeeded")
	}
}
