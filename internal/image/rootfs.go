package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// Files of a rootfs artifact directory.
const rootfsFile = "rootfs.ext4"

// GuestEnvdPath is where every template has envd: the initramfs executes
// it as the real init after switching root.
const GuestEnvdPath = "/usr/local/bin/envd"

// Guest identity shared by all templates.
const (
	guestHostname = "capsule"
	guestUser     = "user"
	guestUID      = 1000
)

// template fills a staging tree with one template's root filesystem. The
// common parts (envd, hostname, hosts) are added by buildRootfs.
type template interface {
	// key adds the template's inputs (beyond envd and size) to k; it may
	// prepare caches but builds nothing of the rootfs.
	key(ctx context.Context, s *Store, opts BuildOptions, k *keyer) error
	// stage fills the empty directory root.
	stage(ctx context.Context, s *Store, opts BuildOptions, root string) error
	// defaultSizeMB is the image size when BuildOptions has none.
	defaultSizeMB() int
}

// templates are the known templates by name.
var templates = map[string]template{
	"minimal": minimalTemplate{},
	"base":    &baseTemplate{},
}

// Templates lists the names of the templates Build knows.
func Templates() []string {
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// rootfsKey is the content key of a template's rootfs with envd and size.
func rootfsKey(ctx context.Context, s *Store, opts BuildOptions, t template, envdHash string, sizeMB int) (string, error) {
	k := newKeyer("rootfs")
	k.add("template", opts.Template)
	k.add("envd", envdHash)
	k.add("sizeMB", strconv.Itoa(sizeMB))
	if err := t.key(ctx, s, opts, k); err != nil {
		return "", err
	}
	return k.sum(), nil
}

// ensureRootfs returns the path of the template's raw ext4 image, building
// it when the store lacks it. The caller holds the store lock.
func (s *Store) ensureRootfs(ctx context.Context, opts BuildOptions, t template, sizeMB int, key string) (string, error) {
	name := opts.Template
	final := filepath.Join(s.artifactDir(kindRootfs, key), rootfsFile)
	if _, err := os.Stat(final); err == nil {
		return final, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	if os.Geteuid() != 0 {
		return "", errors.New("rootfs: building a template needs root (files owned by other users, debootstrap)")
	}
	work, err := s.workDir("rootfs")
	if err != nil {
		return "", err
	}
	defer s.dropWorkDir(ctx, work)
	root := filepath.Join(work, "root")
	if err := stageDir(work, "root", 0o755, rootOwner); err != nil {
		return "", err
	}
	if err := t.stage(ctx, s, opts, root); err != nil {
		return "", fmt.Errorf("rootfs %s: %w", name, err)
	}
	if err := stageCommon(root, opts.EnvdBin); err != nil {
		return "", fmt.Errorf("rootfs %s: %w", name, err)
	}
	out := filepath.Join(work, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	if err := s.mkfs(ctx, root, filepath.Join(out, rootfsFile), sizeMB); err != nil {
		return "", fmt.Errorf("rootfs %s: %w", name, err)
	}
	if err := publishDir(out, s.artifactDir(kindRootfs, key)); err != nil {
		return "", err
	}
	s.log.InfoContext(ctx, "rootfs ready", "template", name, "key", key, "sizeMB", sizeMB)
	return final, nil
}

// stageCommon adds what every template has: envd and the identity files.
// Directories the template made keep their modes.
func stageCommon(root, envd string) error {
	if err := stageCopy(root, GuestEnvdPath, envd, 0o755, rootOwner); err != nil {
		return err
	}
	if err := stageFile(root, "etc/hostname", []byte(guestHostname+"\n"), 0o644, rootOwner); err != nil {
		return err
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + guestHostname + "\n"
	return stageFile(root, "etc/hosts", []byte(hosts), 0o644, rootOwner)
}

// mkfs makes a sparse ext4 image of sizeMB MiB at img with the content of
// the staging tree root, without mounting anything.
func (s *Store) mkfs(ctx context.Context, root, img string, sizeMB int) error {
	f, err := os.Create(img)
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	// -m 0: no blocks reserved for root (the sandbox's user owns the
	// disk). lazy_itable_init=0: mke2fs zeroes the inode tables by
	// punching holes in the fresh file and marks them zeroed, so the guest
	// kernel never starts its lazy-init writer (which would fill every
	// overlay). lazy_journal_init=1: the journal of a fresh sparse file
	// reads as zeroes already.
	_, err = runCommand(ctx, s.log, "", "mkfs.ext4", "-q", "-F", "-L", "capsule-root", "-m", "0",
		"-E", "lazy_itable_init=0,lazy_journal_init=1", "-d", root, img)
	if err != nil {
		return fmt.Errorf("mkfs (is %d MiB large enough?): %w", sizeMB, err)
	}
	return nil
}
