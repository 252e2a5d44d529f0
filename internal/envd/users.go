package envd

import (
	"errors"
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// account is a resolved Linux user.
type account struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32
	Home   string
}

// lookupAccount resolves a user name through /etc/passwd and /etc/group.
func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of %s: %w", name, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of %s: %w", name, err)
	}
	a := &account{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				a.Groups = append(a.Groups, uint32(n))
			}
		}
	}
	if a.Home == "" {
		a.Home = "/"
	}
	return a, nil
}

// errTildeUser is returned for "~name" paths, which E2B refuses.
var errTildeUser = errors.New("paths of the form ~user are not supported")

// resolvePath maps a request path to an absolute one (spec §5.4): empty ⇒
// the default workdir, itself resolved by these rules (else the user's
// home), "~" or "~/x" ⇒ home-relative, absolute ⇒ cleaned, relative ⇒
// joined to the user's home.
func resolvePath(p string, a *account, workdir string) (string, error) {
	switch {
	case p == "":
		if workdir != "" {
			// The default workdir is resolved as if the client had
			// named it: a relative one is home-relative, never
			// relative to envd's own working directory.
			return resolvePath(workdir, a, "")
		}
		return a.Home, nil
	case p == "~":
		return a.Home, nil
	case strings.HasPrefix(p, "~/"):
		return filepath.Join(a.Home, p[2:]), nil
	case strings.HasPrefix(p, "~"):
		return "", errTildeUser
	case filepath.IsAbs(p):
		return filepath.Clean(p), nil
	default:
		return filepath.Join(a.Home, p), nil
	}
}
