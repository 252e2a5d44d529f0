package bench

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

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

func TestParsePSSBreakdown(t *testing.T) {
	// A restored clone of a 512 MiB guest (Pss_Anon and SwapPss are not Pss).
	const smaps = `55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123                        /usr/bin/qemu-system-x86_64
Size:               1024 kB
Pss:                 400 kB
Pss_Anon:              0 kB
55d0c0100000-55d0c0200000 rw-p 00100000 08:01 123                        /usr/bin/qemu-system-x86_64
Size:               1024 kB
Pss:                  50 kB
55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0                          [heap]
Size:              16384 kB
Pss:                7000 kB
7f0000000000-7f0020000000 rw-p 00000000 08:01 77                         /var/lib/capsule/templates/t/snapshot/memory-3
Size:             524288 kB
Pss:                9000 kB
SwapPss:             500 kB
7f0020000000-7f0020001000 ---p 00000000 00:00 0 
Size:                  4 kB
Pss:                   0 kB
7f1000000000-7f1040000000 rwxp 00000000 00:00 0 
Size:            1048576 kB
Pss:               16000 kB
7f1040000000-7f1040800000 rw-p 00000000 00:00 0 
Size:               8192 kB
Pss:                3000 kB
7f2000000000-7f2000200000 r-xp 00000000 08:01 99                         /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0.7400.6
Size:               2048 kB
Pss:                 300 kB
7f2000200000-7f2000201000 r--p 00000000 08:01 98                         /usr/lib/locale/C.utf8/LC_CTYPE
Size:                  4 kB
Pss:                   1 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Pss:                  20 kB
VmFlags: rd wr mr mw me gd ac
`
	const boot = `7f0000000000-7f0020000000 rw-s 00000000 00:01 1025                       /memfd:capsule-ram (deleted)
Size:             524288 kB
Pss:              100000 kB
7f1000000000-7f1000400000 rw-s 00000000 00:01 1026                       /memfd:other (deleted)
Size:               4096 kB
Pss:                  64 kB
7f1040000000-7f1040800000 rw-p 00000000 00:00 0                          [anon:named]
Size:               8192 kB
Pss:                  30 kB
`
	for _, tc := range []struct {
		name  string
		in    string
		guest int64
		want  PSSBreakdown
	}{
		{"a clone", smaps, 512 << 20, PSSBreakdown{TranslationCache: 16000 << 10, GuestRAM: 9000 << 10, QEMUBinary: 450 << 10,
			Libraries: 300 << 10, Heap: (7000 + 3000) << 10, Other: (1 + 20) << 10}},
		{"a boot's memfd", boot, 512 << 20, PSSBreakdown{GuestRAM: 100000 << 10, Heap: 30 << 10, Other: 64 << 10}},
		{"empty", "", 512 << 20, PSSBreakdown{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePSSBreakdown(strings.NewReader(tc.in), tc.guest)
			if err != nil || got != tc.want {
				t.Fatalf("parsePSSBreakdown = %+v, %v; want %+v", got, err, tc.want)
			}
			var sum int64 // every Pss line, once
			for _, line := range strings.Split(tc.in, "\n") {
				if v, ok := strings.CutPrefix(line, "Pss:"); ok {
					kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
					sum += kb << 10
				}
			}
			if got.Total() != sum {
				t.Fatalf("Total = %d, the Pss lines add up to %d", got.Total(), sum)
			}
		})
	}
	for _, bad := range []string{"Pss: 4 kB\n", "00400000-00500000 r-xp 00000000 08:01 1 /bin/x\nPss: x kB\n", "00400000-00500000 r-xp 00000000 08:01 1 /bin/x\nPss: 4\n"} {
		if _, err := parsePSSBreakdown(strings.NewReader(bad), 1); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

// TestPSSBreakdownAddsUp reads the smaps of a real process (cat, waiting
// on its input, so that its memory holds still) and checks that the
// categories add up to its smaps_rollup Pss, within the KiB the kernel
// rounds each mapping's figure down to, and that its libc counts as a
// library.
func TestPSSBreakdownAddsUp(t *testing.T) {
	cmd := exec.Command("cat")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		in.Close()
		cmd.Wait()
	}()
	// An echo means cat runs and has read its input: it now waits.
	if _, err := in.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(out, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	got, err := parsePSSBreakdown(bytes.NewReader(data), 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	rollup, err := PSSKiB(pid)
	if err != nil {
		t.Fatal(err)
	}
	mappings := 0
	for _, line := range strings.Split(string(data), "\n") {
		if _, ok := parseMapsHeader(line); ok {
			mappings++
		}
	}
	if diff := rollup<<10 - got.Total(); diff < 0 || diff > int64(mappings)<<10 || mappings == 0 {
		t.Fatalf("categories add up to %d bytes, smaps_rollup says %d KiB (%d mappings): %+v", got.Total(), rollup, mappings, got)
	}
	if got.Libraries <= 0 || got.Other <= 0 || got.GuestRAM != 0 || got.TranslationCache != 0 || got.QEMUBinary != 0 {
		t.Fatalf("cat's PSS: %+v (want its libc under Libraries, its binary under Other)", got)
	}
	t.Logf("cat: %+v = %d bytes; rollup %d KiB, %d mappings", got, got.Total(), rollup, mappings)
}
