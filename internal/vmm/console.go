package vmm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cellhq/cell/internal/channel"
)

// ConsoleLogLimit bounds the console log file: a guest printing forever must not fill the disk.
const ConsoleLogLimit = 4 << 20

// tailSize is how much of the console (and of QEMU's stderr) is kept in memory for errors.
const tailSize = 8 << 10

// tail is an io.Writer that keeps the last tailSize bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - tailSize; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// console copies the guest's serial console into a bounded log file and an in-memory tail, and
// counts envd's idle markers.
type console struct {
	tail   tail
	idle   markers
	stamps stamps
	done   chan struct{}
}

// markers counts occurrences of channel.IdleMarker in a stream written in pieces.
type markers struct {
	mu    sync.Mutex
	carry []byte // the end of the stream that may begin a marker
	n     uint64
	more  chan struct{} // closed (and replaced) when n grows
}

func (m *markers) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	buf := append(m.carry, p...)
	if k := bytes.Count(buf, []byte(channel.IdleMarker)); k > 0 {
		m.n += uint64(k)
		if m.more != nil {
			close(m.more)
			m.more = nil
		}
	}
	// A whole marker never fits in what is kept, so none is counted twice.
	keep := min(len(buf), len(channel.IdleMarker)-1)
	m.carry = append(m.carry[:0:0], buf[len(buf)-keep:]...)
	return len(p), nil
}

// count returns how many markers were seen, and a channel closed when there are more.
func (m *markers) count() (uint64, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.more == nil {
		m.more = make(chan struct{})
	}
	return m.n, m.more
}

// startConsole reads r until it ends, writing at most ConsoleLogLimit bytes to the file at path.
func startConsole(r io.Reader, path string) (*console, error) {
	return openConsole(r, path, os.O_TRUNC)
}

// appendConsole is startConsole for a VM whose log already has its beginning (an adopted VM):
// what is there counts against the limit, and was written at the latest when the file last
// changed.
func appendConsole(r io.Reader, path string) (*console, error) {
	return openConsole(r, path, os.O_APPEND)
}

func openConsole(r io.Reader, path string, mode int) (*console, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|mode, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening console log: %w", err)
	}
	c := &console{done: make(chan struct{})}
	var size int64
	if st, err := f.Stat(); err == nil && mode == os.O_APPEND && st.Size() > 0 {
		size = st.Size()
		c.stamps.mark(0, st.ModTime())
	}
	go func() {
		defer close(c.done)
		defer func() { _ = f.Close() }()
		sw := &stampedWriter{w: f, off: size, stamps: &c.stamps}
		lw := &limitedWriter{w: sw, left: max(ConsoleLogLimit-size, 0)}
		_, _ = io.Copy(io.MultiWriter(&c.tail, &c.idle, lw), r)
	}()
	return c, nil
}

// stampedWriter writes to w and records in stamps when each byte was written.
type stampedWriter struct {
	w      io.Writer
	off    int64
	stamps *stamps
}

func (s *stampedWriter) Write(p []byte) (int, error) {
	// Marked before the write: a reader that sees the bytes finds their time.
	s.stamps.mark(s.off, time.Now())
	n, err := s.w.Write(p)
	s.off += int64(n)
	return n, err
}

// maxStamps bounds the points a console keeps (16 bytes each).
const maxStamps = 1024

// stamps says when the bytes of a console log were written: points (offset, time in unix
// milliseconds), one per millisecond in which the guest wrote. When the list is full the older
// half is thinned (pairs merged into their first point), so the recent output, which a client
// following the log asks for, keeps exact times and older output gets earlier ones.
type stamps struct {
	mu  sync.Mutex
	pts []stamp
}

type stamp struct {
	off int64
	ms  int64
}

func (s *stamps) mark(off int64, t time.Time) {
	ms := t.UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.pts); n > 0 && s.pts[n-1].ms >= ms {
		return // same millisecond (or a clock step back): the earlier point covers it
	}
	if len(s.pts) == maxStamps {
		half := s.pts[:maxStamps/2]
		k := 0
		for i := 0; i < len(half); i += 2 {
			s.pts[k] = half[i]
			k++
		}
		k += copy(s.pts[k:], s.pts[maxStamps/2:])
		s.pts = s.pts[:k]
	}
	s.pts = append(s.pts, stamp{off: off, ms: ms})
}

// snapshot returns a copy of the points, for a reader.
func (s *stamps) snapshot() []stamp {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pts)
}

// ConsoleLog is a VM's console log opened for reading: its bytes up to what the file held when it
// was opened, and when they were written.
type ConsoleLog struct {
	f    *os.File
	size int64
	pts  []stamp
	// fallback stamps bytes written before any point (a console nobody recorded).
	fallback time.Time
}

// OpenConsoleLog opens the VM's console log. The caller closes it.
func (vm *VM) OpenConsoleLog() (*ConsoleLog, error) {
	f, err := os.Open(vm.dir.File("console.log"))
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	// The size first, the points after: every byte below the size was marked before it was
	// written.
	c := &ConsoleLog{f: f, size: min(st.Size(), ConsoleLogLimit+int64(len(limitMarker))), fallback: st.ModTime()}
	if vm.console != nil {
		c.pts = vm.console.stamps.snapshot()
	}
	return c, nil
}

// Size is how many bytes can be read.
func (c *ConsoleLog) Size() int64 { return c.size }

// ReadAt reads the log, never past Size.
func (c *ConsoleLog) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	if rest := c.size - off; int64(len(p)) > rest {
		n, err := c.f.ReadAt(p[:rest], off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return c.f.ReadAt(p, off)
}

// Stamp returns when the byte at off was written (to the millisecond; older output of a long log
// may get an earlier time, never a later one).
func (c *ConsoleLog) Stamp(off int64) time.Time {
	i := sort.Search(len(c.pts), func(i int) bool { return c.pts[i].off > off })
	if i == 0 {
		return c.fallback
	}
	return time.UnixMilli(c.pts[i-1].ms)
}

// Close closes the file.
func (c *ConsoleLog) Close() error { return c.f.Close() }

// limitMarker ends a console log that reached ConsoleLogLimit.
const limitMarker = "\n[cell: console log limit reached, further output dropped]\n"

// limitedWriter writes up to left bytes and silently drops the rest (after one marker line).
type limitedWriter struct {
	w    io.Writer
	left int64
	cut  bool
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	n := len(p)
	if l.left <= 0 {
		if !l.cut {
			l.cut = true
			_, _ = io.WriteString(l.w, limitMarker)
		}
		return n, nil
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	m, err := l.w.Write(p)
	l.left -= int64(m)
	if err != nil {
		// A failing log file must not stop the copy (that would stall the guest's console).
		l.left = 0
	}
	return n, nil
}
