package build

// A COPY step's upload, as E2B's JS SDK makes it (spoolTarArchive and getAllFilesInPath in
// its template code, node-tar underneath), which PackCopy reproduces so that the builder
// unpacks an upload from the CLI and one from the SDK the same way (checked by running the
// SDK's own glob and tar over a sample tree):
//
//   - a gzip'd tar (gzip is the SDK's default);
//   - entry names are relative to the build context (tar's cwd is the context), with /
//     separators; the context itself, when src is ".", is "./"; a directory's name ends in /;
//   - the entries are what src matches (a path or a glob; dot files included) and, for each
//     matched directory, that directory itself and everything under it, each listed on its
//     own (no recursion by tar), sorted by path as strings (a directory without its /, so
//     app/lib before app/lib-extra), minus what the ignore patterns exclude;
//   - a symlink is stored as a symlink with its target as read, never followed (the SDK
//     follows only when asked to resolve symlinks, which Cell's CLI never does); symlinked
//     directories are not descended into;
//   - modes are the permission bits (& 07777); a directory gets x wherever it has r;
//   - other file types (sockets, fifos, devices) are left out.
//
// Where PackCopy differs, deliberately:
//   - uid, gid and mtime are 0 and there are no user/group names (node-tar writes the
//     packer's);
//   - a second path to a hard-linked file is stored as a regular file (node-tar writes a hard
//     link entry);
//   - under a matched directory, the SDK's glob also lists the entries one level inside a
//     symlinked directory (app/link and app/link/f, which an unpacker writes through the
//     link); PackCopy stores only the link;
//   - .dockerignore follows Docker's rules (a pattern excludes a directory's contents too),
//     where the SDK hands the patterns to glob as they are;
//   - the files hash is Cell's own (PackCopy's comment), not the SDK's, which hashes directory
//     sizes and so differs between file systems; a hash is only compared with Cell's own.

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// Bounds of one COPY upload.
const (
	MaxCopyBytes   = 4 << 30 // file contents, summed
	MaxCopyEntries = 1 << 20
	maxIgnoreBytes = 1 << 20
)

