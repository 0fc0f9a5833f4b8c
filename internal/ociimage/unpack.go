package ociimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"
)

// Limits bound what an image may put on the host's disk.
type Limits struct {
	Bytes   int64 // file content, uncompressed
	Entries int   // files, directories and links
	// Room, when set, is asked again each time another CheckEvery bytes were written (the
	// total so far): an error stops the unpack (the host's disk is filling).
	Room func(written int64) error
}

// CheckEvery is how often Limits.Room is asked.
const CheckEvery = 256 << 20

// DefaultLimits hold any ordinary image (python:3.12 is ~1 GB in ~30,000 entries).
var DefaultLimits = Limits{Bytes: 16 << 30, Entries: 2_000_000}

// Stats is what an unpack wrote, and what it left out.
type Stats struct {
	Bytes   int64
	Entries int
	// Skipped counts device nodes and FIFOs (the guest's devtmpfs has its own) and entries of
	// other types.
	Skipped int
}

// maxLinkBytes bounds the names of the hard links held until the end of an unpack.
const maxLinkBytes = 64 << 20

// maxPath is Linux's PATH_MAX: no longer name or link target is unpacked.
const maxPath = 4096

// ErrInvalidEntry is wrapped when an entry cannot be unpacked as it is.
var ErrInvalidEntry = errors.New("invalid image entry")

// ErrTooLarge is wrapped when an image outgrows its Limits.
var ErrTooLarge = errors.New("image too large")

// Unpack writes img's file system (its layers flattened, whiteouts applied) into the directory
// dir, which must exist.
func Unpack(ctx context.Context, img *Image, dir string, lim Limits) (Stats, error) {
	rc := mutate.Extract(img.img)
	defer func() { _ = rc.Close() }() // stops the extracting goroutine when we stop early
	st, err := UnpackTar(ctx, rc, dir, lim)
	if err != nil {
		return st, fmt.Errorf("unpacking %s: %w", img.Source, err)
	}
	return st, nil
}

// UnpackTar writes a tar stream of one file system into dir. Nothing it holds reaches outside
// dir: every path is resolved inside it (os.Root), so neither "../" nor a symbolic link the
// stream made earlier leads out. Owners, modes (set-user-ID too) and times are kept; device
// nodes and FIFOs are skipped.
func UnpackTar(ctx context.Context, r io.Reader, dir string, lim Limits) (Stats, error) {
	var st Stats
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, err
	}
	defer func() { _ = root.Close() }()
	tr := tar.NewReader(r)
	u := &unpacker{root: root, lim: lim, st: &st, dirs: map[string]bool{}}
	// Hard links wait for the end: a flattened image lists its upper layers first, so a link
	// may come before the file it names.
	var links []*tar.Header
	linkBytes := 0
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			for _, h := range links {
				if err := link(root, h); err != nil {
					return st, fmt.Errorf("%s: %w", h.Name, err)
				}
			}
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("reading the image's files: %w", err)
		}
		if len(h.Name) > maxPath || len(h.Linkname) > maxPath {
			return st, fmt.Errorf("%w: a path of more than %d bytes", ErrInvalidEntry, maxPath)
		}
		p := path.Clean("/" + h.Name)[1:]
		if p == "" {
			continue // the root itself
		}
		if st.Entries++; st.Entries > lim.Entries {
			return st, fmt.Errorf("%w: more than %d files", ErrTooLarge, lim.Entries)
		}
		if h.Typeflag == tar.TypeLink {
			if linkBytes += len(p) + len(h.Linkname); linkBytes > maxLinkBytes {
				return st, fmt.Errorf("%w: more than %d bytes of hard link names", ErrTooLarge, maxLinkBytes)
			}
			links = append(links, &tar.Header{Name: p, Linkname: h.Linkname})
			continue
		}
		if err := u.entry(tr, h, p); err != nil {
			return st, fmt.Errorf("%s: %w", p, err)
		}
	}
}

