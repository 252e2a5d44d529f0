package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// CreateOverlay creates a qcow2 overlay at path whose backing file is the
// image base (raw, or itself a qcow2 overlay: snapshot templates chain
// onto their source's disk). sizeBytes is the overlay's virtual size: 0
// means the base's size; a smaller size than the base's is an error. path
// must not exist; its directory must.
func CreateOverlay(ctx context.Context, base, path string, sizeBytes int64) error {
	absBase, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	fi, err := os.Stat(absBase)
	if err != nil {
		return fmt.Errorf("create overlay %s: base: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("create overlay %s: base %s is not a regular file", path, absBase)
	}
	format, baseSize := "raw", fi.Size()
	if isQcow2(absBase) {
		info, err := Inspect(ctx, absBase)
		if err != nil {
			return fmt.Errorf("create overlay %s: %w", path, err)
		}
		format, baseSize = info.Format, info.VirtualSize
	}
	if sizeBytes < 0 || (sizeBytes > 0 && sizeBytes < baseSize) {
		return fmt.Errorf("create overlay %s: size %d is smaller than the base's %d bytes", path, sizeBytes, baseSize)
	}
	if err := createNew(ctx, path, func(tmp string) error {
		args := []string{"create", "-q", "-f", "qcow2", "-F", format, "-b", absBase, tmp}
		if sizeBytes > 0 {
			args = append(args, strconv.FormatInt(sizeBytes, 10))
		}
		_, err := qemuImg(ctx, args...)
		return err
	}); err != nil {
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	slog.DebugContext(ctx, "overlay created", "path", path, "base", absBase)
	return nil
}

// Flatten writes the content of the disk image src (an overlay with its
// backing chain, or any image qemu-img reads) to a new sparse raw image
// at dst, which must not exist. src must not be in use by a running VM.
func Flatten(ctx context.Context, src, dst string) error {
	info, err := Inspect(ctx, src)
	if err != nil {
		return fmt.Errorf("flatten %s: %w", src, err)
	}
	// convert skips zero clusters (-S 4k by default), so holes stay holes.
	if err := createNew(ctx, dst, func(tmp string) error {
		_, err := qemuImg(ctx, "convert", "-f", info.Format, "-O", "raw", src, tmp)
		return err
	}); err != nil {
		return fmt.Errorf("flatten %s: %w", src, err)
	}
	slog.DebugContext(ctx, "disk flattened", "src", src, "dst", dst)
	return nil
}

// Remove deletes the disk image at path; a missing file is not an error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove disk: %w", err)
	}
	return nil
}

// createNew makes the file path, which must not exist, durably: fill
// writes it as a temporary file next to it, which is synced and renamed
// into place without replacing anything (fs.ErrExist when path appeared
// meanwhile), or removed on any failure.
func createNew(ctx context.Context, path string, fill func(tmp string) error) (err error) {
	if err := absent(path); err != nil {
		return err
	}
	tmp, err := tempNextTo(path)
	if err != nil {
		return err
	}
	defer rollback(ctx, &err, tmp)
	if err := fill(tmp); err != nil {
		return err
	}
	if err := syncFile(tmp); err != nil {
		return err
	}
	return renameNoReplace(tmp, path)
}

// absent fails with fs.ErrExist when path exists.
func absent(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %w", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// tempNextTo creates an empty temporary file in path's directory (so that
// the final rename stays on one filesystem) and returns its name.
func tempNextTo(path string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// rollback removes tmp when the step failed (*err is set), adding a
// failure to remove it to *err.
func rollback(ctx context.Context, err *error, tmp string) {
	if *err == nil {
		return
	}
	if rerr := os.Remove(tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		slog.WarnContext(ctx, "disk rollback failed", "path", tmp, "err", rerr)
		*err = errors.Join(*err, fmt.Errorf("rollback: %w", rerr))
	}
}

// renameNoReplace renames src to dst unless dst exists (then fs.ErrExist).
// Filesystems without RENAME_NOREPLACE get link + unlink, which is just as
// exclusive.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(src, dst); err == nil {
			return os.Remove(src)
		}
	}
	if errors.Is(err, unix.EEXIST) || errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", dst, fs.ErrExist)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}

// syncFile flushes a file's data to disk.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// isQcow2 reports whether the file at path starts with the qcow2 magic.
func isQcow2(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && string(magic[:]) == "QFI\xfb"
}
