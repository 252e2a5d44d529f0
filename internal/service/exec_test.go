package service

import (
	"errors"
	"strings"
	"testing"
)

func TestGuestPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"/tmp/x", "/tmp/x", true},
		{"/tmp/../etc//passwd/", "/etc/passwd", true},
		{"/", "/", true},
		{"", "", false},
		{"tmp/x", "", false},
		{"./x", "", false},
		{"/tmp/\x00x", "", false},
		{"/tmp/\xff", "", false},
		{"/" + strings.Repeat("x", maxGuestPath), "", false},
	} {
		got, err := GuestPath(tc.in)
		if tc.ok != (err == nil) || got != tc.want || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("GuestPath(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestRelativeName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"a.txt", "a.txt", true},
		{"sub/dir/b.txt", "sub/dir/b.txt", true},
		{"sub//./b.txt", "sub/b.txt", true},
		{"", "", false},
		{".", "", false},
		{"./", "", false},
		{"..", "", false},
		{"../x", "", false},
		{"a/../../x", "", false},
		{"a/../x", "", false},
		{"/etc/passwd", "", false},
		{"a\x00b", "", false},
	} {
		got, err := relativeName(tc.in)
		if tc.ok != (err == nil) || got != tc.want || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("relativeName(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestSignalName(t *testing.T) {
	for in, want := range map[string]string{
		"signal: killed":                           "SIGKILL",
		"signal: terminated":                       "SIGTERM",
		"signal: segmentation fault (core dumped)": "SIGSEGV",
		"signal: interrupt":                        "SIGINT",
		"exit status 1":                            "",
		"signal: nonsense":                         "",
		"":                                         "",
	} {
		if got := signalName(in); got != want {
			t.Errorf("signalName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExecCommandNormalize(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  ExecCommand
		ok   bool
	}{
		{"cmd", ExecCommand{Cmd: "true"}, true},
		{"argv", ExecCommand{Argv: []string{"true", "x"}, Env: map[string]string{"A_1": "x"}, Cwd: "/tmp", User: "user"}, true},
		{"both", ExecCommand{Cmd: "true", Argv: []string{"true"}}, false},
		{"neither", ExecCommand{}, false},
		{"empty program", ExecCommand{Argv: []string{""}}, false},
		{"NUL in argv", ExecCommand{Argv: []string{"echo", "a\x00"}}, false},
		{"too long", ExecCommand{Cmd: strings.Repeat("x", maxCommandBytes+1)}, false},
		{"env name", ExecCommand{Cmd: "true", Env: map[string]string{"1A": "x"}}, false},
		{"env NUL", ExecCommand{Cmd: "true", Env: map[string]string{"A": "\x00"}}, false},
		{"relative cwd", ExecCommand{Cmd: "true", Cwd: "tmp"}, false},
		{"user with a colon", ExecCommand{Cmd: "true", User: "a:b"}, false},
		{"negative timeout", ExecCommand{Cmd: "true", TimeoutSec: -1}, false},
		{"timeout too long", ExecCommand{Cmd: "true", TimeoutSec: MaxExecTimeoutSec + 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cmd
			err := c.normalize(DefaultExecTimeoutSec, MaxExecTimeoutSec)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("%v", err)
			}
			if err == nil && c.TimeoutSec != DefaultExecTimeoutSec {
				t.Fatalf("timeout %d", c.TimeoutSec)
			}
		})
	}
}

func TestCapped(t *testing.T) {
	var c capped
	c.write(make([]byte, MaxExecOutput-1))
	c.write([]byte("ab"))
	c.write([]byte("c"))
	if c.b.Len() != MaxExecOutput || !c.over {
		t.Fatalf("%d bytes, over %v", c.b.Len(), c.over)
	}
	var d capped
	d.write(make([]byte, MaxExecOutput))
	if d.over {
		t.Fatal("exactly the limit is not truncated")
	}
}
