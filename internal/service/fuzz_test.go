package service

import (
	"errors"
	"net/mail"
	"path"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/capsulehq/capsule/internal/image"
	"github.com/jackc/pgx/v5/pgtype"
)

// isInvalid reports whether err is the ErrInvalid a client's bad input
// must be (answered 400, never 500).
func isInvalid(err error) bool { return errors.Is(err, ErrInvalid) }

// FuzzValidateSnapshotName: an accepted snapshot name is a plain file and
// template name: no separators, no "..", no NUL, not a built-in; a refused
// one is ErrInvalid.
func FuzzValidateSnapshotName(f *testing.F) {
	for _, s := range []string{
		"my-snapshot", "snap.v1", "a", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"..", "a/../b", "a\\b", "a\x00", ".x", "-x", DefaultTemplate, strings.ToUpper(DefaultTemplate), "é", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateSnapshotName(name, image.Templates())
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("ValidateSnapshotName(%q) = %v, want an ErrInvalid", name, err)
			}
			return
		}
		if name == "" || len(name) > 128 || strings.ContainsAny(name, "/\\\x00") || strings.Contains(name, "..") ||
			name[0] == '.' || name[0] == '-' || slices.Contains(image.Templates(), strings.ToLower(name)) || !utf8.ValidString(name) {
			t.Fatalf("accepted %q", name)
		}
		if path.Clean(name) != name || path.Base(name) != name {
			t.Fatalf("accepted %q, which is not a plain file name", name)
		}
	})
}

// FuzzGuestPath: an accepted guest path comes back absolute, clean,
// without NUL, and within the length limit; a refused one is ErrInvalid.
func FuzzGuestPath(f *testing.F) {
	for _, s := range []string{
		"/", "/home/user/file.txt", "/a/../../etc/passwd", "//x//y/", "/a/./b/.", "relative", "../x", "",
		"/a\x00b", "/\xff", "/" + strings.Repeat("a", 4096),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := GuestPath(p)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("GuestPath(%q) = %v, want an ErrInvalid", p, err)
			}
			return
		}
		if !path.IsAbs(got) || path.Clean(got) != got || strings.ContainsRune(got, 0) || len(got) > maxGuestPath || !utf8.ValidString(got) {
			t.Fatalf("GuestPath(%q) = %q", p, got)
		}
		for _, el := range strings.Split(got, "/") {
			if el == ".." || el == "." {
				t.Fatalf("GuestPath(%q) = %q keeps a %q element", p, got, el)
			}
		}
	})
}

// FuzzRelativeName: an accepted upload name stays inside the directory it
// is joined to.
func FuzzRelativeName(f *testing.F) {
	for _, s := range []string{
		"file.txt", "sub/dir/file", "./a", "a//b", "a/./b/", "..", "../x", "a/../../x", "a/..", "/abs", ".", "a\x00", "\xff", "",
	} {
		f.Add(s)
	}
	const dir = "/home/user/uploads"
	f.Fuzz(func(t *testing.T, name string) {
		rel, err := relativeName(name)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("relativeName(%q) = %v, want an ErrInvalid", name, err)
			}
			return
		}
		if rel == "" || rel == "." || path.IsAbs(rel) || path.Clean(rel) != rel {
			t.Fatalf("relativeName(%q) = %q", name, rel)
		}
		if joined := path.Join(dir, rel); !strings.HasPrefix(joined, dir+"/") {
			t.Fatalf("relativeName(%q) = %q leaves the directory: %s", name, rel, joined)
		}
	})
}

// FuzzDecodeCursor: a list cursor that decodes is the encoding of what it
// decodes to (clients cannot smuggle a second spelling), and a malformed
// one is ErrInvalid.
func FuzzDecodeCursor(f *testing.F) {
	id := pgtype.UUID{Bytes: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Valid: true}
	f.Add(encodeCursor(time.UnixMicro(1_750_000_000_123_456), id))
	f.Add(encodeCursor(time.UnixMicro(0), id))
	f.Add(encodeCursor(time.UnixMicro(-1), id))
	f.Add("MTIzLjA")
	f.Add("not base64!")
	f.Add("")
	f.Fuzz(func(t *testing.T, c string) {
		ts, gotID, err := decodeCursor(c)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("decodeCursor(%q) = %v, want an ErrInvalid", c, err)
			}
			return
		}
		if !ts.Valid || !gotID.Valid {
			t.Fatalf("decodeCursor(%q) = %v, %v without an error", c, ts, gotID)
		}
		// The timestamp's decimal may have leading zeros or a sign; the
		// ID part must be canonical.
		if again := encodeCursor(ts.Time, gotID); again != c {
			if _, id2, err := decodeCursor(again); err != nil || id2 != gotID {
				t.Fatalf("decodeCursor(%q) re-encodes as %q, which does not decode to the same ID", c, again)
			}
		}
	})
}

