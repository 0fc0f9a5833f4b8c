package migstream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// The stream's framing (QEMU's migration/savevm.c and migration/ram.c).
const (
	fileMagic   = 0x5145564d // "QEVM"
	fileVersion = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secSubsection    = 0x05
	secConfiguration = 0x07
	secFooter        = 0x7e

	// PageSize is the target's page size: RAM records carry one page each.
	PageSize = 4096
	flagMask = PageSize - 1

	flagZero     = 0x02 // one fill byte follows
	flagMemSize  = 0x04 // the block list follows (setup)
	flagPage     = 0x08 // a whole page follows
	flagEOS      = 0x10 // end of this section's RAM records
	flagContinue = 0x20 // same block as the previous record: no block name

	ramSection = "ram"
	// maxRAM bounds the RAM a stream may declare (1 TiB).
	maxRAM = 1 << 40
	// runMax bounds the contiguous pages gathered into one write.
	runMax = 1 << 20
)

// Target receives a RAM block's pages at their offsets in the block. It is sized to the block
// first (Truncate), so pages never written read as zeros.
type Target interface {
	io.WriterAt
	Truncate(size int64) error
}

// Stats counts what Split saw.
type Stats struct {
	Pages      int64 // pages of the block written to the target
	ZeroPages  int64 // zero pages of the block (left as holes)
	OtherPages int64 // pages of other RAM blocks, kept in the stream
	StateBytes int64 // bytes written to the state stream
}

// Split copies the migration stream r to state without the pages of RAM block block, which go
// to ram instead. The block must be in the stream with exactly size bytes. Split returns once
// the stream has ended (EOF after QEMU's end of stream) or on the first error.
func Split(r io.Reader, state io.Writer, ram Target, block string, size int64) (Stats, error) {
	if size <= 0 || size%PageSize != 0 {
		return Stats{}, fmt.Errorf("RAM block size %d is not a positive multiple of %d", size, PageSize)
	}
	s := &splitter{
		r: bufio.NewReaderSize(r, 1<<20), w: bufio.NewWriterSize(state, 256<<10), ram: ram, block: block, size: size,
		written: make([]uint64, (size/PageSize+63)/64), run: make([]byte, 0, runMax),
	}
	err := s.split()
	if ferr := s.w.Flush(); err == nil {
		err = ferr
	}
	s.stats.StateBytes = s.out
	return s.stats, err
}

type splitter struct {
	r     *bufio.Reader
	w     *bufio.Writer
	ram   Target
	block string
	size  int64

	in, out int64 // stream bytes read and written (for error positions and stats)
	stats   Stats

	blocks    map[string]int64 // the stream's RAM blocks and their sizes
	ramID     uint32           // section id of the "ram" section
	haveRAM   bool
	lastBlock string   // block of the previous RAM record read
	lastKept  string   // block of the previous RAM record written
	written   []uint64 // pages of the block written to ram (one bit each)
	runOff    int64    // ram offset of run[0]
	run       []byte   // contiguous pages not written to ram yet
}

func (s *splitter) errorf(format string, args ...any) error {
	return fmt.Errorf("migration stream at byte %d: %s", s.in, fmt.Sprintf(format, args...))
}

func (s *splitter) read(p []byte) error {
	n, err := io.ReadFull(s.r, p)
	s.in += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("migration stream at byte %d: %w", s.in, err)
	}
	return nil
}

func (s *splitter) u8() (byte, error) {
	var b [1]byte
	err := s.read(b[:])
	return b[0], err
}

func (s *splitter) be32() (uint32, error) {
	var b [4]byte
	err := s.read(b[:])
	return binary.BigEndian.Uint32(b[:]), err
}

func (s *splitter) be64() (uint64, error) {
	var b [8]byte
	err := s.read(b[:])
	return binary.BigEndian.Uint64(b[:]), err
}

// str reads a string of n bytes.
func (s *splitter) str(n int) (string, error) {
	b := make([]byte, n)
	err := s.read(b)
	return string(b), err
}

// name reads a string that its length in one byte precedes.
func (s *splitter) name() (string, error) {
	n, err := s.u8()
	if err != nil {
		return "", err
	}
	return s.str(int(n))
}

func (s *splitter) write(p []byte) {
	n, _ := s.w.Write(p) // a write error stays in the bufio.Writer and is returned by Flush
	s.out += int64(n)
}

func (s *splitter) put8(v byte) { s.write([]byte{v}) }

func (s *splitter) put32(v uint32) { s.write(binary.BigEndian.AppendUint32(nil, v)) }

func (s *splitter) put64(v uint64) { s.write(binary.BigEndian.AppendUint64(nil, v)) }

func (s *splitter) putStr(v string) { s.put8(byte(len(v))); s.write([]byte(v)) }

