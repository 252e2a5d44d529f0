package qemu

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// streamBuilder writes a synthetic migration stream in QEMU 7.2's format.
type streamBuilder struct {
	bytes.Buffer
	omit string // leave out the page records of this block (the expected state)
}

func (b *streamBuilder) u8(v byte)    { b.WriteByte(v) }
func (b *streamBuilder) u32(v uint32) { _ = binary.Write(b, binary.BigEndian, v) }
func (b *streamBuilder) u64(v uint64) { _ = binary.Write(b, binary.BigEndian, v) }
func (b *streamBuilder) str(s string) { b.u8(byte(len(s))); b.WriteString(s) }

// page writes a page record of block (name omitted with cont).
func (b *streamBuilder) page(block string, addr uint64, cont bool, zero bool, fill byte, data []byte) {
	if block == b.omit {
		return
	}
	flags := uint64(ramFlagPage)
	if zero {
		flags = ramFlagZero
	}
	if cont {
		flags |= ramFlagContinue
	}
	b.u64(addr | flags)
	if !cont {
		b.str(block)
	}
	if zero {
		b.u8(fill)
	} else {
		b.Write(data)
	}
}

func pageOf(c byte) []byte { return bytes.Repeat([]byte{c}, targetPageSize) }

// synthStream is a stream with a 4-page "mem" block and a 1-page "rom"
// block, pages in two sections, a duplicate page that turns to zero, and
// device state after the RAM.
func synthStream(omit string) []byte {
	b := &streamBuilder{omit: omit}
	b.u32(qemuVMFileMagic)
	b.u32(qemuVMFileVersion)
	b.u8(secConfiguration)
	b.u32(7)
	b.WriteString("microvm")
	b.u8(secSubsection)
	b.str("configuration/capabilities")
	b.u32(1)
	b.u32(1)
	b.str("x-ignore-shared")
	b.u8(secSubsection)
	b.str("configuration/target-page-bits")
	b.u32(1)
	b.u32(12)

	b.u8(secStart)
	b.u32(2)
	b.str("ram")
	b.u32(0)
	b.u32(4)
	b.u64((5*targetPageSize)<<0 | ramFlagMemSize)
	b.str("mem")
	b.u64(4 * targetPageSize)
	b.u64(0)
	b.str("rom")
	b.u64(targetPageSize)
	b.u64(0xfffff000)
	b.u64(ramFlagEOS)
	b.u8(secFooter)
	b.u32(2)

	b.u8(secPart)
	b.u32(2)
	b.page("mem", 0, false, false, 0, pageOf('A'))
	b.page("mem", targetPageSize, true, true, 0, nil)
	b.page("rom", 0, false, false, 0, pageOf('R'))
	b.page("rom", 0, true, true, 0, nil)
	b.page("mem", 2*targetPageSize, false, false, 0, pageOf('B'))
	b.page("mem", 3*targetPageSize, true, false, 0, pageOf('C'))
	b.u64(ramFlagEOS)
	b.u8(secFooter)
	b.u32(2)

	b.u8(secEnd)
	b.u32(2)
	b.page("mem", 0, false, true, 0, nil)                        // page 0 was sent again as zero
	b.page("mem", 3*targetPageSize, true, true, 'f', nil)        // and page 3 filled
	b.page("mem", 2*targetPageSize, true, false, 0, pageOf('D')) // and page 2 rewritten
	b.u64(ramFlagEOS)
	b.u8(secFooter)
	b.u32(2)

	b.u8(secFull)
	b.u32(3)
	b.str("device")
	b.Write([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0x42, 0x7e, 0, 0, 0, 3})
	b.u8(secEOF)
	b.u8(0x06) // vmdesc follows the end in real streams
	b.u32(2)
	b.WriteString("{}")
	return b.Bytes()
}

func TestSplitStream(t *testing.T) {
	dir := t.TempDir()
	mem, err := os.Create(filepath.Join(dir, "mem"))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := mem.Truncate(4 * targetPageSize); err != nil {
		t.Fatal(err)
	}
	var state bytes.Buffer
	st, err := splitStream(bytes.NewReader(synthStream("")), &state, mem, "mem")
	if err != nil {
		t.Fatal(err)
	}
	if want := synthStream("mem"); !bytes.Equal(state.Bytes(), want) {
		t.Fatalf("state differs from the stream without mem pages:\n got %x\nwant %x", state.Bytes(), want)
	}
	if st.BlockLength != 4*targetPageSize || st.PagesMoved != 4 || st.StateBytes != int64(state.Len()) {
		t.Fatalf("stats %+v", st)
	}
	got, err := os.ReadFile(mem.Name())
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Join([][]byte{pageOf(0), pageOf(0), pageOf('D'), pageOf('f')}, nil)
	if !bytes.Equal(got, want) {
		t.Fatal("memory file content differs")
	}
	// The pages that ended up zero are holes.
	if alloc := allocatedBytes(mem); alloc > 2*targetPageSize {
		t.Fatalf("memory file allocates %d bytes, want at most 2 pages", alloc)
	}
}

func TestSplitStreamRejects(t *testing.T) {
	good := synthStream("")
	cases := map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)/2],
		"magic":     append([]byte("XXXX"), good[4:]...),
	}
	// An XBZRLE page record where the first page record is.
	bad := bytes.Clone(good)
	i := bytes.Index(bad, []byte{secPart, 0, 0, 0, 2})
	bad[i+5+7] = ramFlagPage | 0x40
	cases["xbzrle"] = bad
	// A configuration subsection this parser does not know.
	cases["subsection"] = bytes.Replace(good, []byte("configuration/target-page-bits"), []byte("configuration/target-page-bitz"), 1)
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			mem, err := os.Create(filepath.Join(t.TempDir(), "mem"))
			if err != nil {
				t.Fatal(err)
			}
			defer mem.Close()
			_ = mem.Truncate(4 * targetPageSize)
			_, err = splitStream(bytes.NewReader(in), &bytes.Buffer{}, mem, "mem")
			if err == nil || !strings.Contains(err.Error(), "split migration stream") {
				t.Fatalf("got %v, want an error", err)
			}
		})
	}
}
