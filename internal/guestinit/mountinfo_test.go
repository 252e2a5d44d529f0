package guestinit

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	data := `22 27 0:21 / /proc rw,relatime - proc proc rw
26 24 0:24 / /dev/pts rw,relatime shared:3 master:1 - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:33 /sub\040dir /mnt/with\040space\011tab\134back rw - tmpfs my\040src rw
41 27 0:34 / /mnt/noopts rw - overlay overlay

`
	ms, err := ParseMountInfo([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := []MountInfo{
		{ID: 22, ParentID: 27, Major: 0, Minor: 21, Root: "/", MountPoint: "/proc", Options: "rw,relatime", FSType: "proc", Source: "proc", SuperOptions: "rw"},
		{ID: 26, ParentID: 24, Major: 0, Minor: 24, Root: "/", MountPoint: "/dev/pts", Options: "rw,relatime", Optional: []string{"shared:3", "master:1"}, FSType: "devpts", Source: "devpts", SuperOptions: "rw,mode=600,ptmxmode=000"},
		{ID: 27, ParentID: 1, Major: 254, Minor: 0, Root: "/", MountPoint: "/", Options: "rw,relatime", Optional: []string{"shared:1"}, FSType: "ext4", Source: "/dev/vda", SuperOptions: "rw"},
		{ID: 40, ParentID: 27, Major: 0, Minor: 33, Root: "/sub dir", MountPoint: "/mnt/with space\ttab\\back", Options: "rw", FSType: "tmpfs", Source: "my src", SuperOptions: "rw"},
		{ID: 41, ParentID: 27, Major: 0, Minor: 34, Root: "/", MountPoint: "/mnt/noopts", Options: "rw", FSType: "overlay", Source: "overlay"},
	}
	if !reflect.DeepEqual(ms, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", ms, want)
	}
	set := mountedSet(ms)
	if !set["/dev/pts"] || !set["/mnt/with space\ttab\\back"] || set["/sys"] {
		t.Errorf("mountedSet = %v", set)
	}
}

func TestParseMountInfoMalformed(t *testing.T) {
	for _, line := range []string{
		"22 27 0:21 / /proc rw,relatime proc proc rw",    // no separator
		"22 27 0:21 / /proc rw,relatime -",               // nothing after it
		"22 27 0:21 / /proc rw,relatime - proc",          // no source
		"x 27 0:21 / /proc rw - proc proc rw",            // id
		"22 y 0:21 / /proc rw - proc proc rw",            // parent
		"22 27 021 / /proc rw - proc proc rw",            // device
		"22 27 a:21 / /proc rw - proc proc rw",           // major
		"22 27 0:b / /proc rw - proc proc rw",            // minor
		"22 27 0:21 / /proc",                             // short
		"22 27 0:21 / - rw - proc proc rw extra extra x", // separator too early is not taken
	} {
		ms, err := ParseMountInfo([]byte("27 1 254:0 / / rw - ext4 /dev/vda rw\n" + line + "\n"))
		if line == "22 27 0:21 / - rw - proc proc rw extra extra x" {
			// The 5th field "-" is a mount point; the separator is the 7th field.
			if err != nil || len(ms) != 2 || ms[1].MountPoint != "-" {
				t.Errorf("%q: %v %+v", line, err, ms)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("ParseMountInfo(%q) = %+v, %v; want an error on line 2", line, ms, err)
		}
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:         "plain",
		`a\040b`:        "a b",
		`a\134\040`:     "a\\ ",
		`trail\04`:      `trail\04`,
		`bad\999`:       `bad\999`,
		`high\477`:      `high\477`,
		`\012newline\n`: "\nnewline\\n",
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnmountPlan(t *testing.T) {
	ms := []MountInfo{
		{MountPoint: "/"}, {MountPoint: "/proc"}, {MountPoint: "/dev"}, {MountPoint: "/dev/pts"},
		{MountPoint: "/sys"}, {MountPoint: "/sys/fs/cgroup"}, {MountPoint: "/tmp/x"}, {MountPoint: "/tmpfoo"},
	}
	want := []string{"/tmpfoo", "/tmp/x", "/sys/fs/cgroup", "/sys", "/dev/pts", "/dev", "/proc"}
	if got := unmountPlan(ms, "/"); !reflect.DeepEqual(got, want) {
		t.Errorf("unmountPlan(/) = %v, want %v", got, want)
	}
	if got := unmountPlan(ms, "/tmp/"); !reflect.DeepEqual(got, []string{"/tmp/x"}) {
		t.Errorf("unmountPlan(/tmp) = %v", got)
	}
}
