package image

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"testing"
)

// cpioMember is an entry as read back by readCPIO.
type cpioMember struct {
	Name         string
	Mode         uint32 // type and permission bits
	UID, GID     uint32
	Nlink        uint32
	Major, Minor uint32 // rdev
	Data         []byte
}

// readCPIO is an independent newc reader for the tests: it checks magic,
// alignment and the trailer.
func readCPIO(t *testing.T, data []byte) []cpioMember {
	t.Helper()
	var out []cpioMember
	off := 0
	field := func(hdr []byte, i int) uint32 {
		v, err := strconv.ParseUint(string(hdr[6+8*i:6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("cpio header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off%4 != 0 {
			t.Fatalf("entry at unaligned offset %d", off)
		}
		if off+cpioHdrLen > len(data) {
			t.Fatalf("truncated archive at %d (no trailer)", off)
		}
		hdr := data[off : off+cpioHdrLen]
		if string(hdr[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", hdr[:6], off)
		}
		m := cpioMember{
			Mode: field(hdr, 1), UID: field(hdr, 2), GID: field(hdr, 3), Nlink: field(hdr, 4),
			Major: field(hdr, 9), Minor: field(hdr, 10),
		}
		size, namesize := int(field(hdr, 6)), int(field(hdr, 11))
		if field(hdr, 12) != 0 {
			t.Fatalf("nonzero check field at %d", off)
		}
		nameEnd := off + cpioHdrLen + namesize
		if nameEnd > len(data) || data[nameEnd-1] != 0 {
			t.Fatalf("name at %d not NUL-terminated", off)
		}
		m.Name = string(data[off+cpioHdrLen : nameEnd-1])
		dataOff := align(nameEnd)
		if dataOff+size > len(data) {
			t.Fatalf("%s: data runs past the end", m.Name)
		}
		m.Data = data[dataOff : dataOff+size]
		off = align(dataOff + size)
		if m.Name == cpioTrailer {
			if off != len(data) {
				t.Fatalf("%d bytes after the trailer", len(data)-off)
			}
			return out
		}
		out = append(out, m)
	}
}

func TestCPIORoundTrip(t *testing.T) {
	type entry struct {
		kind   string // dir, file, link, chr
		e      cpioEntry
		data   string // file content or link target
		mj, mn uint32
	}
	big := strings.Repeat("0123456789abcdef", 4099) + "xyz" // odd size, crosses buffers
	tests := []struct {
		name    string
		entries []entry
		want    []cpioMember
	}{
		{name: "empty archive"},
		{
			name: "every kind",
			entries: []entry{
				{kind: "dir", e: cpioEntry{Name: "dev", Mode: 0o755}},
				{kind: "chr", e: cpioEntry{Name: "dev/console", Mode: 0o600}, mj: 5, mn: 1},
				{kind: "file", e: cpioEntry{Name: "/init", Mode: 0o755, UID: 1, GID: 2}, data: "#!/bin/sh\n"},
				{kind: "file", e: cpioEntry{Name: "empty", Mode: 0o644}},
				{kind: "file", e: cpioEntry{Name: "a", Mode: 0o644}, data: "x"},
				{kind: "link", e: cpioEntry{Name: "bin/sh"}, data: "/bin/busybox"},
				{kind: "dir", e: cpioEntry{Name: "tmp", Mode: fs.ModeSticky | 0o777}},
				{kind: "file", e: cpioEntry{Name: "suid", Mode: fs.ModeSetuid | fs.ModeSetgid | 0o755}, data: "ab"},
				{kind: "file", e: cpioEntry{Name: "big", Mode: 0o644}, data: big},
			},
			want: []cpioMember{
				{Name: "dev", Mode: cpioDir | 0o755, Nlink: 2},
				{Name: "dev/console", Mode: cpioChr | 0o600, Nlink: 1, Major: 5, Minor: 1},
				{Name: "init", Mode: cpioReg | 0o755, UID: 1, GID: 2, Nlink: 1, Data: []byte("#!/bin/sh\n")},
				{Name: "empty", Mode: cpioReg | 0o644, Nlink: 1},
				{Name: "a", Mode: cpioReg | 0o644, Nlink: 1, Data: []byte("x")},
				{Name: "bin/sh", Mode: cpioLink | 0o777, Nlink: 1, Data: []byte("/bin/busybox")},
				{Name: "tmp", Mode: cpioDir | 0o1777, Nlink: 2},
				{Name: "suid", Mode: cpioReg | 0o6755, Nlink: 1, Data: []byte("ab")},
				{Name: "big", Mode: cpioReg | 0o644, Nlink: 1, Data: []byte(big)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := newCPIOWriter(&buf)
			for _, e := range tt.entries {
				var err error
				switch e.kind {
				case "dir":
					err = w.Dir(e.e)
				case "file":
					err = w.File(e.e, strings.NewReader(e.data), int64(len(e.data)))
				case "link":
					err = w.Symlink(e.e, e.data)
				case "chr":
					err = w.CharDev(e.e, e.mj, e.mn)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			got := readCPIO(t, buf.Bytes())
			if len(got) != len(tt.want) {
				t.Fatalf("got %d entries, want %d", len(got), len(tt.want))
			}
			for i, g := range got {
				w := tt.want[i]
				if g.Name != w.Name || g.Mode != w.Mode || g.UID != w.UID || g.GID != w.GID ||
					g.Nlink != w.Nlink || g.Major != w.Major || g.Minor != w.Minor || !bytes.Equal(g.Data, w.Data) {
					t.Errorf("entry %d:\n got  %s\n want %s", i, describe(g), describe(w))
				}
				if g.Mode&cpioTypeMask == 0 {
					t.Errorf("%s: no file type", g.Name)
				}
			}
		})
	}
}

func describe(m cpioMember) string {
	return fmt.Sprintf("%s mode=%o uid=%d gid=%d nlink=%d rdev=%d:%d len=%d", m.Name, m.Mode, m.UID, m.GID, m.Nlink, m.Major, m.Minor, len(m.Data))
}

func TestCPIOErrors(t *testing.T) {
	tests := []struct {
		name string
		do   func(w *cpioWriter) error
	}{
		{"empty name", func(w *cpioWriter) error { return w.Dir(cpioEntry{Name: "/"}) }},
		{"trailer name", func(w *cpioWriter) error { return w.Dir(cpioEntry{Name: cpioTrailer}) }},
		{"short data", func(w *cpioWriter) error {
			return w.File(cpioEntry{Name: "f"}, strings.NewReader("abc"), 10)
		}},
		{"after close", func(w *cpioWriter) error {
			if err := w.Close(); err != nil {
				return nil
			}
			return w.Dir(cpioEntry{Name: "d"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(newCPIOWriter(io.Discard)); err == nil {
				t.Fatal("no error")
			}
		})
	}
}
