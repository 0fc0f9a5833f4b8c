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
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/memcopy"
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

type chunk struct {
	b   []byte
	eof bool
}

// Port is an open virtio-serial port. One goroutine reads it; each host visit is served by the
// Conn that Next returns.
type Port struct {
	f      *os.File
	chunks chan chunk
	ack    chan struct{}
	closed chan struct{}
	once   sync.Once
}

// Open opens the port device in blocking mode.
func Open(path string) (*Port, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	p := &Port{f: os.NewFile(uintptr(fd), path), chunks: make(chan chunk), ack: make(chan struct{}),
		closed: make(chan struct{})}
	go p.pump()
	return p, nil
}

// pump reads the device. A zero read means no host is connected: it reports one EOF per host
// visit and polls until the host is back.
func (p *Port) pump() {
	buf := make([]byte, 256<<10)
	connected := false
	idle := time.Millisecond
	hostLeft := time.Now()
	for {
		n, err := p.readBatch(buf)
		if n > 0 {
			connected = true
			idle = time.Millisecond
			select {
			case p.chunks <- chunk{b: buf[:n]}:
			case <-p.closed:
				return
			}
			select {
			case <-p.ack:
			case <-p.closed:
				return
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			// Unexpected: back off so a broken device does not spin.
			idle = 50 * time.Millisecond
		}
		if connected {
			connected = false
			hostLeft = time.Now()
			// Writes of the departed host's session fail from now on instead of waiting for a
			// host to come back: a write parked on the full (or hostless) port would hold up
			// the session's end, and with it envd's readiness for the next host (a restore then
			// found envd inside its template's old session). Next clears it.
			_ = p.f.SetWriteDeadline(time.Now())
			select {
			case p.chunks <- chunk{eof: true}:
			case <-p.closed:
				return
			}
		}
		if errors.Is(err, io.EOF) {
			// No host: sleep until the port changes (the driver wakes pollers when a host
			// connects), with a timeout in case a wake-up is missed. For a while after the host
			// left the timeout is short: a restore resumes the guest inside this wait, soon
			// after the host left (snapshots are taken then; guest time does not run while
			// the VM is saved), and a missed wake-up after a 1 s timeout cost ~1 s to about
			// one resume in ten (`cell bench pause`). After that it is long: a guest whose host
			// stays away (a daemon that died, or left its VMs for the next one) polling every
			// 10 ms kept ~19% of a host core busy.
			wait := waitHost
			if time.Since(hostLeft) > pollHostFor {
				wait = maxWaitHost
			}
			p.waitChange(wait)
			select {
			case <-p.closed:
				return
			default:
			}
			continue
		}
		select {
		case <-time.After(idle):
		case <-p.closed:
			return
		}
		idle = min(2*idle, 20*time.Millisecond)
	}
}

// waitHost bounds a wait for a host to connect during the first pollHostFor after one left;
// maxWaitHost bounds the later ones.
const (
	waitHost    = 10 * time.Millisecond
	pollHostFor = time.Second
	maxWaitHost = time.Second
)

// waitChange waits, through the runtime's poller, for the port's next readiness event or for d.
func (p *Port) waitChange(d time.Duration) {
	raw, err := p.f.SyscallConn()
	if err != nil {
		time.Sleep(d)
		return
	}
	if err := p.f.SetReadDeadline(time.Now().Add(d)); err != nil {
		time.Sleep(10 * time.Millisecond) // not pollable: fall back to polling
		return
	}
	first := true
	_ = raw.Read(func(uintptr) bool {
		if first {
			first = false
			return false
		}
		return true
	})
	_ = p.f.SetReadDeadline(time.Time{})
}

// readBatch reads what the port has, up to len(buf): the guest driver hands out one 4 KiB buffer
// per read, so batching them before the hand-off to the reader saves a goroutine switch (slow
// under TCG) per 4 KiB. It blocks, through the runtime's poller, only while nothing has arrived.
// A read of 0 bytes (no host connected) is io.EOF.
func (p *Port) readBatch(buf []byte) (int, error) {
	raw, err := p.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		for n < len(buf) {
			m, err := unix.Read(int(fd), buf[n:])
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
	if err != nil {
		return n, err
	}
	return n, rerr
}

// Next returns a connection for the next host visit. Reads on it end with io.EOF when the host
// leaves (and writes fail); it never closes the device.
func (p *Port) Next() *Conn {
	_ = p.f.SetWriteDeadline(time.Time{})
	return &Conn{p: p, done: make(chan struct{})}
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

	mu   sync.Mutex
	left []byte // unread part of the current chunk, owned by the pump until acknowledged
	dead bool
}

// release tells the pump the current chunk is consumed. c.mu must be held.
func (c *Conn) release() {
	c.left = nil
	select {
	case c.p.ack <- struct{}{}:
	case <-c.p.closed:
	}
}

func (c *Conn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return 0, io.EOF
	}
	if len(c.left) == 0 {
		c.mu.Unlock()
		var ch chunk
		select {
		case ch = <-c.p.chunks:
		case <-c.done:
			return 0, io.EOF
		case <-c.p.closed:
			return 0, io.EOF
		}
		c.mu.Lock()
		if ch.eof || c.dead {
			c.dead = true
			if !ch.eof {
				c.left = ch.b
				c.release() // closed meanwhile: the chunk is dropped
			}
			c.mu.Unlock()
			return 0, io.EOF
		}
		c.left = ch.b
	}
	n := memcopy.Copy(b, c.left) // c.left starts anywhere in the batch: often misaligned
	c.left = c.left[n:]
	if len(c.left) == 0 {
		c.release()
	}
	c.mu.Unlock()
	return n, nil
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

// Close ends this visit. A chunk half read is dropped and handed back to the pump.
func (c *Conn) Close() error {
	c.once.Do(func() { close(c.done) })
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dead && len(c.left) > 0 {
		c.release()
	}
	c.dead = true
	return nil
}
