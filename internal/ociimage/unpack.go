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

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Limits bound what an image may put on the host's disk.
type Limits struct {
	Bytes   int64 // file content, uncompressed
	Entries int   // files, directories and links
}

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
	// Hard links wait for the end: a flattened image lists its upper layers first, so a link
	// may come before the file it names.
	var links []*tar.Header
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
		p := path.Clean("/" + h.Name)[1:]
		if p == "" {
			continue // the root itself
		}
		if st.Entries++; st.Entries > lim.Entries {
			return st, fmt.Errorf("%w: more than %d files", ErrTooLarge, lim.Entries)
		}
		if h.Typeflag == tar.TypeLink {
			h.Name = p
			links = append(links, h)
			continue
		}
		if err := unpackEntry(root, tr, h, p, lim, &st); err != nil {
			return st, fmt.Errorf("%s: %w", p, err)
		}
	}
}

func unpackEntry(root *os.Root, tr *tar.Reader, h *tar.Header, p string, lim Limits, st *Stats) error {
	if dir := path.Dir(p); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
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
			if err := root.Remove(p); err != nil {
				return err
			}
		}
		if err := root.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case tar.TypeReg:
		if err := replace(root, p); err != nil {
			return err
		}
		f, err := root.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		n, err := io.Copy(f, io.LimitReader(tr, lim.Bytes-st.Bytes+1))
		st.Bytes += n
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if st.Bytes > lim.Bytes {
			return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, lim.Bytes)
		}
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

// replace clears the way for a new entry at p: a file, link or empty directory there goes (a
// later layer's entry replaces an earlier one's).
func replace(root *os.Root, p string) error {
	if err := root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
