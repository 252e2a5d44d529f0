package image

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// A staging tree is a directory laid out as the root filesystem to be; its
// files carry their final owners and modes, which mkfs.ext4 -d copies.
// These helpers create its entries with explicit ownership (needs root).

// owner is a file's numeric owner in the image.
type owner struct{ UID, GID int }

var rootOwner = owner{0, 0}

// stageDir creates dir (under root) and its missing parents, then sets
// dir's mode and owner; parents get 0755 root.
func stageDir(root, dir string, mode os.FileMode, o owner) error {
	p := filepath.Join(root, dir)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", dir, err)
	}
	return setAttrs(p, dir, mode, o)
}

// stageFile writes a file under root with the given mode and owner.
func stageFile(root, name string, data []byte, mode os.FileMode, o owner) error {
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	return setAttrs(p, name, mode, o)
}

// stageCopy copies the file src to name under root.
func stageCopy(root, name, src string, mode os.FileMode, o owner) error {
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	if err := copyFile(src, p, mode); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	return setAttrs(p, name, mode, o)
}

// stageSymlink creates the symlink name → target under root, replacing
// nothing.
func stageSymlink(root, name, target string) error {
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	if err := os.Symlink(target, p); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	return nil
}

// setAttrs sets mode (chmod applies setuid/sticky bits, unlike the umask-
// filtered create) and owner.
func setAttrs(p, name string, mode os.FileMode, o owner) error {
	if err := os.Chmod(p, mode); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	if err := os.Lchown(p, o.UID, o.GID); err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	return nil
}

// copyFile copies src to a new file dst with mode.
func copyFile(src, dst string, mode os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = io.Copy(out, in)
	return err
}
