package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/pkg/client"
	fspb "github.com/cellhq/cell/proto/filesystem"
)

// copier copies between the host and one sandbox as `docker cp` does: a directory is copied
// whole (files, directories and symbolic links, with their permission bits); a destination that
// is an existing directory, or that ends in "/", receives the source under its own name; "-" is
// standard input or output, for one file's bytes. Nothing is left half-written on the host: a
// file is written next to its destination and renamed over it once complete. A copy out names its
// top entry on the host as the user did; every name below it is the sandbox's, and hostDir keeps
// all of them inside the destination.
type copier struct {
	sb     *client.Sandbox
	user   string
	stdin  io.Reader
	stdout io.Writer
	warn   io.Writer
}

func copyPaths(ctx context.Context, cl *client.Client, src, dst, user string, stdin io.Reader, stdout, warn io.Writer) error {
	srcID, srcPath, srcRemote := remotePath(src)
	dstID, dstPath, dstRemote := remotePath(dst)
	if srcRemote == dstRemote {
		return errors.New("cp: exactly one side must be ID:PATH")
	}
	id := srcID
	if dstRemote {
		id = dstID
	}
	sb, err := cl.Connect(ctx, id)
	if err != nil {
		return err
	}
	c := &copier{sb: sb, user: user, stdin: stdin, stdout: stdout, warn: warn}
	if srcRemote {
		return c.download(ctx, srcPath, dst)
	}
	return c.upload(ctx, src, dstPath)
}

func (c *copier) stat(ctx context.Context, p string) (*fspb.EntryInfo, error) {
	resp, err := c.sb.FS.Stat(ctx, client.AsUser(connect.NewRequest(&fspb.StatRequest{Path: p}), c.user))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetEntry(), nil
}

// download copies remote (a file, a directory or a symbolic link) to local.
func (c *copier) download(ctx context.Context, remote, local string) error {
	e, err := c.stat(ctx, remote)
	if err != nil {
		return fmt.Errorf("%s: %w", remote, err)
	}
	if local == "-" {
		if e.GetType() != fspb.FileType_FILE_TYPE_FILE {
			return fmt.Errorf("%s is not a file: only a file can go to standard output", remote)
		}
		_, err := c.sb.Download(ctx, remote, c.user, c.stdout)
		return err
	}
	dir, name, err := hostTarget(remote, local)
	if err != nil {
		return err
	}
	h, err := openHostDir(dir)
	if err != nil {
		return err
	}
	defer func() { _ = h.Close() }()
	var later deferred
	// What the sandbox answers as the entry's path is not used: the host name is the user's, and
	// the guest resolves the user's path for every request as it did for Stat.
	if err := c.downloadEntry(ctx, h, h.fd, e, remote, []string{name}, &later); err != nil {
		return err
	}
	// Links after every file and directory (as data: nothing of the copy is written through one).
	for _, l := range later.links {
		if err := h.symlink(l.rel, l.target); err != nil {
			return err
		}
	}
	// Directories' modes last (deepest first): one without write permission is filled first.
	for i := len(later.dirs) - 1; i >= 0; i-- {
		if err := h.chmodDir(later.dirs[i].rel, later.dirs[i].mode); err != nil {
			return err
		}
	}
	return nil
}

// hostTarget says where on the host a copy of remote (the sandbox path as the user typed it) to
// local goes: the directory dir, which the user named, and the entry name in it. Into an existing
// directory the copy goes under the last name of the user's own remote path, never one the
// sandbox answers (a sandbox could answer "..").
func hostTarget(remote, local string) (dir, name string, err error) {
	if st, err := os.Stat(local); err == nil && st.IsDir() {
		name := path.Base(path.Clean(remote))
		if !plainName(name) {
			return "", "", fmt.Errorf("cp: the sandbox path %q has no name of its own to copy under in %s: name the destination (for example %s)",
				remote, local, filepath.Join(local, "NAME"))
		}
		return local, name, nil
	}
	if strings.HasSuffix(local, string(filepath.Separator)) {
		return "", "", fmt.Errorf("%s: no such directory", local)
	}
	dir, name = filepath.Split(local)
	if dir == "" {
		dir = "."
	}
	if !plainName(name) {
		return "", "", fmt.Errorf("cp: %s: not a name to copy to", local)
	}
	return dir, name, nil
}

// deferred is what a download does once every file is written: links and the directories'
// modes, each named by its components below the destination's parent.
type deferred struct {
	links []pendingLink
	dirs  []dirMode
}

type pendingLink struct {
	rel    []string
	target string
}

type dirMode struct {
	rel  []string
	mode os.FileMode
}

// maxGuestPath is the longest path a copy out asks the sandbox about: Linux's PATH_MAX.
const maxGuestPath = 4096

