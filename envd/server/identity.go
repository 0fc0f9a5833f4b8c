package server

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reseeder mixes host randomness into the kernel's pool, credits it, and forces the CRNG to
// reseed: a clone restored from a snapshot must never repeat its template's (or a sibling's)
// random bytes. It holds /dev/urandom open from envd's start, so that a clone's first handshake
// does not walk the open path (cold code under TCG) to reach it.
type Reseeder struct {
	f *os.File
}

// OpenReseeder opens /dev/urandom for Reseed. The Reseeder owns the file until Close.
func OpenReseeder() (*Reseeder, error) {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/urandom: %w", err)
	}
	return &Reseeder{f: f}, nil
}

// Reseed credits entropy to the kernel's pool and reseeds the CRNG with it.
func (r *Reseeder) Reseed(entropy []byte) error {
	if len(entropy) == 0 {
		return nil
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+(len(entropy)+3)/4*4)
	binary.NativeEndian.PutUint32(buf[0:], uint32(8*len(entropy)))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(entropy)))
	copy(buf[8:], entropy)
	raw, err := r.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("reseeding: %w", err)
	}
	var what string
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		what = "RNDADDENTROPY"
		if _, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return
		}
		what = "RNDRESEEDCRNG"
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0)
	}); err != nil {
		return fmt.Errorf("reseeding: %w", err)
	}
	if errno != 0 {
		return fmt.Errorf("%s: %w", what, errno)
	}
	return nil
}

// Close closes /dev/urandom.
func (r *Reseeder) Close() error { return r.f.Close() }

// SetHostname sets the kernel's host name.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	return nil
}
