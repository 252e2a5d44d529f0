package image

import (
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Read-only inspection of ext4 images with debugfs (e2fsprogs): no mount.

// inodeInfo is what debugfs's stat says of a path.
type inodeInfo struct {
	Type     string // "regular", "directory", "symlink", …
	Mode     int    // permission bits incl. setuid/setgid/sticky
	UID, GID int
	Size     int64
	Link     string // symlink target
}

var (
	statTypeMode = regexp.MustCompile(`Type: (\S+)\s+Mode:\s+(\d+)`)
	statOwner    = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	statSize     = regexp.MustCompile(`Size: (\d+)`)
	statLink     = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", request, err, out)
	}
	// debugfs prints its banner ("debugfs 1.47.0 (…)") first.
	s := string(out)
	if strings.HasPrefix(s, "debugfs ") {
		if _, rest, ok := strings.Cut(s, "\n"); ok {
			s = rest
		}
	}
	return s
}

// statPath returns the inode of path in img, or nil when it does not
// exist.
func statPath(t *testing.T, img, path string) *inodeInfo {
	t.Helper()
	out := debugfs(t, img, "stat "+path)
	if strings.Contains(out, "File not found") {
		return nil
	}
	m := statTypeMode.FindStringSubmatch(out)
	o := statOwner.FindStringSubmatch(out)
	sz := statSize.FindStringSubmatch(out)
	if m == nil || o == nil || sz == nil {
		t.Fatalf("cannot parse debugfs stat %s:\n%s", path, out)
	}
	info := &inodeInfo{Type: m[1]}
	mode, _ := strconv.ParseInt(m[2], 8, 32)
	info.Mode = int(mode)
	info.UID, _ = strconv.Atoi(o[1])
	info.GID, _ = strconv.Atoi(o[2])
	info.Size, _ = strconv.ParseInt(sz[1], 10, 64)
	if l := statLink.FindStringSubmatch(out); l != nil {
		info.Link = l[1]
	}
	return info
}

// fileCheck is an expectation about one path in an image.
type fileCheck struct {
	path     string
	typ      string // "" = don't care
	mode     int    // -1 = don't care
	uid, gid int    // -1 = don't care
	link     string // symlink target, "" = don't care
}

func checkFiles(t *testing.T, img string, checks []fileCheck) {
	t.Helper()
	for _, c := range checks {
		got := statPath(t, img, c.path)
		if got == nil {
			t.Errorf("%s: missing", c.path)
			continue
		}
		if (c.typ != "" && got.Type != c.typ) || (c.mode >= 0 && got.Mode != c.mode) ||
			(c.uid >= 0 && got.UID != c.uid) || (c.gid >= 0 && got.GID != c.gid) ||
			(c.link != "" && got.Link != c.link) {
			t.Errorf("%s: got %s %04o %d:%d link %q; want %s %04o %d:%d link %q",
				c.path, got.Type, got.Mode, got.UID, got.GID, got.Link, c.typ, c.mode, c.uid, c.gid, c.link)
		}
	}
}