// downloadEntry copies the sandbox's entry e (at the guest path remote) to the entry at
// components rel on the host, in the open directory parent.
func (c *copier) downloadEntry(ctx context.Context, h *hostDir, parent int, e *fspb.EntryInfo, remote string, rel []string, later *deferred) error {
	mode := os.FileMode(e.GetMode()) & os.ModePerm // permission bits only: no setuid from a guest
	switch e.GetType() {
	case fspb.FileType_FILE_TYPE_FILE:
		return h.writeFile(parent, rel, mode, func(w io.Writer) error {
			if _, err := c.sb.Download(ctx, remote, c.user, w); err != nil {
				return fmt.Errorf("%s: %w", remote, err)
			}
			return nil
		})
	case fspb.FileType_FILE_TYPE_SYMLINK:
		later.links = append(later.links, pendingLink{rel, e.GetSymlinkTarget()})
		return nil
	case fspb.FileType_FILE_TYPE_DIRECTORY:
		fd, err := h.mkdir(parent, rel)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }()
		later.dirs = append(later.dirs, dirMode{rel, mode})
		resp, err := c.sb.FS.ListDir(ctx, client.AsUser(connect.NewRequest(&fspb.ListDirRequest{Path: remote, Depth: 1}), c.user))
		if err != nil {
			return fmt.Errorf("%s: %w", remote, err)
		}
		for _, child := range resp.Msg.GetEntries() {
			name := child.GetName()
			// The guest chooses the names: each must be one plain name, or the copy could
			// reach outside target.
			if !plainName(name) {
				return fmt.Errorf("%s: the sandbox listed an entry named %q", remote, name)
			}
			childRemote := path.Join(remote, name)
			if len(childRemote) > maxGuestPath {
				// A real tree ends here (the guest's PATH_MAX); the host, writing relative to
				// descriptors, would go on as deep as a sandbox pretends.
				return fmt.Errorf("%s: the sandbox listed a tree deeper than a path can name", remote)
			}
			childRel := append(rel[:len(rel):len(rel)], name)
			if err := c.downloadEntry(ctx, h, fd, child, childRemote, childRel, later); err != nil {
				return err
			}
		}
		return nil
	default:
		fmt.Fprintf(c.warn, "cp: skipped %s: not a file, directory or link\n", printable(remote))
		return nil
	}
}

// upload copies local (a file, a directory or a symbolic link; "-": standard input) to remote.
func (c *copier) upload(ctx context.Context, local, remote string) error {
	if remote == "" {
		return errors.New("cp: the sandbox path is empty")
	}
	if local == "-" {
		return c.sb.Upload(ctx, remote, c.user, c.stdin)
	}
	target := remote
	if e, err := c.stat(ctx, remote); err == nil && e.GetType() == fspb.FileType_FILE_TYPE_DIRECTORY {
		target = path.Join(e.GetPath(), filepath.Base(local))
	} else if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return fmt.Errorf("%s: %w", remote, err)
	} else if strings.HasSuffix(remote, "/") {
		target = path.Join(remote, filepath.Base(local))
	}
	modes := map[os.FileMode][]string{}
	var links [][2]string
	// WalkDir visits a file or a link given as local itself (not following the link), once.
	if err := filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(local, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return c.uploadOne(ctx, p, path.Join(target, filepath.ToSlash(rel)), info, modes, &links)
	}); err != nil {
		return err
	}
	return c.finish(ctx, modes, links)
}

// uploadOne copies one file or directory, and notes its mode and links for finish.
func (c *copier) uploadOne(ctx context.Context, local, remote string, st fs.FileInfo, modes map[os.FileMode][]string, links *[][2]string) error {
	switch {
	case st.IsDir():
		_, err := c.sb.FS.MakeDir(ctx, client.AsUser(connect.NewRequest(&fspb.MakeDirRequest{Path: remote}), c.user))
		if err != nil && connect.CodeOf(err) != connect.CodeAlreadyExists {
			return fmt.Errorf("%s: %w", remote, err)
		}
	case st.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(local)
		if err != nil {
			return err
		}
		*links = append(*links, [2]string{t, remote})
		return nil
	case st.Mode().IsRegular():
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		err = c.sb.Upload(ctx, remote, c.user, f)
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", remote, err)
		}
	default:
		fmt.Fprintf(c.warn, "cp: skipped %s: not a file, directory or link\n", printable(local))
		return nil
	}
	// What an upload (0644) or MakeDir (0755) makes needs no chmod.
	if m := st.Mode().Perm(); (st.IsDir() && m != 0o755) || (!st.IsDir() && m != 0o644) {
		modes[m] = append(modes[m], remote)
	}
	return nil
}

// finish gives the copied files and directories their permission bits (an upload makes files
// 0644) and makes the links, a few commands in all.
func (c *copier) finish(ctx context.Context, modes map[os.FileMode][]string, links [][2]string) error {
	var cmds [][]string
	perms := make([]os.FileMode, 0, len(modes))
	for m := range modes {
		perms = append(perms, m)
	}
	sort.Slice(perms, func(i, j int) bool { return perms[i] < perms[j] })
	for _, m := range perms {
		for _, batch := range batches(modes[m], 200) {
			cmds = append(cmds, append([]string{"/bin/chmod", strconv.FormatUint(uint64(m), 8), "--"}, batch...))
		}
	}
	for _, l := range links {
		cmds = append(cmds, []string{"/bin/ln", "-sfn", "--", l[0], l[1]})
	}
	for _, argv := range cmds {
		var out strings.Builder
		res, err := c.sb.ExecArgv(ctx, argv, c.user, &out, &out)
		if err != nil {
			return err
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("cp: %s: %s", argv[0], strings.TrimSpace(out.String()))
		}
	}
	return nil
}

func batches(xs []string, n int) [][]string {
	var out [][]string
	for len(xs) > n {
		out = append(out, xs[:n])
		xs = xs[n:]
	}
	if len(xs) > 0 {
		out = append(out, xs)
	}
	return out
}
