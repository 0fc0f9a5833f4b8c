package vport

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Find returns the device path of the virtio-serial port with the given name, looking in sysfs
// (there is no udev in the guest to make /dev/virtio-ports links).
func Find(sysfs, name string) (string, error) {
	dirs, err := filepath.Glob(filepath.Join(sysfs, "class/virtio-ports/*/name"))
	if err != nil {
		return "", err
	}
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", filepath.Base(filepath.Dir(p))), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q", name)
}

// Port is an open virtio-serial port. Each host visit is served by the Conn that Next returns;
// its reads go straight to the device (no goroutine in between: a hand-off between goroutines
// is a scheduler trip, and the first one after a restore runs on a cold translation cache).
type Port struct {
	f      *os.File
	closed chan struct{}
	once   sync.Once

	// owner is the current visit's Conn: any other finds EOF. mu orders the changes of the
	// device's deadlines with it.
	owner atomic.Pointer[Conn]
	mu    sync.Mutex
}

// Open opens the port device.
func Open(path string) (*Port, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return newPort(os.NewFile(uintptr(fd), path)), nil
}

// newPort serves the (non-blocking) device f.
func newPort(f *os.File) *Port {
	return &Port{f: f, closed: make(chan struct{})}
}

// waitHost bounds a wait for a host to connect during the first pollHostFor after one left;
// maxWaitHost bounds the later ones.
const (
	waitHost    = 10 * time.Millisecond
	pollHostFor = time.Second
	maxWaitHost = time.Second
)

// waitChange waits, through the runtime's poller, for the port's next readiness event, for d,
// or for c's visit to end.
func (c *Conn) waitChange(d time.Duration) {
	p := c.p
	raw, err := p.f.SyscallConn()
	if err != nil {
		time.Sleep(d)
		return
	}
	p.mu.Lock()
	if p.owner.Load() != c || c.gone() {
		p.mu.Unlock()
		return
	}
	err = p.f.SetReadDeadline(time.Now().Add(d))
	p.mu.Unlock()
	if err != nil {
		time.Sleep(10 * time.Millisecond) // not pollable: fall back to polling
		return
	}
	first := true
	_ = raw.Read(func(uintptr) bool {
		if first && !c.gone() {
			first = false
			return false
		}
		return true
	})
	p.mu.Lock()
	if p.owner.Load() == c && !c.gone() {
		_ = p.f.SetReadDeadline(time.Time{})
	}
	p.mu.Unlock()
}

// Next returns the connection for the next host visit. Reads on it wait for a host, then end
// with io.EOF when the host leaves (and writes fail from then on); it never closes the device.
// The previous visit's Conn is superseded: its reads find EOF and take none of the new visit's
// data (close it anyway, to wake a read parked on the port).
func (p *Port) Next() *Conn {
	c := &Conn{p: p, done: make(chan struct{})}
	p.mu.Lock()
	p.owner.Store(c)
	_ = p.f.SetDeadline(time.Time{})
	p.mu.Unlock()
	return c
}

// Close closes the device.
func (p *Port) Close() error {
	p.once.Do(func() { close(p.closed) })
	return p.f.Close()
}

// Conn is one host visit on a Port. Read is for one goroutine at a time; Close may be called
// from any goroutine and unblocks a pending Read.
type Conn struct {
	p    *Port
	done chan struct{}
	once sync.Once

	// Owned by the reader.
	visiting bool      // data has come in this visit
	since    time.Time // when this Conn began waiting for its host
}

// gone says whether c's visit is over: closed, superseded, or the device closed.
func (c *Conn) gone() bool {
	if c.p.owner.Load() != c {
		return true
	}
	select {
	case <-c.done:
		return true
	case <-c.p.closed:
		return true
	default:
		return false
	}
}

