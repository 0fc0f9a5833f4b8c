package cli

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// hostDir writes what a copy out of a sandbox brings into one directory on the host, the
// destination's parent, which the user named (through whatever links the user's path has). Below
// it, every name comes from the sandbox, so nothing is ever reached by a path string: each
// directory is opened from its parent's descriptor one plain name at a time, refusing a link
// (O_NOFOLLOW, and openat2's RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the kernel has it), and
// files, links and modes are made relative to such descriptors. A link that an earlier copy left
// where this one wants a directory is refused, not followed.
type hostDir struct {
	fd   int
	path string // for messages only
	// noOpenat2 is set once openat2 turned out to be missing (Linux < 5.6, or a seccomp filter
	// that refuses it): plain openat with O_NOFOLLOW does the same for the one-name paths used
	// here.
	noOpenat2 bool
}

func openHostDir(dir string) (*hostDir, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &hostDir{fd: fd, path: dir}, nil
}

func (h *hostDir) Close() error { return unix.Close(h.fd) }

// plainName reports whether name is one entry of a directory (no separator, not "." or "..").
func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// openAt opens name (one plain name) in the directory dirfd without following a link.
func (h *hostDir) openAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	if !plainName(name) {
		return -1, fmt.Errorf("%q is not a plain file name", name)
	}
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !h.noOpenat2 {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		if flags&unix.O_CREAT != 0 {
			how.Mode = uint64(mode)
		}
		for {
			fd, err := unix.Openat2(dirfd, name, &how)
			if err == unix.EINTR {
				continue
			}
			if err != unix.ENOSYS && err != unix.EPERM {
				return fd, err
			}
			break
		}
		h.noOpenat2 = true
	}
	for {
		fd, err := unix.Openat(dirfd, name, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// rel names the entry at components rel (below the destination's parent) in messages, escaped:
// the names are the sandbox's.
func (h *hostDir) rel(rel []string) string {
	return printableName(strings.TrimSuffix(h.path, "/") + "/" + strings.Join(rel, "/"))
}

// dirError explains a failed open of the directory at rel: a link there is refused.
func (h *hostDir) dirError(rel []string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("%s: on the host, not a directory (a link there is not followed)", h.rel(rel))
	}
	return &os.PathError{Op: "open", Path: h.rel(rel), Err: err}
}

// mkdir makes the directory name in parent (components rel, name last), or takes the directory
// that is there already, and returns it open. A link there is refused.
func (h *hostDir) mkdir(parent int, rel []string) (int, error) {
	name := rel[len(rel)-1]
	if err := unix.Mkdirat(parent, name, 0o700); err != nil && err != unix.EEXIST {
		return -1, &os.PathError{Op: "mkdir", Path: h.rel(rel), Err: err}
	}
	fd, err := h.openAt(parent, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, h.dirError(rel, err)
	}
	return fd, nil
}

// tempName is a fresh name next to name for a file or link being made.
func tempName(name string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	if len(name) > 200 { // room for the suffix within NAME_MAX
		name = name[:200]
	}
	return "." + name + ".cell-cp-" + hex.EncodeToString(b[:])
}

// writeFile makes the file name in parent (components rel, name last) with mode's permission
// bits and the bytes fill writes: into a new temporary file, renamed over name once complete (a
// link at name is replaced, never written through).
func (h *hostDir) writeFile(parent int, rel []string, mode os.FileMode, fill func(io.Writer) error) error {
	name := rel[len(rel)-1]
	var tmp string
	var fd int
	for try := 0; ; try++ {
		tmp = tempName(name)
		var err error
		fd, err = h.openAt(parent, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
		if err == nil {
			break
		}
		if err != unix.EEXIST || try == 10 {
			return &os.PathError{Op: "create", Path: h.rel(rel), Err: err}
		}
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = unix.Unlinkat(parent, tmp, 0)
		}
	}()
	f := os.NewFile(uintptr(fd), h.rel(rel))
	err := fill(f)
	if err == nil {
		err = f.Chmod(mode & os.ModePerm) // fchmod: the file just made, whatever is at name
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := unix.Renameat(parent, tmp, parent, name); err != nil {
		return &os.PathError{Op: "rename", Path: h.rel(rel), Err: err}
	}
	renamed = true
	return nil
}

// symlink makes name (rel's last component) in the open directory parent a link to target,
// replacing a file or link there (not a directory). The target is only data: nothing follows it.
func (h *hostDir) symlink(parent int, rel []string, target string) error {
	name := rel[len(rel)-1]
	if !plainName(name) {
		return fmt.Errorf("%q is not a plain file name", name)
	}
	for try := 0; ; try++ {
		tmp := tempName(name)
		err := unix.Symlinkat(target, parent, tmp)
		if err == unix.EEXIST && try < 10 {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "symlink", Path: h.rel(rel), Err: err}
		}
		if err := unix.Renameat(parent, tmp, parent, name); err != nil {
			_ = unix.Unlinkat(parent, tmp, 0)
			return &os.PathError{Op: "rename", Path: h.rel(rel), Err: err}
		}
		return nil
	}
}

// chmod gives the open directory fd (at components rel) mode's permission bits.
func (h *hostDir) chmod(fd int, rel []string, mode os.FileMode) error {
	if err := unix.Fchmod(fd, uint32(mode&os.ModePerm)); err != nil {
		return &os.PathError{Op: "chmod", Path: h.rel(rel), Err: err}
	}
	return nil
}
