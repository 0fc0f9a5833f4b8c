package vport

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fifoPort returns a Port reading a FIFO, and the FIFO's path. A FIFO behaves as the port does
// for reads: 0 bytes while no writer (host) is connected, data while one is, and a writer may
// come and go.
func fifoPort(t *testing.T) (*Port, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "port")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := newPort(os.NewFile(uintptr(fd), path))
	t.Cleanup(func() { _ = p.Close() })
	return p, path
}

// host connects to the FIFO as its writer.
func host(t *testing.T, path string) *os.File {
	t.Helper()
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

type result struct {
	s   string
	err error
}

func readAsync(c *Conn) <-chan result {
	ch := make(chan result, 1)
	go func() {
		b := make([]byte, 64)
		n, err := c.Read(b)
		ch <- result{string(b[:n]), err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("read did not return")
		return result{}
	}
}

func TestVisits(t *testing.T) {
	p, path := fifoPort(t)
	for visit := range 3 {
		c := p.Next()
		pending := readAsync(c) // before the host comes: waits for it
		time.Sleep(30 * time.Millisecond)
		select {
		case r := <-pending:
			t.Fatalf("visit %d: read returned %q, %v with no host", visit, r.s, r.err)
		default:
		}
		w := host(t, path)
		if _, err := w.WriteString("hello"); err != nil {
			t.Fatal(err)
		}
		if r := await(t, pending); r.s != "hello" || r.err != nil {
			t.Fatalf("visit %d: read %q, %v; want hello", visit, r.s, r.err)
		}
		_ = w.Close() // the host leaves: the visit's reads end
		if r := await(t, readAsync(c)); !errors.Is(r.err, io.EOF) {
			t.Fatalf("visit %d: after the host left: %q, %v; want EOF", visit, r.s, r.err)
		}
		if r := await(t, readAsync(c)); !errors.Is(r.err, io.EOF) {
			t.Fatalf("visit %d: EOF is not lasting: %q, %v", visit, r.s, r.err)
		}
		_ = c.Close()
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	p, path := fifoPort(t)
	// Waiting for a host.
	c := p.Next()
	pending := readAsync(c)
	time.Sleep(20 * time.Millisecond)
	_ = c.Close()
	if r := await(t, pending); !errors.Is(r.err, io.EOF) {
		t.Fatalf("closed while waiting for a host: %q, %v; want EOF", r.s, r.err)
	}
	// Waiting for data from a connected host; the next visit gets what the host sends later.
	w := host(t, path)
	defer func() { _ = w.Close() }()
	c = p.Next()
	pending = readAsync(c)
	time.Sleep(20 * time.Millisecond)
	_ = c.Close()
	if r := await(t, pending); !errors.Is(r.err, io.EOF) {
		t.Fatalf("closed while waiting for data: %q, %v; want EOF", r.s, r.err)
	}
	next := p.Next()
	if _, err := w.WriteString("for the next visit"); err != nil {
		t.Fatal(err)
	}
	if r := await(t, readAsync(next)); r.s != "for the next visit" || r.err != nil {
		t.Fatalf("next visit read %q, %v", r.s, r.err)
	}
}

func TestSupersededConnTakesNothing(t *testing.T) {
	p, path := fifoPort(t)
	w := host(t, path)
	defer func() { _ = w.Close() }()
	old := p.Next()
	stale := readAsync(old) // never closed: a reader left behind by a session that ended
	time.Sleep(20 * time.Millisecond)
	c := p.Next()
	if _, err := w.WriteString("mine"); err != nil {
		t.Fatal(err)
	}
	if r := await(t, stale); !errors.Is(r.err, io.EOF) {
		t.Fatalf("superseded read got %q, %v; want EOF", r.s, r.err)
	}
	if r := await(t, readAsync(c)); r.s != "mine" || r.err != nil {
		t.Fatalf("current read got %q, %v; want mine", r.s, r.err)
	}
}

func TestPortCloseEndsReads(t *testing.T) {
	p, _ := fifoPort(t)
	c := p.Next()
	pending := readAsync(c)
	time.Sleep(20 * time.Millisecond)
	_ = p.Close()
	if r := await(t, pending); !errors.Is(r.err, io.EOF) {
		t.Fatalf("after the port closed: %q, %v; want EOF", r.s, r.err)
	}
}
