package pgembed

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultUser is the system user postgres runs as when Capsule runs as root.
const DefaultUser = "capsule-pg"

// identity is the OS user that runs initdb and postgres.
type identity struct {
	name     string
	uid, gid uint32
	// cred is nil when postgres runs as the current (non-root) user.
	cred *syscall.Credential
}

// resolveIdentity picks who runs postgres: the current user, or, as root, the
// named system user (created when missing).
func resolveIdentity(name string, log *slog.Logger) (identity, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		n := strconv.Itoa(os.Geteuid())
		if err == nil {
			n = u.Username
		}
		return identity{name: n, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}, nil
	}
	if name == "" {
		name = DefaultUser
	}
	if name == "root" {
		return identity{}, errors.New("pgembed: PostgreSQL cannot run as root; configure another user")
	}
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return identity{}, fmt.Errorf("pgembed: look up user %s: %w", name, err)
		}
		if err := createSystemUser(name, log); err != nil {
			return identity{}, err
		}
		if u, err = user.Lookup(name); err != nil {
			return identity{}, fmt.Errorf("pgembed: look up user %s after creating it: %w", name, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return identity{}, fmt.Errorf("pgembed: user %s has a non-numeric uid/gid %s/%s", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return identity{}, fmt.Errorf("pgembed: user %s has uid 0; PostgreSQL cannot run as root", name)
	}
	return identity{
		name: name, uid: uint32(uid), gid: uint32(gid),
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}, nil
}

// createSystemUser adds a locked system account without a home directory.
// A concurrent creator (another process) is not an error.
func createSystemUser(name string, log *slog.Logger) error {
	useradd, err := exec.LookPath("useradd")
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			if _, e := os.Stat(filepath.Join(d, "useradd")); e == nil {
				useradd, err = filepath.Join(d, "useradd"), nil
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("pgembed: user %s does not exist and useradd is missing: create a system user for PostgreSQL: %w", name, err)
	}
	log.Info("pgembed: creating system user for PostgreSQL", "user", name)
	out, err := exec.Command(useradd, "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
		"--comment", "Capsule embedded PostgreSQL", name).CombinedOutput()
	if err != nil {
		if _, lerr := user.Lookup(name); lerr == nil {
			return nil // created concurrently
		}
		return fmt.Errorf("pgembed: useradd %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// chownTree gives root and everything below it to id (entries that already
// belong to it are left alone). A no-op when not running as root.
func chownTree(root string, id identity) error {
	if id.cred == nil {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile (a server is not running here)
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid == id.uid && st.Gid == id.gid {
			return nil
		}
		if err := os.Lchown(p, int(id.uid), int(id.gid)); err != nil {
			return fmt.Errorf("pgembed: chown %s to %s: %w", p, id.name, err)
		}
		return nil
	})
}

// checkSearchable fails when a directory above dir cannot be searched (x) by
// id, which would keep postgres from reaching its data directory.
func checkSearchable(dir string, id identity) error {
	if id.cred == nil {
		return nil
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgembed: %w", err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if ok {
			perm := st.Mode().Perm()
			var can bool
			switch {
			case sys.Uid == id.uid:
				can = perm&0o100 != 0
			case sys.Gid == id.gid:
				can = perm&0o010 != 0
			default:
				can = perm&0o001 != 0
			}
			if !can {
				return fmt.Errorf("pgembed: PostgreSQL runs as user %s, which cannot reach %s because directory %s (mode %o) is not searchable by it; choose a data directory elsewhere (e.g. /var/lib/capsule) or allow it: chmod o+x %s",
					id.name, dir, d, perm, d)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
