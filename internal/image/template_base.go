package image

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
)

// BaseSuite is the Debian release of the base template.
const BaseSuite = "bookworm"

// BasePackages are installed into the base template on top of
// debootstrap's minbase variant: what the E2B SDKs' tests expect of a
// template called "base" (docs/e2b-compat.md §10) and a usable shell.
var BasePackages = []string{
	"bash", "ca-certificates", "coreutils", "curl", "git", "iproute2", "less",
	"netbase", "procps", "python-is-python3", "python3", "sudo", "util-linux",
}

// baseTemplate is Debian (debootstrap minbase) with a passwordless-sudo
// user "user", as E2B's base template.
type baseTemplate struct{}

func (*baseTemplate) defaultSizeMB() int { return 2048 }

func (*baseTemplate) spec(opts BuildOptions) debootstrapSpec {
	mirror := opts.Mirror
	if mirror == "" {
		mirror = aptMirror(BaseSuite)
	}
	return debootstrapSpec{Suite: BaseSuite, Variant: "minbase", Mirror: mirror, Packages: BasePackages}
}

func (t *baseTemplate) key(ctx context.Context, s *Store, opts BuildOptions, k *keyer) error {
	k.add("debootstrap", t.spec(opts).key())
	return nil
}

func (t *baseTemplate) stage(ctx context.Context, s *Store, opts BuildOptions, root string) error {
	if err := s.debootstrapTree(ctx, t.spec(opts), root); err != nil {
		return err
	}
	user := owner{guestUID, guestUID}
	home := "home/" + guestUser
	if err := addAccount(root, account{
		Name: guestUser, UID: guestUID, GID: guestUID,
		Home: "/" + home, Shell: "/bin/bash",
		Supplement: []string{"sudo"},
	}); err != nil {
		return err
	}
	if err := stageDir(root, home, 0o755, user); err != nil {
		return err
	}
	skel, _ := os.ReadDir(filepath.Join(root, "etc/skel"))
	for _, e := range skel {
		if !e.Type().IsRegular() {
			continue
		}
		if err := stageCopy(root, filepath.Join(home, e.Name()), filepath.Join(root, "etc/skel", e.Name()), 0o644, user); err != nil {
			return err
		}
	}
	sudoers := guestUser + " ALL=(ALL:ALL) NOPASSWD: ALL\n"
	if err := stageFile(root, "etc/sudoers.d/"+guestUser, []byte(sudoers), 0o440, rootOwner); err != nil {
		return err
	}
	// E2B extras: a /code directory and a /usr/local that everyone can
	// install into.
	if err := stageDir(root, "code", 0o755, user); err != nil {
		return err
	}
	return filepath.WalkDir(filepath.Join(root, "usr/local"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chmod(p, 0o777)
	})
}