func (s *splitter) split() error {
	magic, err := s.be32()
	if err != nil {
		return err
	}
	version, err := s.be32()
	if err != nil {
		return err
	}
	if magic != fileMagic || version != fileVersion {
		return s.errorf("not a QEMU migration stream of version %d (magic %#x, version %d)", fileVersion, magic, version)
	}
	s.put32(magic)
	s.put32(version)
	for {
		t, err := s.u8()
		if err != nil {
			return err
		}
		switch t {
		case secConfiguration:
			if err := s.configuration(); err != nil {
				return err
			}
		case secStart:
			if err := s.start(); err != nil {
				return err
			}
		case secPart, secEnd:
			id, err := s.be32()
			if err != nil {
				return err
			}
			if !s.haveRAM || id != s.ramID {
				return s.errorf("section %d continues, but only RAM (section %d) is expected here", id, s.ramID)
			}
			s.put8(t)
			s.put32(id)
			if err := s.records(false); err != nil {
				return err
			}
			if err := s.footer(); err != nil {
				return err
			}
			if t == secEnd {
				// The rest is device state, which keeps no RAM: it is copied as it is.
				if err := s.flushRun(); err != nil {
					return err
				}
				n, err := io.Copy(s.w, s.r)
				s.in += n
				s.out += n
				if err != nil {
					return fmt.Errorf("migration stream at byte %d: %w", s.in, err)
				}
				if _, ok := s.blocks[s.block]; !ok {
					return s.errorf("RAM block %q was not in the stream", s.block)
				}
				return nil
			}
		case secEOF:
			return s.errorf("the stream ended before RAM was complete")
		default:
			return s.errorf("unexpected section type %#x before the end of RAM", t)
		}
	}
}

// configuration passes the machine type through. Subsections (sent only for capabilities Cell
// does not use with a split save, such as x-ignore-shared) are refused.
func (s *splitter) configuration() error {
	n, err := s.be32()
	if err != nil {
		return err
	}
	if n > 255 {
		return s.errorf("machine name of %d bytes", n)
	}
	name, err := s.str(int(n))
	if err != nil {
		return err
	}
	next, err := s.r.Peek(1)
	if err != nil {
		return fmt.Errorf("migration stream at byte %d: %w", s.in, err)
	}
	if next[0] == secSubsection {
		return s.errorf("configuration subsections are not supported (is x-ignore-shared on?)")
	}
	s.put8(secConfiguration)
	s.put32(n)
	s.write([]byte(name))
	return nil
}

// start reads a section header; only RAM may start before RAM ends.
func (s *splitter) start() error {
	id, err := s.be32()
	if err != nil {
		return err
	}
	name, err := s.name()
	if err != nil {
		return err
	}
	instance, err := s.be32()
	if err != nil {
		return err
	}
	version, err := s.be32()
	if err != nil {
		return err
	}
	if name != ramSection || s.haveRAM {
		return s.errorf("section %q starts before the end of RAM", name)
	}
	s.ramID, s.haveRAM = id, true
	s.put8(secStart)
	s.put32(id)
	s.putStr(name)
	s.put32(instance)
	s.put32(version)
	if err := s.records(true); err != nil {
		return err
	}
	return s.footer()
}

// footer passes a section footer through, if the stream has them.
func (s *splitter) footer() error {
	next, err := s.r.Peek(1)
	if err != nil {
		return fmt.Errorf("migration stream at byte %d: %w", s.in, err)
	}
	if next[0] != secFooter {
		return nil
	}
	if _, err := s.u8(); err != nil {
		return err
	}
	id, err := s.be32()
	if err != nil {
		return err
	}
	if id != s.ramID {
		return s.errorf("footer of section %d ends section %d", id, s.ramID)
	}
	s.put8(secFooter)
	s.put32(id)
	return nil
}

// records handles RAM records up to the end-of-section mark. setup is true for the section
// that starts RAM: it begins with the list of blocks.
func (s *splitter) records(setup bool) error {
	for {
		hdr, err := s.be64()
		if err != nil {
			return err
		}
		flags, addr := hdr&flagMask, hdr&^flagMask
		switch {
		case flags == flagEOS:
			s.put64(hdr)
			return nil
		case flags == flagMemSize:
			if !setup || s.blocks != nil {
				return s.errorf("a RAM block list outside RAM's setup")
			}
			s.put64(hdr)
			if err := s.blockList(addr); err != nil {
				return err
			}
		case flags&^flagContinue == flagPage || flags&^flagContinue == flagZero:
			if err := s.page(flags, addr); err != nil {
				return err
			}
		default:
			return s.errorf("RAM record flags %#x are not supported (compression, XBZRLE or RDMA?)", flags)
		}
	}
}

// blockList reads the RAM blocks (name and size) that add up to total.
func (s *splitter) blockList(total uint64) error {
	if total > maxRAM {
		return s.errorf("%d bytes of RAM", total)
	}
	s.blocks = map[string]int64{}
	var sum uint64
	for sum < total {
		name, err := s.name()
		if err != nil {
			return err
		}
		size, err := s.be64()
		if err != nil {
			return err
		}
		if size > total-sum {
			return s.errorf("RAM block %q of %d bytes in %d bytes of RAM", name, size, total)
		}
		s.blocks[name] = int64(size)
		sum += size
		s.putStr(name)
		s.put64(size)
	}
	if sum != total {
		return s.errorf("RAM blocks add up to %d bytes, not %d", sum, total)
	}
	size, ok := s.blocks[s.block]
	if !ok {
		names := make([]string, 0, len(s.blocks))
		for n := range s.blocks {
			names = append(names, n)
		}
		sort.Strings(names)
		return s.errorf("RAM block %q is not in the stream (it has %q)", s.block, names)
	}
	if size != s.size {
		return s.errorf("RAM block %q has %d bytes, not %d", s.block, size, s.size)
	}
	return s.ram.Truncate(size)
}

