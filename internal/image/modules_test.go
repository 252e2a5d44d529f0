package image

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/kmod"
	"github.com/capsulehq/capsule/internal/testenv"
)

func TestModuleClosure(t *testing.T) {
	// A fake module graph: paths are "/m/<name>.ko", deps come from a map.
	graph := map[string][]string{
		"virtio_mmio":    {"virtio", "virtio_ring"},
		"virtio_blk":     {"virtio", "virtio_ring"},
		"virtio_net":     {"net_failover", "virtio", "virtio_ring"},
		"virtio_balloon": {"virtio", "virtio_ring"},
		"net_failover":   {"failover"},
		"virtio":         {"virtio_ring"},
		"virtio_ring":    nil,
		"failover":       nil,
		"loop_a":         {"loop_b"},
		"loop_b":         {"loop_a"},
		"broken":         {"absent"},
	}
	idx := map[string]string{}
	for n := range graph {
		idx[n] = "/m/" + n + ".ko"
	}
	deps := func(path string) ([]string, error) {
		return graph[strings.TrimSuffix(filepath.Base(path), ".ko")], nil
	}
	tests := []struct {
		name    string
		want    []string
		order   []string
		wantErr string
	}{
		{
			name:  "guest modules",
			want:  GuestModules,
			order: []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net", "virtio_balloon"},
		},
		{name: "built in is skipped", want: []string{"ext4", "virtio"}, order: []string{"virtio_ring", "virtio"}},
		{name: "dashes are underscores", want: []string{"virtio-ring"}, order: []string{"virtio_ring"}},
		{name: "cycle", want: []string{"loop_a"}, wantErr: "cycle: loop_a → loop_b → loop_a"},
		{name: "missing dependency", want: []string{"broken"}, wantErr: "absent (needed by broken) not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mods, err := moduleClosure(idx, tt.want, deps)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range mods {
				got = append(got, m.Name)
			}
			if !reflect.DeepEqual(got, tt.order) {
				t.Fatalf("order = %v, want %v", got, tt.order)
			}
		})
	}
}

// TestKernelFromDebianPackage builds the kernel artifact from the real
// Debian package and checks the module closure and its order against the
// modules' own .modinfo.
func TestKernelFromDebianPackage(t *testing.T) {
	for _, c := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		testenv.RequireCommand(t, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := testStore(t)
	l, err := s.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer l.unlock()
	src, key, err := s.resolveKernel(ctx, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(src.apt.Name, "linux-image-") || src.apt.Name == DefaultKernelPackage || src.apt.Version == "" {
		t.Fatalf("resolved %s to %+v, want a concrete versioned package", DefaultKernelPackage, src.apt)
	}
	k, err := s.ensureKernel(ctx, src, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bzImageVersion(filepath.Join(k.Dir, kernelImageFile)); err != nil {
		t.Errorf("vmlinuz: %v", err)
	}
	if !strings.Contains(src.apt.Name, k.Version) {
		t.Errorf("kernel version %q does not match package %s", k.Version, src.apt.Name)
	}

	wantSet := map[string]bool{}
	for _, m := range []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net", "virtio_balloon"} {
		wantSet[m+".ko"] = true
	}
	order, err := os.ReadFile(filepath.Join(k.modulesDir(), modulesOrder))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(order))
	if !reflect.DeepEqual(lines, k.Modules) {
		t.Errorf("modules.order %v, kernel.json %v", lines, k.Modules)
	}
	loaded := map[string]bool{}
	for _, file := range lines {
		if !wantSet[file] {
			t.Errorf("unexpected module %s", file)
		}
		info, err := kmod.ReadInfo(filepath.Join(k.modulesDir(), file))
		name, deps := info.Name, info.Depends
		if err != nil {
			t.Fatal(err)
		}
		if name+".ko" != file {
			t.Errorf("%s: .modinfo name is %s", file, name)
		}
		for _, d := range deps {
			if !loaded[d] {
				t.Errorf("%s is loaded before its dependency %s", file, d)
			}
		}
		loaded[name] = true
	}
	if len(lines) != len(wantSet) {
		t.Errorf("modules %v, want the %d of %v", lines, len(wantSet), wantSet)
	}
	ents, _ := os.ReadDir(k.modulesDir())
	if len(ents) != len(wantSet)+1 {
		t.Errorf("modules directory holds %d files, want the modules and modules.order", len(ents))
	}

	// Resolving again is answered from the store's apt cache, and the
	// artifact is found, not rebuilt.
	src2, key2, err := s.resolveKernel(ctx, BuildOptions{})
	if err != nil || key2 != key || src2.apt != src.apt {
		t.Fatalf("second resolution: %+v %s %v", src2.apt, key2, err)
	}
	if k2, err := s.ensureKernel(ctx, src2, key2); err != nil || k2.Dir != k.Dir {
		t.Fatalf("second ensureKernel: %v %v", k2, err)
	}
	t.Logf("kernel %s: modules %v", k.Version, lines)
}

// TestKernelFromFiles builds kernel artifacts from a local .deb and from a
// bare bzImage (no modules: a kernel with its drivers built in).
func TestKernelFromFiles(t *testing.T) {
	for _, c := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		testenv.RequireCommand(t, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := testStore(t)
	l, err := s.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer l.unlock()
	src, key, err := s.resolveKernel(ctx, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aptKernel, err := s.ensureKernel(ctx, src, key)
	if err != nil {
		t.Fatal(err)
	}
	deb, err := s.cachedDeb(ctx, src.apt)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		file    string
		modules []string
	}{
		{"deb", deb, aptKernel.Modules},
		{"bzImage", filepath.Join(aptKernel.Dir, kernelImageFile), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, key, err := s.resolveKernel(ctx, BuildOptions{KernelDeb: tt.file})
			if err != nil {
				t.Fatal(err)
			}
			if key == aptKernel.Key {
				t.Fatal("a file source has the apt source's key")
			}
			k, err := s.ensureKernel(ctx, src, key)
			if err != nil {
				t.Fatal(err)
			}
			if k.Version != aptKernel.Version || !reflect.DeepEqual(k.Modules, tt.modules) {
				t.Fatalf("kernel from %s: version %q modules %v; want %q %v", tt.name, k.Version, k.Modules, aptKernel.Version, tt.modules)
			}
			if mustHash(t, filepath.Join(k.Dir, kernelImageFile)) != mustHash(t, filepath.Join(aptKernel.Dir, kernelImageFile)) {
				t.Fatal("different vmlinuz")
			}
		})
	}
	if _, _, err := s.resolveKernel(ctx, BuildOptions{KernelDeb: "/etc/hostname"}); err == nil {
		t.Fatal("a text file was accepted as a kernel")
	}
	if _, err := bzImageVersion("/etc/passwd"); err == nil {
		t.Fatal("bzImageVersion accepted /etc/passwd")
	}
}