// FuzzValidateEmail: an accepted address is what net/mail parses it to,
// trimmed, within the length limit.
func FuzzValidateEmail(f *testing.F) {
	for _, s := range []string{
		"a@example.com", " a@example.com ", "A <a@example.com>", "a@b", "@example.com", "a@", "a@@b", `"a b"@example.com`,
		"a@example.com\r\nBcc: x@y", strings.Repeat("a", 320) + "@x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := validateEmail(s)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("validateEmail(%q) = %v, want an ErrInvalid", s, err)
			}
			return
		}
		a, perr := mail.ParseAddress(got)
		if perr != nil || a.Address != got || got != strings.TrimSpace(got) || len(got) > 320 || strings.ContainsAny(got, "\r\n") {
			t.Fatalf("validateEmail(%q) = %q", s, got)
		}
	})
}

// FuzzExecCommand: a command that normalizes has a program, no NUL
// bytes, valid variable names, a clean absolute cwd and a valid user; a
// refused one is ErrInvalid.
func FuzzExecCommand(f *testing.F) {
	f.Add("echo hi", "", "", "PATH", "/bin", "/home/user/../x", "user", int32(10))
	f.Add("", "ls", "-la", "", "", "", "", int32(0))
	f.Add("", "", "x", "", "", "", "", int32(0))
	f.Add("a", "b", "", "", "", "", "", int32(-1))
	f.Add("x", "", "", "1BAD", "v", "relative", "root;rm", int32(1<<30))
	f.Add("x\x00", "", "", "A", "v\x00", "/\x00", "", int32(0))
	f.Fuzz(func(t *testing.T, cmd, argv0, argv1, envK, envV, cwd, user string, timeout int32) {
		c := ExecCommand{Cmd: cmd, Cwd: cwd, User: user, TimeoutSec: timeout}
		if argv0 != "" || argv1 != "" {
			c.Argv = []string{argv0, argv1}
		}
		if envK != "" {
			c.Env = map[string]string{envK: envV}
		}
		err := c.normalize(60, MaxStreamTimeoutSec)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("normalize(%+v) = %v, want an ErrInvalid", c, err)
			}
			return
		}
		if (c.Cmd == "") == (len(c.Argv) == 0) || (len(c.Argv) > 0 && c.Argv[0] == "") ||
			strings.ContainsRune(c.Cmd+strings.Join(c.Argv, ""), 0) {
			t.Fatalf("accepted the command %+v", c)
		}
		for k, v := range c.Env {
			if !envNameRe.MatchString(k) || strings.ContainsRune(v, 0) {
				t.Fatalf("accepted the variable %q=%q", k, v)
			}
		}
		if c.Cwd != "" && (!path.IsAbs(c.Cwd) || path.Clean(c.Cwd) != c.Cwd) {
			t.Fatalf("accepted the cwd %q", c.Cwd)
		}
		if c.User != "" && !userRe.MatchString(c.User) {
			t.Fatalf("accepted the user %q", c.User)
		}
		if c.TimeoutSec <= 0 || c.TimeoutSec > MaxStreamTimeoutSec {
			t.Fatalf("accepted the timeout %d", c.TimeoutSec)
		}
	})
}

// FuzzCreateSandbox: a create request that normalizes names a template of
// the templates table's form, has a bounded timeout and valid variable
// names and metadata; a refused one is ErrInvalid.
func FuzzCreateSandbox(f *testing.F) {
	f.Add("base", int32(60), "PATH", "k", "v", int32(1), int32(512))
	f.Add("", int32(0), "", "", "", int32(0), int32(0))
	f.Add("a/../b", int32(0), "", "", "", int32(0), int32(0))
	f.Add("base", int32(-1), "1X", "", strings.Repeat("v", 513), int32(-1), int32(0))
	f.Add("base", int32(maxTimeoutSec+1), "A", strings.Repeat("k", 513), "v", int32(0), int32(-5))
	f.Fuzz(func(t *testing.T, tpl string, timeout int32, env, mdKey, mdVal string, vcpus, mem int32) {
		r := CreateSandbox{Template: tpl, TimeoutSec: timeout, VCPUs: vcpus, MemoryMB: mem,
			EnvVars: map[string]string{env: "x"}, Metadata: map[string]string{mdKey: mdVal}}
		if err := r.normalize(); err != nil {
			if !isInvalid(err) {
				t.Fatalf("normalize(%+v) = %v, want an ErrInvalid", r, err)
			}
			return
		}
		if !templateRe.MatchString(r.Template) || strings.Contains(r.Template, "/") || r.TimeoutSec < 0 || r.TimeoutSec > maxTimeoutSec ||
			r.VCPUs < 0 || r.MemoryMB < 0 {
			t.Fatalf("normalize accepted %+v", r)
		}
		for k := range r.EnvVars {
			if !envNameRe.MatchString(k) {
				t.Fatalf("normalize accepted the variable %q", k)
			}
		}
		for k, v := range r.Metadata {
			if k == "" || len(k) > maxMetadataLen || len(v) > maxMetadataLen {
				t.Fatalf("normalize accepted the metadata %q=%q", k, v)
			}
		}
	})
}
