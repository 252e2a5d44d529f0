package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// account is a Linux user to add to a staging tree's /etc/passwd, shadow,
// group and gshadow (written directly: no chroot, no useradd).
type account struct {
	Name       string
	UID, GID   int // a group of the same name and GID is created
	Home       string
	Shell      string
	Supplement []string // existing groups the user joins
}

// addAccount adds a to the account files under root. Files that do not
// exist are created (gshadow only when it exists already, as on Debian).
func addAccount(root string, a account) error {
	uid, gid := strconv.Itoa(a.UID), strconv.Itoa(a.GID)
	edits := []struct {
		file     string
		mode     os.FileMode
		optional bool
		edit     func([]string) ([]string, error)
	}{
		{"etc/passwd", 0o644, false, appendEntry(a.Name + ":x:" + uid + ":" + gid + "::" + a.Home + ":" + a.Shell)},
		{"etc/shadow", 0o640, false, appendEntry(a.Name + ":*::0:99999:7:::")},
		{"etc/group", 0o644, false, chain(appendEntry(a.Name+":x:"+gid+":"), joinGroups(a.Name, a.Supplement, 3))},
		{"etc/gshadow", 0o640, true, chain(appendEntry(a.Name+":!::"), joinGroups(a.Name, a.Supplement, 3))},
	}
	for _, e := range edits {
		p := filepath.Join(root, e.file)
		data, err := os.ReadFile(p)
		switch {
		case errors.Is(err, os.ErrNotExist) && e.optional:
			continue
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return fmt.Errorf("account %s: %w", a.Name, err)
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(data) == 0 {
			lines = nil
		}
		if lines, err = e.edit(lines); err != nil {
			return fmt.Errorf("account %s: %s: %w", a.Name, e.file, err)
		}
		mode := e.mode
		if fi, err := os.Stat(p); err == nil {
			mode = fi.Mode().Perm()
		}
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), mode); err != nil {
			return fmt.Errorf("account %s: %w", a.Name, err)
		}
	}
	return nil
}

type lineEdit func([]string) ([]string, error)

func chain(edits ...lineEdit) lineEdit {
	return func(lines []string) ([]string, error) {
		var err error
		for _, e := range edits {
			if lines, err = e(lines); err != nil {
				return nil, err
			}
		}
		return lines, nil
	}
}

// appendEntry appends entry unless an entry of the same name exists.
func appendEntry(entry string) lineEdit {
	name, _, _ := strings.Cut(entry, ":")
	return func(lines []string) ([]string, error) {
		for _, l := range lines {
			if n, _, _ := strings.Cut(l, ":"); n == name {
				return nil, fmt.Errorf("%s exists already", name)
			}
		}
		return append(lines, entry), nil
	}
}

// joinGroups adds user to the member list (field index field) of each
// group in groups.
func joinGroups(user string, groups []string, field int) lineEdit {
	return func(lines []string) ([]string, error) {
		for _, g := range groups {
			found := false
			for i, l := range lines {
				f := strings.Split(l, ":")
				if f[0] != g || len(f) <= field {
					continue
				}
				found = true
				if f[field] == "" {
					f[field] = user
				} else {
					f[field] += "," + user
				}
				lines[i] = strings.Join(f, ":")
			}
			if !found {
				return nil, fmt.Errorf("group %s not found", g)
			}
		}
		return lines, nil
	}
}
