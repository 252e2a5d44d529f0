package guestinit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/<pid>/mountinfo (see proc(5)).
type MountInfo struct {
	ID, ParentID int
	Major, Minor int
	Root         string // root of the mount within its filesystem
	MountPoint   string // relative to the process's root
	Options      string // per-mount options
	Optional     []string
	FSType       string
	Source       string
	SuperOptions string
}

// ParseMountInfo parses the contents of a mountinfo file. Escaped
// characters in paths (\040 for space, \011, \012, \134) are decoded.
func ParseMountInfo(data []byte) ([]MountInfo, error) {
	var out []MountInfo
	for n, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMountInfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n+1, err)
		}
		out = append(out, m)
	}
	return out, nil
}

func parseMountInfoLine(line string) (MountInfo, error) {
	var m MountInfo
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return m, fmt.Errorf("malformed line %q", line)
	}
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return m, fmt.Errorf("mount id %q: %w", f[0], err)
	}
	if m.ParentID, err = strconv.Atoi(f[1]); err != nil {
		return m, fmt.Errorf("parent id %q: %w", f[1], err)
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return m, fmt.Errorf("device %q is not major:minor", f[2])
	}
	if m.Major, err = strconv.Atoi(maj); err != nil {
		return m, fmt.Errorf("device %q: %w", f[2], err)
	}
	if m.Minor, err = strconv.Atoi(min); err != nil {
		return m, fmt.Errorf("device %q: %w", f[2], err)
	}
	m.Root = unescapeMountPath(f[3])
	m.MountPoint = unescapeMountPath(f[4])
	m.Options = f[5]
	m.Optional = append([]string(nil), f[6:sep]...)
	m.FSType = f[sep+1]
	m.Source = unescapeMountPath(f[sep+2])
	if len(f) > sep+3 {
		m.SuperOptions = f[sep+3]
	}
	return m, nil
}

// unescapeMountPath decodes the octal escapes (\ooo) the kernel writes
// for space, tab, newline and backslash.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] <= '3' && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// readMountInfo reads the mount table of the calling process.
func readMountInfo() ([]MountInfo, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return ParseMountInfo(data)
}

// mountedSet is the set of mount points in a mount table.
func mountedSet(ms []MountInfo) map[string]bool {
	set := make(map[string]bool, len(ms))
	for _, m := range ms {
		set[m.MountPoint] = true
	}
	return set
}