// Read reads what the port has, up to len(b), waiting (through the runtime's poller) while
// nothing has arrived and, before the visit's first data, while no host is connected.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	idle := time.Millisecond
	for {
		if c.gone() {
			return 0, io.EOF
		}
		n, err := c.read(b)
		if n > 0 {
			c.visiting = true
			return n, nil
		}
		switch {
		case c.gone():
			return 0, io.EOF
		case errors.Is(err, io.EOF) && c.visiting:
			// The host left. Writes of its session fail from now on instead of waiting for a
			// host to come back: a write parked on the full (or hostless) port would hold up
			// the session's end, and with it envd's readiness for the next host (a restore then
			// found envd inside its template's old session).
			c.p.mu.Lock()
			if c.p.owner.Load() == c {
				_ = c.p.f.SetWriteDeadline(time.Now())
			}
			c.p.mu.Unlock()
			return 0, io.EOF
		case errors.Is(err, io.EOF):
			// No host yet: sleep until the port changes (the driver wakes pollers when a host
			// connects), with a timeout in case a wake-up is missed. For a while after the
			// previous host left the timeout is short: a restore resumes the guest inside this
			// wait, soon after the host left (snapshots are taken then; guest time does not run
			// while the VM is saved), and a missed wake-up after a 1 s timeout cost ~1 s to
			// about one resume in ten (`cell bench pause`). After that it is long: a guest whose
			// host stays away (a daemon that died, or left its VMs for the next one) polling
			// every 10 ms kept ~19% of a host core busy.
			if c.since.IsZero() {
				c.since = time.Now()
			}
			wait := waitHost
			if time.Since(c.since) > pollHostFor {
				wait = maxWaitHost
			}
			c.waitChange(wait)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Close's wake-up (gone now), or a deadline of an earlier visit's Close.
		default:
			// Unexpected: back off so a broken device does not spin.
			select {
			case <-time.After(idle):
			case <-c.done:
			case <-c.p.closed:
			}
			idle = min(2*idle, 50*time.Millisecond)
		}
	}
}

// read reads what the port has, up to len(b): the guest driver hands out one 4 KiB buffer per
// read, so it reads on until the port is empty. It blocks, through the runtime's poller, only
// while nothing has arrived. A read of 0 bytes (no host connected) is io.EOF. It stops without
// reading once c's visit is over, so a superseded reader never takes the next visit's data.
func (c *Conn) read(b []byte) (int, error) {
	raw, err := c.p.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		for n < len(b) {
			if n == 0 && c.gone() {
				return true
			}
			m, err := unix.Read(int(fd), b[n:])
			switch {
			case m > 0:
				n += m
				continue
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EAGAIN):
				return n > 0 // nothing yet: wait for the port to become readable
			case err == nil: // no host connected
				if n == 0 {
					rerr = io.EOF
				}
				return true
			}
			if n == 0 {
				rerr = err
			}
			return true
		}
		return true
	})
	if n > 0 {
		return n, nil
	}
	if err != nil {
		return 0, err
	}
	return 0, rerr
}

func (c *Conn) Write(b []byte) (int, error) {
	select {
	case <-c.done:
		return 0, io.ErrClosedPipe
	default:
	}
	n, err := c.p.write(b)
	if err != nil {
		return n, fmt.Errorf("writing to host: %w", err)
	}
	return n, nil
}

// write writes all of b. When the port's queue is full it first retries for a while (yielding)
// before parking on the poller: the host drains the queue within microseconds, far sooner than
// the interrupt that wakes a parked writer arrives under TCG.
func (p *Port) write(b []byte) (int, error) {
	raw, err := p.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	spins := 0
	err = raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := unix.Write(int(fd), b[n:])
			switch {
			case m > 0:
				n += m
				spins = 0
				continue
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EAGAIN):
				if spins < 2000 {
					spins++
					runtime.Gosched()
					continue
				}
				spins = 0
				return false
			}
			werr = err
			if err == nil {
				werr = io.ErrShortWrite
			}
			return true
		}
		return true
	})
	if err != nil {
		return n, err
	}
	return n, werr
}

// Close ends this visit and unblocks a pending Read.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.p.mu.Lock()
		if c.p.owner.Load() == c {
			_ = c.p.f.SetReadDeadline(time.Now())
		}
		c.p.mu.Unlock()
	})
	return nil
}
