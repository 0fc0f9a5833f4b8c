package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFile is the name of the lock in a data directory.
const LockFile = "daemon.lock"

// ErrInUse is returned by Acquire when another process holds the data directory.
var ErrInUse = errors.New("data directory in use")

// InUseError says who holds a data directory.
type InUseError struct {
	Dir string
	// PID and What are what the holder wrote into the lock (0 and "" if it could not be read).
	PID  int
	What string
}

func (e *InUseError) Error() string {
	who := "another process"
	if e.What != "" {
		who = e.What
	}
	if e.PID > 0 {
		who += " (pid " + strconv.Itoa(e.PID) + ")"
	}
	return fmt.Sprintf("the data directory %s is in use by %s; stop it first, or choose another data directory with --home or $CELL_HOME", e.Dir, who)
}

func (e *InUseError) Unwrap() error { return ErrInUse }

// Lock is a held data-directory lock. Release (or the process's exit) lets it go.
type Lock struct {
	f    *os.File
	path string
}

// Acquire takes dir's lock without waiting, creating dir if needed; what names the holder in the
// message another process gets (e.g. "cell serve"). The lock is an flock(2) on dir/daemon.lock:
// the kernel drops it when the process dies (so a crash never leaves a stale lock), and the file
// is opened close-on-exec (so QEMU processes the daemon starts, which may outlive it, never
// hold it).
func Acquire(dir, what string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the data directory: %w", err)
	}
	p := filepath.Join(dir, LockFile)
	// Release removes the file (the directory is left as it was found); a lock taken on a file
	// that was removed meanwhile is no lock: then take the new one.
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", p, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			_ = f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				e := &InUseError{Dir: dir}
				e.PID, e.What = readHolder(p)
				return nil, e
			}
			return nil, fmt.Errorf("locking %s: %w", p, err)
		}
		held, err1 := f.Stat()
		named, err2 := os.Lstat(p)
		if err1 != nil || err2 != nil || !os.SameFile(held, named) {
			_ = f.Close()
			if attempt < 10 {
				continue
			}
			return nil, fmt.Errorf("locking %s: the file keeps being replaced", p)
		}
		// Who holds it, for the message the next one gets (only ever read for that).
		holder := fmt.Sprintf("%d %s\n", os.Getpid(), strings.ReplaceAll(what, "\n", " "))
		if err := f.Truncate(0); err == nil {
			_, _ = f.WriteAt([]byte(holder), 0)
		}
		return &Lock{f: f, path: p}, nil
	}
}

// Release lets the lock go and removes its file. Releasing twice is harmless.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	// Removed while still held: whoever opens the name next makes a new file, and whoever
	// opened this one before sees that it is no longer the one named (see Acquire).
	_ = os.Remove(l.path)
	return f.Close() // closing the last descriptor drops the flock
}

// readHolder reads "PID WHAT" from the lock file; garbage gives zero values.
func readHolder(p string) (int, string) {
	b, err := os.ReadFile(p)
	if err != nil || len(b) > 4096 {
		return 0, ""
	}
	pidText, what, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return 0, ""
	}
	return pid, what
}
