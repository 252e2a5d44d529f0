package image

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// minimalTemplate is busybox (static) plus envd: a root filesystem of a
// few MB that boots fast, for tests and as a smallest sandbox.
type minimalTemplate struct{}

func (minimalTemplate) defaultSizeMB() int { return 128 }

func (minimalTemplate) key(ctx context.Context, s *Store, opts BuildOptions, k *keyer) error {
	bb, err := staticBusybox()
	if err != nil {
		return err
	}
	h, err := fileHash(bb)
	if err != nil {
		return err
	}
	k.add("busybox", h)
	return nil
}

func (minimalTemplate) stage(ctx context.Context, s *Store, opts BuildOptions, root string) error {
	bb, err := staticBusybox()
	if err != nil {
		return err
	}
	dirs := []struct {
		path string
		mode os.FileMode
		o    owner
	}{
		{"bin", 0o755, rootOwner},
		{"sbin", 0o755, rootOwner},
		{"usr/bin", 0o755, rootOwner},
		{"usr/sbin", 0o755, rootOwner},
		{"usr/local/bin", 0o755, rootOwner},
		{"etc", 0o755, rootOwner},
		{"root", 0o700, rootOwner},
		{"home", 0o755, rootOwner},
		{"home/" + guestUser, 0o755, owner{guestUID, guestUID}},
		{"tmp", os.ModeSticky | 0o777, rootOwner},
		{"var/tmp", os.ModeSticky | 0o777, rootOwner},
		{"proc", 0o555, rootOwner},
		{"sys", 0o555, rootOwner},
		{"dev", 0o755, rootOwner},
		{"run", 0o755, rootOwner},
	}
	for _, d := range dirs {
		if err := stageDir(root, d.path, d.mode, d.o); err != nil {
			return err
		}
	}
	if err := stageCopy(root, "bin/busybox", bb, 0o755, rootOwner); err != nil {
		return err
	}
	out, err := runCommand(ctx, s.log, "", bb, "--list-full")
	if err != nil {
		return fmt.Errorf("busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		if err := stageSymlink(root, applet, "/bin/busybox"); err != nil {
			return err
		}
	}
	files := []struct {
		name, data string
		mode       os.FileMode
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644},
		{"etc/shadow", "root:*::0:99999:7:::\n", 0o640},
		{"etc/group", "root:x:0:\ntty:x:5:\nsudo:x:27:\nusers:x:100:\n", 0o644},
		{"etc/profile", "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", 0o644},
	}
	for _, f := range files {
		if err := stageFile(root, f.name, []byte(f.data), f.mode, rootOwner); err != nil {
			return err
		}
	}
	return addAccount(root, account{
		Name: guestUser, UID: guestUID, GID: guestUID,
		Home: "/home/" + guestUser, Shell: "/bin/sh",
		Supplement: []string{"sudo"},
	})
}

// staticBusybox finds a statically linked busybox (Debian's
// busybox-static) on PATH: the minimal template has no libc.
func staticBusybox() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("minimal template needs busybox-static: %w", err)
	}
	p, err = filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("busybox: %w", err)
	}
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Errorf("busybox: %w", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked; the minimal template needs busybox-static", p)
		}
	}
	return p, nil
}