var zeroPage [PageSize]byte

// page handles one page record: the block's pages go to ram, others stay in the stream.
func (s *splitter) page(flags, addr uint64) error {
	name := s.lastBlock
	if flags&flagContinue == 0 {
		var err error
		if name, err = s.name(); err != nil {
			return err
		}
	} else if name == "" {
		return s.errorf("a RAM record continues a block before any was named")
	}
	size, ok := s.blocks[name]
	if !ok {
		return s.errorf("a page of unknown RAM block %q", name)
	}
	if size < PageSize || addr > uint64(size-PageSize) {
		return s.errorf("page at %#x beyond RAM block %q of %d bytes", addr, name, size)
	}
	s.lastBlock = name
	if name != s.block {
		return s.keep(flags, addr, name)
	}
	i := addr / PageSize
	if flags&^flagContinue == flagZero {
		fill, err := s.u8()
		if err != nil {
			return err
		}
		s.stats.ZeroPages++
		if fill == 0 && s.written[i/64]&(1<<(i%64)) == 0 {
			return nil // a hole reads as zeros
		}
		if err := s.flushRun(); err != nil {
			return err
		}
		page := zeroPage[:]
		if fill != 0 {
			page = make([]byte, PageSize)
			for j := range page {
				page[j] = fill
			}
		}
		s.written[i/64] |= 1 << (i % 64)
		return s.writeRAM(page, int64(addr))
	}
	if len(s.run) > 0 && (s.runOff+int64(len(s.run)) != int64(addr) || len(s.run)+PageSize > cap(s.run)) {
		if err := s.flushRun(); err != nil {
			return err
		}
	}
	if len(s.run) == 0 {
		s.runOff = int64(addr)
	}
	n := len(s.run)
	s.run = s.run[:n+PageSize]
	if err := s.read(s.run[n:]); err != nil {
		return err
	}
	s.written[i/64] |= 1 << (i % 64)
	s.stats.Pages++
	return nil
}

// keep writes a record of another block to the stream, naming its block whenever the previous
// record written was of a different one (the reader tracks the last block it was given).
func (s *splitter) keep(flags, addr uint64, name string) error {
	data := make([]byte, 1)
	if flags&^flagContinue == flagPage {
		data = make([]byte, PageSize)
	}
	if err := s.read(data); err != nil {
		return err
	}
	if s.lastKept == name {
		s.put64(addr | flags | flagContinue)
	} else {
		s.put64(addr | flags&^flagContinue)
		s.putStr(name)
	}
	s.write(data)
	s.lastKept = name
	s.stats.OtherPages++
	return nil
}

func (s *splitter) flushRun() error {
	if len(s.run) == 0 {
		return nil
	}
	err := s.writeRAM(s.run, s.runOff)
	s.run = s.run[:0]
	return err
}

func (s *splitter) writeRAM(p []byte, off int64) error {
	if _, err := s.ram.WriteAt(p, off); err != nil {
		return fmt.Errorf("writing RAM at %#x: %w", off, err)
	}
	return nil
}

// maxDeviceState bounds a device state (Cell's VMs write ~70 KB).
const maxDeviceState = 64 << 20

// DeviceStream writes to w a stream that a VM started with -incoming loads, made of the device
// state r that QEMU's xen-save-devices-state wrote (header, device sections, end of stream; no
// configuration section and no RAM): the configuration section naming machine goes in after the
// header, as a migration would have sent it. The RAM must come from elsewhere (the memory
// backend's file).
func DeviceStream(w io.Writer, r io.Reader, machine string) error {
	if machine == "" || len(machine) > 255 {
		return fmt.Errorf("machine name %q: 1 to 255 bytes", machine)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxDeviceState+1))
	if err != nil {
		return err
	}
	switch {
	case len(b) > maxDeviceState:
		return fmt.Errorf("device state larger than %d bytes", maxDeviceState)
	case len(b) < 9 || binary.BigEndian.Uint32(b) != fileMagic || binary.BigEndian.Uint32(b[4:]) != fileVersion:
		return errors.New("device state: not a QEMU stream of version 3")
	case b[len(b)-1] != secEOF:
		return errors.New("device state: no end of stream (truncated?)")
	case b[8] == secConfiguration:
		return errors.New("device state: already has a configuration section")
	case b[8] == secStart || b[8] == secPart:
		return errors.New("device state: has RAM or iterative sections")
	}
	out := append([]byte(nil), b[:8]...)
	out = append(out, secConfiguration)
	out = binary.BigEndian.AppendUint32(out, uint32(len(machine)))
	out = append(out, machine...)
	out = append(out, b[8:]...)
	_, err = w.Write(out)
	return err
}