// PackCopy packs what a COPY step with src and dest uploads from the build context at
// contextDir, writing the gzip'd tar to w (nil: only the hash, e.g. to ask the server whether
// it has the files already), and returns the step's files hash: a sha256 of src, dest and each
// entry's relative path, type, mode, link target and contents, so that an unchanged context
// gives the same hash whatever the mtimes, owners or listing order, and any change another.
// The hash is of what was written, so two calls disagreeing means the context changed between
// them.
//
// src is a path or a glob (*, ?, [..] within a name, ** across directories) relative to the
// context. PackCopy never leaves the context: an absolute src or one with .. is refused, and
// every file is opened through an os.Root of contextDir, so a symlink out of it is refused when
// src passes through it, stored as a link when it is an entry, never followed.
func PackCopy(ctx context.Context, contextDir, src, dest string, w io.Writer) (string, error) {
	if err := checkSrc(src); err != nil {
		return "", err
	}
	root, err := os.OpenRoot(contextDir)
	if err != nil {
		return "", fmt.Errorf("copy %s: the build context: %w", src, err)
	}
	defer root.Close()
	ign, err := readIgnore(root)
	if err != nil {
		return "", err
	}
	p := &packer{ctx: ctx, root: root, ign: ign, seen: map[string]bool{}, left: MaxCopyBytes}
	if err := p.collect(src); err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	if len(p.paths) == 0 {
		return "", fmt.Errorf("copy %s: no files in the build context match", src)
	}
	sort.Strings(p.paths)

	h := sha256.New()
	field := func(s string) { fmt.Fprintf(h, "%d:%s", len(s), s) }
	field("cell-copy-v1")
	field(src)
	field(dest)
	var tw *tar.Writer
	var zw *gzip.Writer
	if w != nil {
		zw = gzip.NewWriter(w)
		tw = tar.NewWriter(zw)
	}
	for _, rel := range p.paths {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("copy %s: %w", src, err)
		}
		if err := p.entry(rel, h, field, tw); err != nil {
			return "", fmt.Errorf("copy %s: %s: %w", src, rel, err)
		}
	}
	if tw != nil {
		if err := tw.Close(); err != nil {
			return "", fmt.Errorf("copy %s: tar: %w", src, err)
		}
		if err := zw.Close(); err != nil {
			return "", fmt.Errorf("copy %s: gzip: %w", src, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkSrc refuses a src that is absolute, reaches out of the context, or is no path.
func checkSrc(src string) error {
	switch {
	case src == "":
		return fmt.Errorf("copy: an empty source")
	case strings.IndexByte(src, 0) >= 0:
		return fmt.Errorf("copy %q: a NUL byte", src)
	case path.IsAbs(src):
		return fmt.Errorf("copy %s: an absolute source; sources are relative to the build context", src)
	}
	if c := path.Clean(src); c == ".." || strings.HasPrefix(c, "../") {
		return fmt.Errorf("copy %s: the source is outside the build context", src)
	}
	return nil
}

func readIgnore(root *os.Root) (*patternmatcher.PatternMatcher, error) {
	f, err := root.Open(".dockerignore")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	defer f.Close()
	pats, err := ignorefile.ReadAll(io.LimitReader(f, maxIgnoreBytes))
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	if len(pats) == 0 {
		return nil, nil
	}
	pm, err := patternmatcher.New(pats)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	return pm, nil
}

type packer struct {
	ctx   context.Context
	root  *os.Root
	ign   *patternmatcher.PatternMatcher
	paths []string // relative, "" for the context itself
	seen  map[string]bool
	// left is what remains of MaxCopyBytes: a file is refused before it is read if it would
	// go over, so a huge (or sparse) file costs nothing.
	left int64
}

func (p *packer) add(rel string) error {
	if p.seen[rel] {
		return nil
	}
	if len(p.paths) >= MaxCopyEntries {
		return fmt.Errorf("over %d files", MaxCopyEntries)
	}
	p.seen[rel] = true
	p.paths = append(p.paths, rel)
	return nil
}

// excluded says whether .dockerignore leaves rel out.
func (p *packer) excluded(rel string) (bool, error) {
	if p.ign == nil || rel == "" {
		return false, nil
	}
	ex, err := p.ign.MatchesOrParentMatches(rel)
	if err != nil {
		return false, fmt.Errorf(".dockerignore: %w", err)
	}
	return ex, nil
}

// collect finds the entries of src: what it matches, and everything under each directory
// matched.
func (p *packer) collect(src string) error {
	pat := path.Clean(src)
	var matches []string
	if pat == "." {
		matches = []string{""}
	} else if err := p.glob("", globSegments(pat), &matches); err != nil {
		return err
	}
	for _, m := range matches {
		fi, err := p.lstat(m)
		if err != nil {
			return err
		}
		if err := p.include(m, fi.Mode()); err != nil {
			return err
		}
	}
	return nil
}

// include adds rel unless it is excluded, and what is under it if it is a directory. An
// excluded directory is still walked when some pattern is a ! exception (it may bring back
// a file under it), as Docker does.
func (p *packer) include(rel string, mode fs.FileMode) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	ex, err := p.excluded(rel)
	if err != nil {
		return err
	}
	if !ex {
		if err := p.add(rel); err != nil {
			return err
		}
	}
	if !mode.IsDir() || (ex && !p.ign.Exclusions()) {
		return nil
	}
	ents, err := p.readDir(rel)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := p.include(path.Join(rel, e.Name()), e.Type()); err != nil {
			return err
		}
	}
	return nil
}

// glob matches the pattern's segments under dir: a literal name is looked up, a name with
// *, ? or [ matched against the directory's entries, ** matches any number of directories
// (not through symlinks, as glob does).
func (p *packer) glob(dir string, segs []string, out *[]string) error {
	if len(segs) == 0 {
		if len(*out) >= MaxCopyEntries {
			return fmt.Errorf("over %d matches", MaxCopyEntries)
		}
		*out = append(*out, dir)
		return nil
	}
	if err := p.ctx.Err(); err != nil {
		return err
	}
	seg, rest := segs[0], segs[1:]
	if seg == "**" {
		if err := p.glob(dir, rest, out); err != nil {
			return err
		}
		ents, err := p.readDirIfDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.IsDir() {
				if err := p.glob(path.Join(dir, e.Name()), segs, out); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if !strings.ContainsAny(seg, "*?[\\") {
		name := path.Join(dir, seg)
		if _, err := p.lstat(name); errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		} else if err != nil {
			return err
		}
		return p.glob(name, rest, out)
	}
	if _, err := path.Match(seg, ""); err != nil {
		return fmt.Errorf("pattern %q: %w", seg, err)
	}
	ents, err := p.readDirIfDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if ok, _ := path.Match(seg, e.Name()); ok {
			if err := p.glob(path.Join(dir, e.Name()), rest, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// globSegments splits a cleaned pattern at /, with a run of ** as one (they match the same,
// and each more would walk the tree again).
func globSegments(pat string) []string {
	var segs []string
	for _, s := range strings.Split(pat, "/") {
		if s == "**" && len(segs) > 0 && segs[len(segs)-1] == "**" {
			continue
		}
		segs = append(segs, s)
	}
	return segs
}

func (p *packer) lstat(rel string) (fs.FileInfo, error) {
	fi, err := p.root.Lstat(orDot(rel))
	if err != nil {
		return nil, fmt.Errorf("lstat: %w", err)
	}
	return fi, nil
}

// readDirIfDir lists dir's entries, none if it is not a directory (a glob's segment under a
// file matches nothing). A directory reached through a symlink inside the context is listed;
// one outside it is an error from the root.
func (p *packer) readDirIfDir(dir string) ([]fs.DirEntry, error) {
	fi, err := p.root.Stat(orDot(dir))
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", orDot(dir), err)
	}
	if !fi.IsDir() {
		return nil, nil
	}
	return p.readDir(dir)
}

func (p *packer) readDir(dir string) ([]fs.DirEntry, error) {
	f, err := p.root.Open(orDot(dir))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", orDot(dir), err)
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", orDot(dir), err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	return ents, nil
}

// entry hashes rel's entry and writes it to tw (if not nil).
func (p *packer) entry(rel string, h hash.Hash, field func(string), tw *tar.Writer) error {
	fi, err := p.lstat(rel)
	if err != nil {
		return err
	}
	hdr := &tar.Header{Name: rel, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	perm := int64(fi.Mode().Perm())
	if fi.Mode()&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	var file *os.File
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := p.root.Readlink(rel)
		if err != nil {
			return fmt.Errorf("readlink: %w", err)
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case fi.IsDir():
		// node-tar's rule: a directory readable by someone is listable by them.
		perm |= (perm & 0o444) >> 2
		hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
		if rel == "" {
			hdr.Name = "./"
		}
	case fi.Mode().IsRegular():
		// No following a symlink that replaced the file since, and no blocking on a fifo
		// that did; the open file's own stat is what gets packed.
		file, err = p.root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		defer file.Close()
		if fi, err = file.Stat(); err != nil {
			return fmt.Errorf("stat: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("changed while packing")
		}
		if fi.Size() > p.left {
			return fmt.Errorf("the files are over %d bytes", int64(MaxCopyBytes))
		}
		p.left -= fi.Size()
		hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
	default:
		return nil // sockets, fifos, devices: left out, as the SDK does
	}
	hdr.Mode = perm
	field(rel)
	field(string(rune(hdr.Typeflag)))
	field(strconv.FormatInt(hdr.Mode, 8))
	field(hdr.Linkname)
	field(strconv.FormatInt(hdr.Size, 10))
	if tw != nil {
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar: %w", err)
		}
	}
	if file == nil {
		return nil
	}
	var dst io.Writer = h
	if tw != nil {
		dst = io.MultiWriter(h, tw)
	}
	n, err := io.Copy(dst, io.LimitReader(file, hdr.Size))
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if n != hdr.Size {
		return fmt.Errorf("changed while packing (%d of %d bytes)", n, hdr.Size)
	}
	return nil
}

func orDot(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// HashCopies fills in the FilesHash of each of d's COPY steps from the build context at
// contextDir (no tar is made; PackCopy makes the upload when the server asks for it).
func (d *Dockerfile) HashCopies(ctx context.Context, contextDir string) error {
	for _, c := range d.Copies {
		h, err := PackCopy(ctx, contextDir, c.Src, c.Dest, nil)
		if err != nil {
			return fmt.Errorf("dockerfile line %d: %w", c.Line, err)
		}
		d.Spec.Steps[c.Step].FilesHash = h
	}
	return nil
}
