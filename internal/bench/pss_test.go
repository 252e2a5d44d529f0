package bench

import "testing"

func TestParseSmaps(t *testing.T) {
	const smaps = `55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
Shared_Clean:        800 kB
7f0000000000-7f0020000000 rw-p 00000000 00:05 77 /memfd:mem (deleted)
Size:             524288 kB
Rss:              102400 kB
Pss:               12800 kB
VmFlags: rd wr mr mw me ac sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Pss:                  20 kB
`
	for _, tc := range []struct {
		name string
		in   string
		want ProcessMemory
	}{
		{"a VMM", smaps, ProcessMemory{Pss: (400 + 12800 + 20) << 10, GuestPss: 12800 << 10}},
		{"empty", "", ProcessMemory{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSmaps([]byte(tc.in))
			if err != nil || got != tc.want {
				t.Fatalf("parseSmaps = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := parseSmaps([]byte("Pss: x kB\n")); err == nil {
		t.Fatal("a malformed Pss line was accepted")
	}
}