// unpacker writes one tar's entries under root. Every operation resolves its path inside root
// component by component (os.Root), so what can be done on an open file is.
type unpacker struct {
	root *os.Root
	lim  Limits
	st   *Stats
	// dirs are the directories this unpack made or found: their parents need no MkdirAll.
	dirs map[string]bool
}

// parent makes sure p's directory exists.
func (u *unpacker) parent(p string) error {
	dir := path.Dir(p)
	if dir == "." || u.dirs[dir] {
		return nil
	}
	if err := u.root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for d := dir; d != "." && !u.dirs[d]; d = path.Dir(d) {
		u.dirs[d] = true
	}
	return nil
}

// forget drops p and what is below it from the directories known: an entry replaces it.
func (u *unpacker) forget(p string) {
	if !u.dirs[p] {
		return
	}
	for d := range u.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(u.dirs, d)
		}
	}
}

func (u *unpacker) entry(tr *tar.Reader, h *tar.Header, p string) error {
	root, lim, st := u.root, u.lim, u.st
	if err := u.parent(p); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeDir {
		u.forget(p)
	}
	mode := fs.FileMode(h.Mode).Perm()
	if h.Mode&04000 != 0 {
		mode |= fs.ModeSetuid
	}
	if h.Mode&02000 != 0 {
		mode |= fs.ModeSetgid
	}
	if h.Mode&01000 != 0 {
		mode |= fs.ModeSticky
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if fi, err := root.Lstat(p); err == nil && !fi.IsDir() {
			u.forget(p) // a link to a directory: what was made through it is elsewhere
			if err := root.Remove(p); err != nil {
				return err
			}
		}
		if err := root.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		u.dirs[p] = true
	case tar.TypeReg:
		if err := replace(root, p); err != nil {
			return err
		}
		f, err := root.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		before := st.Bytes
		n, err := io.Copy(f, io.LimitReader(tr, lim.Bytes-st.Bytes+1))
		st.Bytes += n
		if err == nil && lim.Room != nil && st.Bytes/CheckEvery != before/CheckEvery {
			err = lim.Room(st.Bytes)
		}
		if err == nil && st.Bytes > lim.Bytes {
			err = fmt.Errorf("%w: more than %d bytes", ErrTooLarge, lim.Bytes)
		}
		if err == nil {
			err = setMeta(f, h, mode)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case tar.TypeSymlink:
		if err := replace(root, p); err != nil {
			return err
		}
		if err := root.Symlink(h.Linkname, p); err != nil {
			return err
		}
		return root.Lchown(p, h.Uid, h.Gid)
	default:
		st.Skipped++
		return nil
	}
	// Owner first: a change of owner clears the set-user-ID bits that the mode then sets.
	if err := root.Lchown(p, h.Uid, h.Gid); err != nil {
		return err
	}
	if err := root.Chmod(p, mode); err != nil {
		return err
	}
	return root.Chtimes(p, h.ModTime, h.ModTime)
}

// setMeta gives the open file f h's owner, mode and times.
func setMeta(f *os.File, h *tar.Header, mode fs.FileMode) error {
	// Owner first: a change of owner clears the set-user-ID bits that the mode then sets.
	if err := f.Chown(h.Uid, h.Gid); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(h.ModTime.UnixNano())
	return unix.Futimes(int(f.Fd()), []unix.Timeval{tv, tv})
}

// link makes the hard link h (its Name cleaned).
func link(root *os.Root, h *tar.Header) error {
	if dir := path.Dir(h.Name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	target := path.Clean("/" + h.Linkname)[1:]
	if target == "" || target == h.Name {
		return fmt.Errorf("hard link to %q", h.Linkname)
	}
	if err := replace(root, h.Name); err != nil {
		return err
	}
	return root.Link(target, h.Name)
}

// replace clears the way for a new entry at p: whatever is there goes, a directory with what is
// in it (a later entry replaces an earlier one, as Docker unpacks).
func replace(root *os.Root, p string) error {
	return root.RemoveAll(p)
}
