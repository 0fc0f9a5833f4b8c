package vmm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"

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
	tail tail
	idle markers
	done chan struct{}
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

// appendConsole is startConsole for a VM whose log already has its beginning.
func appendConsole(r io.Reader, path string) (*console, error) {
	return openConsole(r, path, os.O_APPEND)
}

func openConsole(r io.Reader, path string, mode int) (*console, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|mode, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening console log: %w", err)
	}
	c := &console{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer func() { _ = f.Close() }()
		lw := &limitedWriter{w: f, left: ConsoleLogLimit}
		_, _ = io.Copy(io.MultiWriter(&c.tail, &c.idle, lw), r)
	}()
	return c, nil
}

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
			_, _ = io.WriteString(l.w, "\n[cell: console log limit reached, further output dropped]\n")
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
