package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The migration stream, as QEMU 7.2 writes it (migration/savevm.c,
// migration/ram.c), is the fallback snapshot format, for a QEMU that
// cannot save device state alone. A machine whose RAM is a private mapping
// (one restored lazily) then has all of its RAM in the stream, because
// x-ignore-shared only skips shared memory. splitStream takes that stream
// apart on the fly: the pages of the guest RAM block go into the
// snapshot's memory file at their offsets, and the rest (the RAM block
// list, the pages of small ROM blocks, all device state) into the state
// file. The result is restored like any other snapshot: lazily, with the
// memory file mapped.
//
// Only the parts of the format before the device state are parsed: the
// header, the configuration section, and the "ram" sections, whose records
// are a big-endian 64-bit word (page offset | flags), the block name unless
// RAM_SAVE_FLAG_CONTINUE, and a fill byte (ZERO) or a page (PAGE). RAM is
// the only iterable section QEMU sends for our machines, and iterable
// sections all precede the device state; from the first device section on
// the stream is copied verbatim. Anything unexpected is an error, never a
// guess: a QEMU that changes this format fails the conformance suite
// loudly.

const (
	qemuVMFileMagic   = 0x5145564d // "QEVM"
	qemuVMFileVersion = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secFull          = 0x04
	secSubsection    = 0x05
	secConfiguration = 0x07
	secFooter        = 0x7e

	ramFlagZero     = 0x02
	ramFlagMemSize  = 0x04
	ramFlagPage     = 0x08
	ramFlagEOS      = 0x10
	ramFlagContinue = 0x20

	targetPageSize = 4096
	targetPageMask = targetPageSize - 1
)

// splitStats describes a split stream.
type splitStats struct {
	StateBytes  int64 // bytes written to the state file
	PagesMoved  int64 // guest RAM pages written to the memory file
	ZeroPages   int64 // guest RAM zero pages (left as holes)
	BlockLength int64 // the guest RAM block's length from the stream
}

// streamSplitter is the state of one splitStream call.
type streamSplitter struct {
	r     *bufio.Reader
	w     *bufio.Writer
	cw    *countWriter
	mem   *os.File
	block string // RAM block whose pages go to mem

	ramSection   uint32
	haveRAM      bool
	ignoreShared bool   // x-ignore-shared was on: blocks carry their address
	lastBlock    string // block of the previous page record (CONTINUE)
	written      []uint64
	stats        splitStats

	// run is a pending contiguous run of pages for mem.
	run    []byte
	runOff int64
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// splitStream copies the migration stream r to state, moving the pages of
// RAM block `block` into mem (see above). mem should be empty: pages that
// are zero are not written.
func splitStream(r io.Reader, state io.Writer, mem *os.File, block string) (splitStats, error) {
	cw := &countWriter{w: state}
	s := &streamSplitter{
		r:     bufio.NewReaderSize(r, 1<<20),
		w:     bufio.NewWriterSize(cw, 1<<16),
		cw:    cw,
		mem:   mem,
		block: block,
		run:   make([]byte, 0, 1<<20),
	}
	err := s.split()
	if ferr := s.flushRun(); err == nil {
		err = ferr
	}
	if ferr := s.w.Flush(); err == nil {
		err = ferr
	}
	s.stats.StateBytes = cw.n
	if err != nil {
		return s.stats, fmt.Errorf("split migration stream: %w", err)
	}
	return s.stats, nil
}

func (s *streamSplitter) split() error {
	var hdr [8]byte
	if err := s.readCopy(hdr[:]); err != nil {
		return err
	}
	if m, v := binary.BigEndian.Uint32(hdr[:4]), binary.BigEndian.Uint32(hdr[4:]); m != qemuVMFileMagic || v != qemuVMFileVersion {
		return fmt.Errorf("not a QEMU migration stream (magic %#x version %d)", m, v)
	}
	for {
		t, err := s.r.ReadByte()
		if err != nil {
			return noEOF(err)
		}
		switch t {
		case secConfiguration:
			if err := s.w.WriteByte(t); err != nil {
				return err
			}
			if err := s.configuration(); err != nil {
				return fmt.Errorf("configuration section: %w", err)
			}
		case secStart:
			if err := s.w.WriteByte(t); err != nil {
				return err
			}
			id, err := s.u32()
			if err != nil {
				return err
			}
			name, err := s.str()
			if err != nil {
				return err
			}
			var iv [8]byte // instance id, version id
			if err := s.readCopy(iv[:]); err != nil {
				return err
			}
			if name != "ram" {
				return fmt.Errorf("unexpected iterable section %q", name)
			}
			s.ramSection, s.haveRAM = id, true
			if err := s.ramRecords(true); err != nil {
				return err
			}
			if err := s.footer(); err != nil {
				return err
			}
		case secPart, secEnd:
			if err := s.w.WriteByte(t); err != nil {
				return err
			}
			id, err := s.u32()
			if err != nil {
				return err
			}
			if !s.haveRAM || id != s.ramSection {
				return fmt.Errorf("section %d is not the ram section", id)
			}
			if err := s.ramRecords(false); err != nil {
				return err
			}
			if err := s.footer(); err != nil {
				return err
			}
		case secFull, secEOF:
			// Device state and the end: everything from here on is
			// copied as it is.
			if err := s.w.WriteByte(t); err != nil {
				return err
			}
			if _, err := io.Copy(s.w, s.r); err != nil {
				return err
			}
			return nil
		default:
			return fmt.Errorf("unexpected section type %#x", t)
		}
	}
}

// configuration parses the configuration section: the machine type name
// and the subsections QEMU 7.2 may send.
func (s *streamSplitter) configuration() error {
	n, err := s.u32()
	if err != nil {
		return err
	}
	if n > 256 {
		return fmt.Errorf("machine name of %d bytes", n)
	}
	if err := s.readCopy(make([]byte, n)); err != nil {
		return err
	}
	for {
		b, err := s.r.Peek(1)
		if err != nil {
			return noEOF(err)
		}
		if b[0] != secSubsection {
			return nil
		}
		if _, err := s.r.ReadByte(); err != nil {
			return err
		}
		if err := s.w.WriteByte(secSubsection); err != nil {
			return err
		}
		name, err := s.str()
		if err != nil {
			return err
		}
		if _, err := s.u32(); err != nil { // version
			return err
		}
		switch name {
		case "configuration/target-page-bits":
			bits, err := s.u32()
			if err != nil {
				return err
			}
			if 1<<bits != targetPageSize {
				return fmt.Errorf("target page bits %d", bits)
			}
		case "configuration/capabilities":
			count, err := s.u32()
			if err != nil {
				return err
			}
			for range count {
				c, err := s.str()
				if err != nil {
					return err
				}
				switch c {
				case "x-ignore-shared":
					s.ignoreShared = true
				case "postcopy-ram":
					return errors.New("postcopy streams are not supported")
				}
			}
		case "configuration/uuid":
			if err := s.readCopy(make([]byte, 16)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown subsection %q", name)
		}
	}
}

// footer copies a section footer when there is one.
func (s *streamSplitter) footer() error {
	b, err := s.r.Peek(1)
	if err != nil {
		return noEOF(err)
	}
	if b[0] != secFooter {
		return nil
	}
	var f [5]byte
	return s.readCopy(f[:])
}

// ramRecords processes RAM records up to and including the end-of-section
// record. Records of the target block are consumed; the others are
// copied.
func (s *streamSplitter) ramRecords(start bool) error {
	for {
		var word [8]byte
		if _, err := io.ReadFull(s.r, word[:]); err != nil {
			return noEOF(err)
		}
		v := binary.BigEndian.Uint64(word[:])
		flags, addr := v&targetPageMask, int64(v&^targetPageMask)
		switch {
		case flags == ramFlagEOS:
			_, err := s.w.Write(word[:])
			return err
		case flags == ramFlagMemSize:
			if !start {
				return errors.New("RAM block list outside the setup section")
			}
			if _, err := s.w.Write(word[:]); err != nil {
				return err
			}
			if err := s.blockList(addr); err != nil {
				return err
			}
		case flags&^ramFlagContinue == ramFlagZero, flags&^ramFlagContinue == ramFlagPage:
			block := s.lastBlock
			var name []byte
			if flags&ramFlagContinue == 0 {
				n, err := s.r.ReadByte()
				if err != nil {
					return noEOF(err)
				}
				name = make([]byte, n)
				if _, err := io.ReadFull(s.r, name); err != nil {
					return noEOF(err)
				}
				block = string(name)
				s.lastBlock = block
			} else if block == "" {
				return errors.New("RAM page continues no block")
			}
			if block == s.block {
				if err := s.movePage(flags&^ramFlagContinue == ramFlagZero, addr); err != nil {
					return err
				}
				continue
			}
			// A page of another block: copied as it came.
			if _, err := s.w.Write(word[:]); err != nil {
				return err
			}
			if name != nil {
				if err := s.w.WriteByte(byte(len(name))); err != nil {
					return err
				}
				if _, err := s.w.Write(name); err != nil {
					return err
				}
			}
			n := int64(1)
			if flags&^ramFlagContinue == ramFlagPage {
				n = targetPageSize
			}
			if _, err := io.CopyN(s.w, s.r, n); err != nil {
				return noEOF(err)
			}
		default:
			return fmt.Errorf("unsupported RAM record flags %#x (compression, xbzrle and rdma are not supported)", flags)
		}
	}
}

// blockList copies the RAM block list of the setup section (its total
// length is total): name, length and, with x-ignore-shared, guest address
// of each block.
func (s *streamSplitter) blockList(total int64) error {
	for total > 0 {
		name, err := s.str()
		if err != nil {
			return err
		}
		b := make([]byte, 8, 16) // used length, guest address
		if s.ignoreShared {
			b = b[:16]
		}
		if err := s.readCopy(b); err != nil {
			return err
		}
		length := int64(binary.BigEndian.Uint64(b[:8]))
		if name == s.block {
			s.stats.BlockLength = length
		}
		total -= length
	}
	if total != 0 {
		return errors.New("RAM block lengths do not add up")
	}
	return nil
}

// movePage consumes a page record's payload of the target block into the
// memory file.
func (s *streamSplitter) movePage(zero bool, addr int64) error {
	if s.stats.BlockLength == 0 || addr+targetPageSize > s.stats.BlockLength {
		return fmt.Errorf("RAM page at %#x outside block %q", addr, s.block)
	}
	page := addr / targetPageSize
	if s.written == nil {
		s.written = make([]uint64, (s.stats.BlockLength/targetPageSize+63)/64)
	}
	seen := s.written[page/64]&(1<<(page%64)) != 0
	if zero {
		fill, err := s.r.ReadByte()
		if err != nil {
			return noEOF(err)
		}
		s.stats.ZeroPages++
		if fill == 0 && !seen {
			return nil // a hole reads as zeros
		}
		if err := s.flushRun(); err != nil {
			return err
		}
		if fill == 0 {
			s.written[page/64] &^= 1 << (page % 64)
			return unix.Fallocate(int(s.mem.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, addr, targetPageSize)
		}
		s.written[page/64] |= 1 << (page % 64)
		_, err = s.mem.WriteAt(bytes.Repeat([]byte{fill}, targetPageSize), addr)
		return err
	}
	s.written[page/64] |= 1 << (page % 64)
	s.stats.PagesMoved++
	if len(s.run) > 0 && (s.runOff+int64(len(s.run)) != addr || len(s.run)+targetPageSize > cap(s.run)) {
		if err := s.flushRun(); err != nil {
			return err
		}
	}
	if len(s.run) == 0 {
		s.runOff = addr
	}
	n := len(s.run)
	s.run = s.run[:n+targetPageSize]
	if _, err := io.ReadFull(s.r, s.run[n:]); err != nil {
		return noEOF(err)
	}
	return nil
}

func (s *streamSplitter) flushRun() error {
	if len(s.run) == 0 {
		return nil
	}
	_, err := s.mem.WriteAt(s.run, s.runOff)
	s.run = s.run[:0]
	return err
}

// readCopy reads exactly len(b) bytes and copies them to the output.
func (s *streamSplitter) readCopy(b []byte) error {
	if _, err := io.ReadFull(s.r, b); err != nil {
		return noEOF(err)
	}
	_, err := s.w.Write(b)
	return err
}

func (s *streamSplitter) u32() (uint32, error) {
	var b [4]byte
	if err := s.readCopy(b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[:]), nil
}

// str reads and copies a string with a one-byte length.
func (s *streamSplitter) str() (string, error) {
	n, err := s.r.ReadByte()
	if err != nil {
		return "", noEOF(err)
	}
	if err := s.w.WriteByte(n); err != nil {
		return "", err
	}
	b := make([]byte, n)
	if err := s.readCopy(b); err != nil {
		return "", err
	}
	return string(b), nil
}

// noEOF turns an end of stream in the middle of the parsed part into an
// error that says so.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
