package migstream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stream builds migration streams in QEMU's framing for the tests.
type stream struct{ bytes.Buffer }

func (s *stream) u8(v byte)        { s.WriteByte(v) }
func (s *stream) be32(v uint32)    { _ = binary.Write(s, binary.BigEndian, v) }
func (s *stream) be64(v uint64)    { _ = binary.Write(s, binary.BigEndian, v) }
func (s *stream) str(v string)     { s.u8(byte(len(v))); s.WriteString(v) }
func (s *stream) footer(id uint32) { s.u8(secFooter); s.be32(id) }

// header writes the file header, the configuration and RAM's setup section (id 0) with blocks.
func (s *stream) header(blocks ...any) {
	s.be32(fileMagic)
	s.be32(fileVersion)
	s.u8(secConfiguration)
	s.be32(uint32(len("microvm")))
	s.WriteString("microvm")
	s.u8(secStart)
	s.be32(0)
	s.str(ramSection)
	s.be32(0)
	s.be32(4)
	var total uint64
	for i := 0; i < len(blocks); i += 2 {
		total += uint64(blocks[i+1].(int))
	}
	s.be64(total | flagMemSize)
	for i := 0; i < len(blocks); i += 2 {
		s.str(blocks[i].(string))
		s.be64(uint64(blocks[i+1].(int)))
	}
	s.be64(flagEOS)
	s.footer(0)
}

// page writes a page record filled with fill (a zero record when fill is 0), naming block
// unless cont.
func (s *stream) page(block string, addr uint64, fill byte, cont bool) {
	flags := uint64(flagPage)
	if fill == 0 {
		flags = flagZero
	}
	if cont {
		flags |= flagContinue
	}
	s.be64(addr | flags)
	if !cont {
		s.str(block)
	}
	if fill == 0 {
		s.u8(0)
		return
	}
	s.Write(bytes.Repeat([]byte{fill}, PageSize))
}

// section opens a RAM section of type t (secPart or secEnd); close ends it.
func (s *stream) section(t byte) { s.u8(t); s.be32(0) }
func (s *stream) close()         { s.be64(flagEOS); s.footer(0) }

// memFile is a Target in memory.
type memFile struct{ b []byte }

func (m *memFile) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m *memFile) Truncate(size int64) error                { m.b = make([]byte, size); return nil }

const devState = "\x04device state that is not parsed\x00"

