package image

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/testenv"
)

func TestBuildValidation(t *testing.T) {
	s, err := Open(t.TempDir(), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(t.TempDir(), "envd")
	os.WriteFile(notExec, []byte("x"), 0o644)
	tests := []struct {
		name    string
		opts    BuildOptions
		wantErr string
	}{
		{"unknown template", BuildOptions{Template: "fedora", EnvdBin: "/bin/sh"}, "unknown template"},
		{"no envd", BuildOptions{Template: "minimal"}, "no envd binary"},
		{"missing envd", BuildOptions{Template: "minimal", EnvdBin: "/nonexistent/envd"}, "no such file"},
		{"not executable", BuildOptions{Template: "minimal", EnvdBin: notExec}, "not an executable"},
		{"dynamic envd", BuildOptions{Template: "minimal", EnvdBin: "/bin/ls"}, "dynamically linked"},
		{"tiny disk", BuildOptions{Template: "minimal", EnvdBin: "/bin/ls", DiskSizeMB: 4}, "too small"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Build(context.Background(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	if _, err := s.Get(context.Background(), "minimal"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get in an empty store: %v", err)
	}
}

func TestMinimalImage(t *testing.T) {
	img := minimalImage(t)
	envd := testEnvd(t)
	u := guestUID
	checkFiles(t, img.Rootfs, []fileCheck{
		{path: GuestEnvdPath, typ: "regular", mode: 0o755, uid: 0, gid: 0},
		{path: "/bin/busybox", typ: "regular", mode: 0o755, uid: 0, gid: 0},
		{path: "/bin/sh", typ: "symlink", mode: -1, uid: 0, gid: 0, link: "/bin/busybox"},
		{path: "/usr/bin/env", typ: "symlink", mode: -1, uid: -1, gid: -1, link: "/bin/busybox"},
		{path: "/home/user", typ: "directory", mode: 0o755, uid: u, gid: u},
		{path: "/root", typ: "directory", mode: 0o700, uid: 0, gid: 0},
		{path: "/tmp", typ: "directory", mode: 0o1777, uid: 0, gid: 0},
		{path: "/proc", typ: "directory", mode: -1, uid: 0, gid: 0},
		{path: "/sys", typ: "directory", mode: -1, uid: 0, gid: 0},
		{path: "/dev", typ: "directory", mode: -1, uid: 0, gid: 0},
		{path: "/run", typ: "directory", mode: -1, uid: 0, gid: 0},
		{path: "/etc/passwd", typ: "regular", mode: 0o644, uid: 0, gid: 0},
		{path: "/etc/group", typ: "regular", mode: 0o644, uid: 0, gid: 0},
		{path: "/etc/shadow", typ: "regular", mode: 0o640, uid: 0, gid: 0},
		{path: "/etc/hostname", typ: "regular", mode: 0o644, uid: 0, gid: 0},
		{path: "/etc/hosts", typ: "regular", mode: 0o644, uid: 0, gid: 0},
	})
	passwd := debugfs(t, img.Rootfs, "cat /etc/passwd")
	for _, want := range []string{"root:x:0:0:root:/root:/bin/sh\n", "user:x:1000:1000::/home/user:/bin/sh\n"} {
		if !strings.Contains(passwd, want) {
			t.Errorf("/etc/passwd lacks %q:\n%s", want, passwd)
		}
	}
	if group := debugfs(t, img.Rootfs, "cat /etc/group"); !strings.Contains(group, "user:x:1000:\n") {
		t.Errorf("/etc/group lacks user:\n%s", group)
	}
	if h := debugfs(t, img.Rootfs, "cat /etc/hostname"); h != guestHostname+"\n" {
		t.Errorf("/etc/hostname = %q", h)
	}
	// The ls -l listing agrees with stat (debugfs prints mode, uid, gid).
	if ls := debugfs(t, img.Rootfs, "ls -l /home"); !regexp.MustCompile(`40755 \(2\)\s+1000\s+1000 .* user`).MatchString(ls) {
		t.Errorf("ls -l /home:\n%s", ls)
	}
	// envd in the image is the envd given.
	dumped := filepath.Join(t.TempDir(), "envd")
	debugfs(t, img.Rootfs, "dump "+GuestEnvdPath+" "+dumped)
	if a, b := mustHash(t, dumped), mustHash(t, envd); a != b {
		t.Errorf("envd in the image differs from %s", envd)
	}
	checkSparseWithFreeSpace(t, img, 100<<20)
	checkInitramfs(t, img, envd)
}

// checkSparseWithFreeSpace checks the rootfs file's size, that it is
// sparse, and that the filesystem has at least free bytes free.
func checkSparseWithFreeSpace(t *testing.T, img *Image, free int64) {
	t.Helper()
	fi, err := os.Stat(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != img.SizeBytes {
		t.Errorf("rootfs is %d bytes, image says %d", fi.Size(), img.SizeBytes)
	}
	used := fi.Sys().(*syscall.Stat_t).Blocks * 512
	if used >= fi.Size()/2 {
		t.Errorf("rootfs uses %d of %d bytes: not sparse", used, fi.Size())
	}
	out, err := exec.Command("dumpe2fs", "-h", img.Rootfs).Output()
	if err != nil {
		t.Fatalf("dumpe2fs: %v", err)
	}
	field := func(name string) int64 {
		m := regexp.MustCompile(`(?m)^` + name + `:\s+(\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("dumpe2fs: no %s", name)
		}
		v, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return v
	}
	if got := field("Free blocks") * field("Block size"); got < free {
		t.Errorf("filesystem has %d bytes free, want at least %d", got, free)
	}
	if field("Reserved block count") != 0 {
		t.Errorf("blocks reserved for root")
	}
	t.Logf("rootfs %s: %d MiB, %d MiB allocated", img.Template, fi.Size()>>20, used>>20)
}

// checkInitramfs reads the initramfs back and checks the contract with
// package guestinit.
func checkInitramfs(t *testing.T, img *Image, envd string) {
	t.Helper()
	data, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	envdData, err := os.ReadFile(envd)
	if err != nil {
		t.Fatal(err)
	}
	members := map[string]cpioMember{}
	for _, m := range readCPIO(t, data) {
		if _, dup := members[m.Name]; dup {
			t.Errorf("%s twice in the initramfs", m.Name)
		}
		members[m.Name] = m
	}
	if m := members["init"]; m.Mode != cpioReg|0o755 || !bytes.Equal(m.Data, envdData) {
		t.Errorf("/init: mode %o, %d bytes; want envd (%d bytes), 0755", m.Mode, len(m.Data), len(envdData))
	}
	if m, ok := members["dev/console"]; !ok || m.Mode != cpioChr|0o600 || m.Major != 5 || m.Minor != 1 {
		t.Errorf("/dev/console: %+v", describe(m))
	}
	if m, ok := members[initrdMarker]; !ok || m.Mode != cpioReg|0o644 || len(m.Data) != 0 {
		t.Errorf("marker: %s", describe(m))
	}
	order, ok := members[initrdModulesDir+"/"+modulesOrder]
	if !ok {
		t.Fatal("no modules.order")
	}
	// The guest's drivers and what they need, in load order: disk,
	// network, and the balloon (free-page reporting).
	lines := strings.Fields(string(order.Data))
	want := []string{"virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko", "failover.ko", "net_failover.ko",
		"virtio_net.ko", "virtio_balloon.ko"}
	if !slices.Equal(lines, want) {
		t.Errorf("modules.order lists %v, want %v", lines, want)
	}
	kernelMods := filepath.Join(filepath.Dir(img.Kernel), kernelModDir)
	for _, l := range lines {
		m, ok := members[initrdModulesDir+"/"+l]
		want, err := os.ReadFile(filepath.Join(kernelMods, l))
		if !ok || err != nil || !bytes.Equal(m.Data, want) {
			t.Errorf("module %s: in initramfs %v, in kernel artifact err %v", l, ok, err)
		}
	}
	t.Logf("initramfs: %d bytes, %d entries", len(data), len(members))
}

func mustHash(t *testing.T, path string) string {
	t.Helper()
	h, err := fileHash(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// variantEnvd copies envd with extra bytes appended (still a valid ELF
// executable with a different hash).
func variantEnvd(t *testing.T, envd, tag string) string {
	t.Helper()
	data, err := os.ReadFile(envd)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "envd-"+tag)
	if err := os.WriteFile(p, append(data, []byte("capsule-test-"+tag)...), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestContentAddressing(t *testing.T) {
	img1 := minimalImage(t)
	s := testStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rootfsInfo, _ := os.Stat(img1.Rootfs)

	// Same inputs: a cache hit, nothing rebuilt.
	start := time.Now()
	again, err := s.Build(ctx, BuildOptions{Template: "minimal", EnvdBin: testEnvd(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cache hit took %s", time.Since(start))
	if *again != *img1 {
		t.Fatalf("second build:\n%+v\nfirst:\n%+v", again, img1)
	}
	if fi, _ := os.Stat(img1.Rootfs); !fi.ModTime().Equal(rootfsInfo.ModTime()) {
		t.Error("rootfs was rewritten")
	}

	// A new envd: new initramfs and rootfs, same kernel.
	envd2 := variantEnvd(t, testEnvd(t), "v2")
	img2, err := s.Build(ctx, BuildOptions{Template: "minimal", EnvdBin: envd2})
	if err != nil {
		t.Fatal(err)
	}
	if img2.Kernel != img1.Kernel {
		t.Errorf("kernel rebuilt: %s vs %s", img2.Kernel, img1.Kernel)
	}
	if img2.Initrd == img1.Initrd || img2.Rootfs == img1.Rootfs || img2.ID == img1.ID {
		t.Errorf("new envd but same artifacts: %+v", img2)
	}
	// Another size: new rootfs only.
	img3, err := s.Build(ctx, BuildOptions{Template: "minimal", EnvdBin: envd2, DiskSizeMB: 96})
	if err != nil {
		t.Fatal(err)
	}
	if img3.Initrd != img2.Initrd || img3.Kernel != img1.Kernel || img3.Rootfs == img2.Rootfs || img3.SizeBytes != 96<<20 {
		t.Errorf("size change: %+v", img3)
	}

	// Get resolves names, IDs and ID prefixes; List has all three.
	for ref, want := range map[string]string{img1.ID: img1.ID, img2.ID[:8]: img2.ID, img3.ID: img3.ID} {
		if got, err := s.Get(ctx, ref); err != nil || got.ID != want {
			t.Errorf("Get(%s) = %v, %v; want %s", ref, got, err, want)
		}
	}
	if got, err := s.Get(ctx, "minimal"); err != nil || got.Template != "minimal" {
		t.Errorf("Get(minimal) = %v, %v", got, err)
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, img := range list {
		ids[img.ID] = true
	}
	if !ids[img1.ID] || !ids[img2.ID] || !ids[img3.ID] {
		t.Errorf("List = %v", ids)
	}

	// Removing img2 and img3 deletes their own artifacts only.
	for _, img := range []*Image{img2, img3} {
		removed, err := s.Remove(ctx, img.ID)
		if err != nil || len(removed) != 1 || removed[0].ID != img.ID {
			t.Fatalf("Remove(%s) = %v, %v", img.ID, removed, err)
		}
	}
	for _, p := range []string{img2.Initrd, img2.Rootfs, img3.Rootfs} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived its image: %v", p, err)
		}
	}
	if !s.complete(img1) {
		t.Error("removing other images broke the first")
	}
	if _, err := s.Get(ctx, img2.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(removed) = %v", err)
	}
}

// TestConcurrentBuilds runs two builders of the same new image at once:
// the store lock serializes them and the second finds the first's result.
func TestConcurrentBuilds(t *testing.T) {
	minimalImage(t)
	s := testStore(t)
	envd := variantEnvd(t, testEnvd(t), "concurrent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// A second Store on the same directory, as another process would have.
	s2, err := Open(filepath.Dir(s.Dir()), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	imgs := make([]*Image, 2)
	errs := make([]error, 2)
	for i, st := range []*Store{s, s2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs[i], errs[i] = st.Build(ctx, BuildOptions{Template: "minimal", EnvdBin: envd})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if *imgs[0] != *imgs[1] {
		t.Fatalf("two builders, two results:\n%+v\n%+v", imgs[0], imgs[1])
	}
	if _, err := s.Remove(ctx, imgs[0].ID); err != nil {
		t.Fatal(err)
	}
}

func TestBaseImage(t *testing.T) {
	requireImageTools(t)
	testenv.RequireCommand(t, "debootstrap")
	s := testStore(t)
	envd := testEnvd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := s.Build(ctx, BuildOptions{Template: "base", EnvdBin: envd})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("base built in %s", time.Since(start))
	u := guestUID
	checkFiles(t, img.Rootfs, []fileCheck{
		{path: GuestEnvdPath, typ: "regular", mode: 0o755, uid: 0, gid: 0},
		{path: "/home/user", typ: "directory", mode: 0o755, uid: u, gid: u},
		{path: "/home/user/.bashrc", typ: "regular", mode: 0o644, uid: u, gid: u},
		{path: "/code", typ: "directory", mode: 0o755, uid: u, gid: u},
		{path: "/usr/local", typ: "directory", mode: 0o777, uid: 0, gid: 0},
		{path: "/usr/local/bin", typ: "directory", mode: 0o777, uid: 0, gid: 0},
		{path: "/etc/sudoers.d/user", typ: "regular", mode: 0o440, uid: 0, gid: 0},
		{path: "/usr/bin/sudo", typ: "regular", mode: 0o4755, uid: 0, gid: 0},
		{path: "/usr/bin/python", typ: "symlink", mode: -1, uid: 0, gid: 0, link: "python3"},
		{path: "/root", typ: "directory", mode: 0o700, uid: 0, gid: 0},
		{path: "/tmp", typ: "directory", mode: 0o1777, uid: 0, gid: 0},
	})
	for _, p := range []string{"/usr/bin/bash", "/usr/bin/python3", "/usr/bin/git", "/usr/bin/curl", "/usr/bin/ps",
		"/usr/bin/less", "/usr/bin/ip", "/usr/bin/realpath", "/usr/bin/kill", "/etc/ssl/certs/ca-certificates.crt"} {
		if statPath(t, img.Rootfs, p) == nil {
			t.Errorf("%s missing", p)
		}
	}
	for _, p := range []string{"/usr/bin/mcp-gateway", "/usr/local/bin/mcp-gateway", "/etc/resolv.conf"} {
		if statPath(t, img.Rootfs, p) != nil {
			t.Errorf("%s present", p)
		}
	}
	if got := debugfs(t, img.Rootfs, "cat /etc/sudoers.d/user"); got != "user ALL=(ALL:ALL) NOPASSWD: ALL\n" {
		t.Errorf("sudoers: %q", got)
	}
	passwd := debugfs(t, img.Rootfs, "cat /etc/passwd")
	if !strings.Contains(passwd, "\nuser:x:1000:1000::/home/user:/bin/bash\n") || !strings.HasPrefix(passwd, "root:x:0:0:root:/root:") {
		t.Errorf("/etc/passwd:\n%s", passwd)
	}
	if group := debugfs(t, img.Rootfs, "cat /etc/group"); !regexp.MustCompile(`(?m)^sudo:x:27:(.*,)?user$`).MatchString(group) {
		t.Errorf("user not in group sudo:\n%s", group)
	}
	checkSparseWithFreeSpace(t, img, 1<<30)

	// Built again: answered from the store.
	again, err := s.Build(ctx, BuildOptions{Template: "base", EnvdBin: envd})
	if err != nil || *again != *img {
		t.Fatalf("second base build: %+v, %v", again, err)
	}
}
