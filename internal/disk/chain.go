package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// maxChain bounds a backing chain (qemu-img's own limit is far lower in
// practice; this only stops a loop of files naming each other).
const maxChain = 64

// BackingChain returns the files an image reads through, in order: path
// itself, its backing file, that file's backing file, and so on down to a
// raw image (or a qcow2 without a backing file). It reads the qcow2
// headers itself (no qemu-img process), so it is cheap enough to run over
// every disk of a host. A relative backing file name is resolved against
// the directory of the image that names it, as QEMU does. A missing file
// ends the chain with an error wrapping fs.ErrNotExist, after the names
// found so far.
func BackingChain(path string) ([]string, error) {
	chain := []string{}
	cur := path
	for range maxChain {
		chain = append(chain, cur)
		next, err := backingFile(cur)
		if err != nil {
			return chain, fmt.Errorf("backing chain of %s: %w", path, err)
		}
		if next == "" {
			return chain, nil
		}
		if !filepath.IsAbs(next) {
			next = filepath.Join(filepath.Dir(cur), next)
		}
		cur = filepath.Clean(next)
	}
	return chain, fmt.Errorf("backing chain of %s: more than %d images", path, maxChain)
}

// backingFile returns the backing file name a qcow2 header records ("" for
// none, or for an image that is not qcow2).
func backingFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// The qcow2 header: magic, version (u32 each), backing_file_offset
	// (u64), backing_file_size (u32), all big-endian.
	var h [20]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", nil // too short for qcow2: a (tiny) raw image
		}
		return "", err
	}
	if string(h[:4]) != "QFI\xfb" {
		return "", nil
	}
	off, size := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint32(h[16:20])
	if off == 0 || size == 0 {
		return "", nil
	}
	if size > 1023 {
		return "", fmt.Errorf("%s: backing file name of %d bytes", path, size)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("%s: backing file name: %w", path, err)
	}
	return string(name), nil
}

// Rebase makes the qcow2 image at path read through backing (a file of
// format backingFormat, "raw" or "qcow2") without touching its data: only
// the header's backing file name changes (qemu-img rebase -u). It is how
// a layer copied to another host, whose backing files live at other
// paths there, is pointed at their copies; the caller guarantees that the
// new backing file has the contents of the old one.
func Rebase(ctx context.Context, path, backing, backingFormat string) error {
	if _, err := qemuImg(ctx, "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", backingFormat, path); err != nil {
		return fmt.Errorf("rebase %s: %w", path, err)
	}
	return nil
}

// Format is "qcow2" for a qcow2 image and "raw" for anything else.
func Format(path string) string {
	if isQcow2(path) {
		return "qcow2"
	}
	return "raw"
}
