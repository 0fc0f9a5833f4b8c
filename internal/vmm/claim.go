package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// claimFile is the file in a VM's directory whose flock says which process manages the VM.
const claimFile = "owner.lock"

// ErrClaimed is returned when another live process manages a VM (its directory's claim is held).
var ErrClaimed = errors.New("the VM is managed by another process")

// claimDir takes the claim of the VM directory dir: an flock(2) on dir/owner.lock, held for as
// long as this process manages the VM (started it, or adopted it) and dropped by the kernel when
// the process dies, so a VM left running by a daemon that was killed is free for the next one.
// Whoever cleans a run directory leaves claimed VMs alone: a `cell run` sharing the data
// directory's run/ with `cell serve`, or two daemons sharing one run directory, never take each
// other's VMs for orphans. The file is opened close-on-exec: QEMU never holds it.
func claimDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, claimFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("claiming the VM directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrClaimed)
		}
		return nil, fmt.Errorf("claiming the VM directory: %w", err)
	}
	return f, nil
}

// Claimed reports whether a live process other than the caller's own claims manages the VM whose
// directory is dir (see claimDir). A directory without a claim file (or none at all) is not
// claimed.
func Claimed(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, claimFile), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
