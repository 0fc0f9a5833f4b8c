package vmm

import (
	"fmt"
	"io"
	"os"
	"sync"
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

// console copies the guest's serial console into a bounded log file and an in-memory tail.
type console struct {
	tail tail
	done chan struct{}
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
		_, _ = io.Copy(io.MultiWriter(&c.tail, lw), r)
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