func TestSplitMovesTheBlockOut(t *testing.T) {
	var in stream
	in.header("pc.bios", 2*PageSize, "ram0", 8*PageSize)
	in.section(secPart)
	in.page("pc.bios", 0, 0xb1, false)
	in.page("ram0", 0, 0xa0, false)
	in.page("ram0", PageSize, 0xa1, true)
	in.page("ram0", 2*PageSize, 0, true)    // zero: a hole
	in.page("ram0", 5*PageSize, 0xa5, true) // not contiguous: a second run
	in.page("pc.bios", PageSize, 0xb2, false)
	in.close()
	in.section(secEnd)
	in.page("ram0", PageSize, 0, false) // written before, now zero: must be zeroed
	in.page("ram0", 7*PageSize, 0xa7, true)
	in.page("pc.bios", PageSize, 0xb3, false)
	in.close()
	in.WriteString(devState)

	var state bytes.Buffer
	ram := &memFile{}
	st, err := Split(bytes.NewReader(in.Bytes()), &state, ram, "ram0", 8*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pages != 4 || st.ZeroPages != 2 || st.OtherPages != 3 || st.StateBytes != int64(state.Len()) {
		t.Fatalf("stats %+v (state %d bytes)", st, state.Len())
	}
	want := make([]byte, 8*PageSize)
	for page, fill := range map[int]byte{0: 0xa0, 5: 0xa5, 7: 0xa7} {
		copy(want[page*PageSize:], bytes.Repeat([]byte{fill}, PageSize))
	}
	if !bytes.Equal(ram.b, want) {
		t.Fatal("RAM file differs from the pages sent")
	}

	// The state is the same stream without the block's pages; a bios page that followed ram0
	// pages with "continue" would be misread, so each names its block again.
	var exp stream
	exp.header("pc.bios", 2*PageSize, "ram0", 8*PageSize)
	exp.section(secPart)
	exp.page("pc.bios", 0, 0xb1, false)
	exp.page("pc.bios", PageSize, 0xb2, true)
	exp.close()
	exp.section(secEnd)
	exp.page("pc.bios", PageSize, 0xb3, true)
	exp.close()
	exp.WriteString(devState)
	if !bytes.Equal(state.Bytes(), exp.Bytes()) {
		t.Fatalf("state stream:\n got %q\nwant %q", trim(state.Bytes()), trim(exp.Bytes()))
	}
}

func trim(b []byte) []byte {
	return bytes.ReplaceAll(b, bytes.Repeat([]byte{0xb1}, 16), []byte("…"))
}

// Each malformed stream is refused with an error that says what was wrong, without a panic or a
// write outside the block.
func TestSplitRefusesWhatItDoesNotKnow(t *testing.T) {
	good := func(mutate func(s *stream)) []byte {
		var s stream
		s.header("ram0", 4*PageSize)
		s.section(secEnd)
		mutate(&s)
		s.close()
		s.WriteString(devState)
		return s.Bytes()
	}
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"not a stream":     {[]byte("GIF89a..."), "not a QEMU migration stream"},
		"empty":            {nil, "unexpected EOF"},
		"truncated page":   {good(func(s *stream) { s.page("ram0", 0, 1, false) })[:200], "unexpected EOF"},
		"beyond the block": {good(func(s *stream) { s.page("ram0", 4*PageSize, 1, false) }), "beyond RAM block"},
		"unknown block":    {good(func(s *stream) { s.page("nope", 0, 1, false) }), `unknown RAM block "nope"`},
		"address wraps":    {good(func(s *stream) { s.page("ram0", 0xffffffffffff0000, 0, false) }), "beyond RAM block"},
		"huge RAM": {func() []byte { var s stream; s.header("ram0", 4*PageSize); b := s.Bytes(); b[37] = 0xff; return b }(),
			"bytes of RAM"},
		"continue first":  {good(func(s *stream) { s.page("ram0", 0, 1, true) }), "before any was named"},
		"compressed page": {good(func(s *stream) { s.be64(0x100) }), "flags 0x100 are not supported"},
		"wrong size":      {func() []byte { var s stream; s.header("ram0", 2*PageSize); return s.Bytes() }(), "has 8192 bytes, not 16384"},
		"missing block": {func() []byte { var s stream; s.header("other", 4*PageSize); return s.Bytes() }(),
			`RAM block "ram0" is not in the stream`},
		"device before RAM ends": {func() []byte {
			var s stream
			s.header("ram0", 4*PageSize)
			s.u8(0x04)
			return s.Bytes()
		}(), "unexpected section type 0x4"},
		"early EOF section": {func() []byte { var s stream; s.header("ram0", 4*PageSize); s.u8(secEOF); return s.Bytes() }(),
			"ended before RAM was complete"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Split(bytes.NewReader(c.in), io.Discard, &memFile{}, "ram0", 4*PageSize)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// BenchmarkSplit measures the split of 256 MiB of pages into a file (the host's page cache).
func BenchmarkSplit(b *testing.B) {
	const size = 256 << 20
	var in stream
	in.header("ram0", size)
	in.section(secEnd)
	for addr := uint64(0); addr < size; addr += PageSize {
		in.page("ram0", addr, byte(addr>>12)|1, addr != 0)
	}
	in.close()
	in.WriteString(devState)
	b.SetBytes(size)
	for b.Loop() {
		f, err := os.Create(filepath.Join(b.TempDir(), "mem"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Split(bytes.NewReader(in.Bytes()), io.Discard, f, "ram0", size); err != nil {
			b.Fatal(err)
		}
		_ = f.Close()
	}
}

// FuzzSplit feeds Split arbitrary streams: it must return (an error or not) without panicking,
// and never write outside the block.
func FuzzSplit(f *testing.F) {
	var s stream
	s.header("pc.bios", PageSize, "ram0", 4*PageSize)
	s.section(secEnd)
	s.page("ram0", 0, 7, false)
	s.page("ram0", PageSize, 0, true)
	s.page("pc.bios", 0, 9, false)
	s.close()
	s.WriteString(devState)
	f.Add(s.Bytes())
	f.Add(s.Bytes()[:len(s.Bytes())/2])
	f.Fuzz(func(t *testing.T, in []byte) {
		ram := &boundedFile{size: 4 * PageSize}
		_, _ = Split(bytes.NewReader(in), io.Discard, ram, "ram0", 4*PageSize)
		if ram.bad != "" {
			t.Fatal(ram.bad)
		}
	})
}

// boundedFile records writes outside its size.
type boundedFile struct {
	size int64
	bad  string
}

func (b *boundedFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > b.size {
		b.bad = fmt.Sprintf("write of %d bytes at %d outside %d", len(p), off, b.size)
	}
	return len(p), nil
}

func (b *boundedFile) Truncate(size int64) error {
	if size != b.size {
		b.bad = fmt.Sprintf("truncated to %d, not %d", size, b.size)
	}
	return nil
}

func TestDeviceStream(t *testing.T) {
	header := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, fileMagic), fileVersion)
	// One full device section (type 4), then the end of the stream.
	devices := append(append([]byte(nil), header...), 0x04, 0, 0, 0, 1, 3, 'c', 'p', 'u', 0, 0, 0, 0, 0, 0, 0, 1, 42, secEOF)
	var out bytes.Buffer
	if err := DeviceStream(&out, bytes.NewReader(devices), "microvm"); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte(nil), header...), secConfiguration, 0, 0, 0, 7)
	want = append(append(want, "microvm"...), devices[8:]...)
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("got % x\nwant % x", out.Bytes(), want)
	}

	for name, tc := range map[string]struct {
		in      []byte
		machine string
		err     string
	}{
		"not QEMU's":       {append([]byte("QEVX"), devices[4:]...), "microvm", "not a QEMU stream"},
		"truncated":        {devices[:len(devices)-1], "microvm", "no end of stream"},
		"header only":      {header, "microvm", "not a QEMU stream"},
		"configured":       {append(append(append([]byte(nil), header...), secConfiguration), devices[8:]...), "microvm", "already has a configuration"},
		"RAM in it":        {append(append(append([]byte(nil), header...), secStart), devices[9:]...), "microvm", "RAM or iterative"},
		"no machine":       {devices, "", "machine name"},
		"machine too long": {devices, strings.Repeat("m", 256), "machine name"},
	} {
		var out bytes.Buffer
		err := DeviceStream(&out, bytes.NewReader(tc.in), tc.machine)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want one saying %q", name, err, tc.err)
		}
		if out.Len() != 0 {
			t.Errorf("%s: %d bytes written on error", name, out.Len())
		}
	}
}
