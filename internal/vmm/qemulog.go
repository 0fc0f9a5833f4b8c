package vmm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A detached QEMU (one that may outlive the daemon) writes its stdout and stderr into a named
// pipe in the VM's directory; the daemon drains it into qemu.log, which keeps the first
// qemuLogHead bytes and the last qemuLogTail: QEMU writing without end (a warning the guest can
// trigger again and again) no longer fills the disk. With no daemon attached the pipe must not
// stop QEMU: QEMU holds a read end of it that it never reads, so a write never finds the pipe
// without readers (SIGPIPE would kill it), and its write end is non-blocking, so a full pipe
// drops output instead of blocking QEMU (also a burst of more than the pipe holds, 64 KiB,
// written faster than the daemon drains it: QEMU's diagnostics are lines, far from that). The
// next daemon that adopts the VM opens the pipe again and drains what is in it.
const (
	qemuLogHead = 256 << 10
	qemuLogTail = 32 << 10
	qemuPipe    = "qemu.pipe"
	qemuLog     = "qemu.log"
)

// qemuCutMarker separates qemu.log's head from its tail.
const qemuCutMarker = "\n[cell: qemu.log limit reached; what follows is the end of QEMU's output]\n"

// qemuOutput drains a VM's QEMU output pipe into its capped log.
type qemuOutput struct {
	r    *os.File // the daemon's read end
	done chan struct{}

	// For a QEMU about to start: its stdout and stderr, and the read end it keeps.
	w, keep  *os.File
	closeKid sync.Once
}

// newQEMUOutput makes the pipe for a QEMU to be started in dir and starts draining it. Give it
// to QEMU's command with attach; call o.started after the start (or o.stop if it failed).
func newQEMUOutput(dir WorkDir) (*qemuOutput, error) {
	path := dir.File(qemuPipe)
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("making QEMU's output pipe: %w", err)
	}
	// The daemon's end first: opening the write end needs a reader.
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening QEMU's output pipe: %w", err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("opening QEMU's output pipe: %w", err)
	}
	keep, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		_ = r.Close()
		_ = w.Close()
		return nil, fmt.Errorf("opening QEMU's output pipe: %w", err)
	}
	log, err := openCappedLog(dir.File(qemuLog))
	if err != nil {
		_ = r.Close()
		_ = w.Close()
		_ = keep.Close()
		return nil, err
	}
	o := &qemuOutput{r: r, w: w, keep: keep, done: make(chan struct{})}
	go o.drain(log)
	return o, nil
}

// adoptQEMUOutput drains the output pipe of a QEMU an earlier daemon started in dir; nil when
// there is none (a VM started before QEMU's output went through a pipe writes qemu.log itself).
func adoptQEMUOutput(dir WorkDir) *qemuOutput {
	// Non-blocking: with no writer left (QEMU gone) the open must not wait for one.
	r, err := os.OpenFile(dir.File(qemuPipe), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil
	}
	log, err := openCappedLog(dir.File(qemuLog))
	if err != nil {
		_ = r.Close()
		return nil
	}
	o := &qemuOutput{r: r, done: make(chan struct{})}
	go o.drain(log)
	return o
}

// attach makes the pipe cmd's stdout and stderr, and gives cmd the read end it keeps (its fd 3).
func (o *qemuOutput) attach(cmd *exec.Cmd) {
	cmd.Stdout, cmd.Stderr = o.w, o.w
	cmd.ExtraFiles = append(cmd.ExtraFiles, o.keep)
}

func (o *qemuOutput) drain(log *cappedLog) {
	defer close(o.done)
	defer func() { _ = log.f.Close() }()
	// Ends when every writer is gone (QEMU exited) or the daemon closes its end (stop).
	_, _ = io.Copy(log, o.r)
}

// started makes QEMU's write end non-blocking (os/exec handed it over in blocking mode, and the
// mode belongs to the open file, which QEMU shares) and closes the daemon's copies of QEMU's
// ends: the drain then ends when QEMU does.
func (o *qemuOutput) started() error {
	var err error
	if rc, e := o.w.SyscallConn(); e != nil {
		err = e
	} else if e := rc.Control(func(fd uintptr) { err = unix.SetNonblock(int(fd), true) }); e != nil {
		err = e
	}
	o.closeChildEnds()
	if err != nil {
		return fmt.Errorf("making QEMU's output non-blocking: %w", err)
	}
	return nil
}

func (o *qemuOutput) closeChildEnds() {
	o.closeKid.Do(func() {
		if o.w != nil {
			_ = o.w.Close()
		}
		if o.keep != nil {
			_ = o.keep.Close()
		}
	})
}

// finish waits up to d for the drain to reach the end of QEMU's output (QEMU has exited), then
// stops it.
func (o *qemuOutput) finish(d time.Duration) {
	o.closeChildEnds()
	select {
	case <-o.done:
	case <-time.After(d):
	}
	o.stop()
}

// stop closes the daemon's end and waits for the drain to end; QEMU, if running, keeps writing
// into the pipe for the next daemon.
func (o *qemuOutput) stop() {
	o.closeChildEnds()
	_ = o.r.Close()
	<-o.done
}

// cappedLog is qemu.log: its first qemuLogHead bytes, then (once more came) qemuCutMarker and the
// last qemuLogTail bytes, rewritten in place as they change.
type cappedLog struct {
	f    *os.File
	head int64  // bytes of the head written
	tail []byte // the tail, once the head is full
}

// openCappedLog opens path, going on from what an earlier daemon wrote there.
func openCappedLog(path string) (*cappedLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	c := &cappedLog{f: f, head: min(st.Size(), qemuLogHead)}
	if rest := st.Size() - qemuLogHead - int64(len(qemuCutMarker)); rest > 0 {
		c.tail = make([]byte, min(rest, qemuLogTail))
		if _, err := f.ReadAt(c.tail, st.Size()-int64(len(c.tail))); err != nil && !errors.Is(err, io.EOF) {
			c.tail = c.tail[:0]
		}
	}
	return c, nil
}

func (c *cappedLog) Write(p []byte) (int, error) {
	n := len(p)
	if c.head < qemuLogHead {
		k := min(int64(len(p)), qemuLogHead-c.head)
		if _, err := c.f.WriteAt(p[:k], c.head); err != nil {
			return n, nil // a failing log must not stop the drain (QEMU's pipe would fill)
		}
		c.head += k
		p = p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	if len(p) >= qemuLogTail {
		c.tail = append(c.tail[:0], p[len(p)-qemuLogTail:]...)
	} else {
		if over := len(c.tail) + len(p) - qemuLogTail; over > 0 {
			c.tail = append(c.tail[:0], c.tail[over:]...)
		}
		c.tail = append(c.tail, p...)
	}
	at := int64(qemuLogHead)
	_, _ = c.f.WriteAt([]byte(qemuCutMarker), at)
	at += int64(len(qemuCutMarker))
	_, _ = c.f.WriteAt(c.tail, at)
	_ = c.f.Truncate(at + int64(len(c.tail)))
	return n, nil
}
