package envd

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Metadata limits (spec §7.3): an xattr name is at most 255 bytes, and ext4
// keeps all of an inode's xattrs in one 4 KiB block.
const (
	maxMetadataKey   = 255 - len(metadataPrefix)
	maxMetadataTotal = 4096
)

// parseMetadata collects X-Metadata-<Key> headers into lower-cased keys
// (first value wins) and validates them.
func parseMetadata(h http.Header) (map[string]string, error) {
	var md map[string]string
	total := 0
	for _, k := range slices.Sorted(maps.Keys(h)) {
		if len(k) < len("X-Metadata-") || !strings.EqualFold(k[:len("X-Metadata-")], "X-Metadata-") || len(h[k]) == 0 {
			continue
		}
		key, val := strings.ToLower(k[len("X-Metadata-"):]), h[k][0]
		if _, dup := md[key]; dup {
			continue
		}
		switch {
		case key == "":
			return nil, badRequest("metadata header '%s' has an empty key", k)
		case !printableASCII(key) || !printableASCII(val):
			return nil, badRequest("metadata '%s': keys and values must be printable ASCII", key)
		case len(key) > maxMetadataKey:
			return nil, badRequest("metadata key '%s' is longer than %d bytes", key, maxMetadataKey)
		}
		total += len(metadataPrefix) + len(key) + len(val)
		if total > maxMetadataTotal {
			return nil, badRequest("metadata is larger than %d bytes", maxMetadataTotal)
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = val
	}
	return md, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// replaceMetadata makes md the file's whole user.e2b.* xattr set.
func replaceMetadata(f *os.File, md map[string]string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	err = rc.Control(func(fd uintptr) { opErr = replaceMetadataFd(int(fd), md) })
	return errors.Join(err, opErr)
}

func replaceMetadataFd(fd int, md map[string]string) error {
	names, err := xattrNames(func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) })
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) && len(md) == 0 {
			return nil // nothing to clear on a filesystem without xattrs
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		key, ok := strings.CutPrefix(name, metadataPrefix)
		if _, keep := md[key]; ok && !keep {
			if err := unix.Fremovexattr(fd, name); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("remove xattr %s: %w", name, err)
			}
		}
	}
	for k, v := range md {
		if err := unix.Fsetxattr(fd, metadataPrefix+k, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", metadataPrefix+k, err)
		}
	}
	return nil
}

func metadataError(p string, err error) error {
	if errors.Is(err, unix.ENOTSUP) {
		return &httpError{status: http.StatusInternalServerError,
			msg: fmt.Sprintf("cannot store metadata of '%s': the filesystem does not support extended attributes", p), cause: err}
	}
	return fsHTTPError(err, classifyFSError("store metadata of", p, err))
}
