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
// whole (files, directories and symbolic links, with their permission bits less the umask); a
// destination that is an existing directory, or that ends in "/", receives the source under its
// own name; "-" is standard input or output, for one file's bytes. Nothing is left half-written on
// the host: a file is written next to its destination and renamed over it once complete. A copy
// out names its top entry on the host as the user did; every name below it is the sandbox's, and
// hostDir keeps all of them inside the destination.
type copier struct {
	sb     *client.Sandbox
	opts   copyOptions
	stdin  io.Reader
	stdout io.Writer
	warn   io.Writer
	// entries counts what a copy out was listed, against opts.maxEntries.
	entries int
}

// copyOptions are a copy's settings.
type copyOptions struct {
	user string // the sandbox side is read or written as user ("": envd's default)
	// allowUnsafeLinks makes, in a copy out, the links that point outside the copy (skipped by
	// default: a later copy, or the user, could write through one).
	allowUnsafeLinks bool
	umask            os.FileMode // cleared from the modes a copy out gives what it makes
	maxEntries       int         // a copy out stops past this many entries listed
}

// maxCopyEntries bounds the entries of one copy out: a sandbox could list without end.
const maxCopyEntries = 1_000_000

// newCopyOptions is what `cell sandbox cp` copies with: the process's umask, maxCopyEntries.
func newCopyOptions(user string, allowUnsafeLinks bool) copyOptions {
	return copyOptions{user: user, allowUnsafeLinks: allowUnsafeLinks, umask: processUmask(), maxEntries: maxCopyEntries}
}

// processUmask is the process's umask, read from /proc/self/status (Linux 4.7 and later):
// umask(2) reads it only by setting it, for every thread at once. 022 when it cannot be read.
func processUmask() os.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o022
	}
	return parseUmask(string(b))
}

// parseUmask reads the Umask line of a /proc/PID/status; 022 when there is none to read.
func parseUmask(status string) os.FileMode {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil && m <= 0o777 {
				return os.FileMode(m)
			}
			break
		}
	}
	return 0o022
}

func copyPaths(ctx context.Context, cl *client.Client, src, dst string, opts copyOptions, stdin io.Reader, stdout, warn io.Writer) error {
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
	c := &copier{sb: sb, opts: opts, stdin: stdin, stdout: stdout, warn: warn}
	if srcRemote {
		return c.download(ctx, srcPath, dst)
	}
	return c.upload(ctx, src, dstPath)
}

// guestError is an error whose text the sandbox chose (envd's message, its names), shown on one
// line without control characters: a newline in it could fake a line of Cell's own.
type guestError struct{ err error }

func (e guestError) Error() string { return printableName(e.err.Error()) }
func (e guestError) Unwrap() error { return e.err }

// fromGuest wraps err, the sandbox's answer about what (a path), for the user.
func fromGuest(what string, err error) error {
	return fmt.Errorf("%s: %w", printableName(what), guestError{err})
}

func (c *copier) stat(ctx context.Context, p string) (*fspb.EntryInfo, error) {
	resp, err := c.sb.FS.Stat(ctx, client.AsUser(connect.NewRequest(&fspb.StatRequest{Path: p}), c.opts.user))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetEntry(), nil
}

// download copies remote (a file, a directory or a symbolic link) to local.
func (c *copier) download(ctx context.Context, remote, local string) error {
	e, err := c.stat(ctx, remote)
	if err != nil {
		return fromGuest(remote, err)
	}
	if local == "-" {
		if e.GetType() != fspb.FileType_FILE_TYPE_FILE {
			return fmt.Errorf("%s is not a file: only a file can go to standard output", printableName(remote))
		}
		if _, err := c.sb.Download(ctx, remote, c.opts.user, c.stdout); err != nil {
			return fromGuest(remote, err)
		}
		return nil
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
	// What the sandbox answers as the entry's path is not used: the host name is the user's, and
	// the guest resolves the user's path for every request as it did for Stat.
	rel := []string{name}
	if e.GetType() == fspb.FileType_FILE_TYPE_SYMLINK {
		return c.downloadLink(h, h.fd, rel, e.GetSymlinkTarget())
	}
	return c.downloadEntry(ctx, h, h.fd, e, remote, rel)
}

// hostTarget says where on the host a copy of remote (the sandbox path as the user typed it) to
// local goes: the directory dir, which the user named, and the entry name in it. Into an existing
// directory the copy goes under the last name of the user's own remote path, never one the
// sandbox answers (a sandbox could answer "..").
//
// local's last name is looked at, not through: a link there may be one an earlier copy out made,
// to where a sandbox chose. A link to a directory is refused (copying into it takes a trailing
// "/", the user's own say); any other link is replaced by a file or link copied to it, and refuses
// a directory, as a file there would.
func hostTarget(remote, local string) (dir, name string, err error) {
	trailing := strings.HasSuffix(local, string(filepath.Separator))
	stat := os.Lstat
	if trailing {
		stat = os.Stat
	}
	st, err := stat(local)
	if err == nil && st.IsDir() {
		name := path.Base(path.Clean(remote))
		if !plainName(name) {
			return "", "", fmt.Errorf("cp: the sandbox path %q has no name of its own to copy under in %s: name the destination (for example %s)",
				remote, local, filepath.Join(local, "NAME"))
		}
		return local, name, nil
	}
	if trailing {
		return "", "", fmt.Errorf("%s: no such directory", local)
	}
	if err == nil && st.Mode()&fs.ModeSymlink != 0 {
		if to, err := os.Stat(local); err == nil && to.IsDir() {
			return "", "", fmt.Errorf("cp: %s is a symbolic link to a directory, not followed (a copy out of a sandbox may have made it, to where the sandbox chose): to copy into that directory, write %s%c",
				local, local, filepath.Separator)
		}
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

// maxGuestPath is the longest path a copy out asks the sandbox about: Linux's PATH_MAX.
const maxGuestPath = 4096

// downloadEntry copies the sandbox's entry e (at the guest path remote; a file or a directory) to
// the entry at components rel on the host, in the open directory parent. A directory's links are
// made once everything else in it is (nothing of the copy is written through one), then its mode
// is set (one without write permission is filled first); both through its open descriptor, so
// nothing is kept for later, nor any path opened again.
func (c *copier) downloadEntry(ctx context.Context, h *hostDir, parent int, e *fspb.EntryInfo, remote string, rel []string) error {
	// Permission bits only (no setuid from a guest), less the umask, as tar does for a user.
	mode := os.FileMode(e.GetMode()) & os.ModePerm &^ c.opts.umask
	switch e.GetType() {
	case fspb.FileType_FILE_TYPE_FILE:
		return h.writeFile(parent, rel, mode, func(w io.Writer) error {
			if _, err := c.sb.Download(ctx, remote, c.opts.user, w); err != nil {
				return fromGuest(remote, err)
			}
			return nil
		})
	case fspb.FileType_FILE_TYPE_DIRECTORY:
		fd, err := h.mkdir(parent, rel)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }()
		resp, err := c.sb.FS.ListDir(ctx, client.AsUser(connect.NewRequest(&fspb.ListDirRequest{Path: remote, Depth: 1}), c.opts.user))
		if err != nil {
			return fromGuest(remote, err)
		}
		entries := resp.Msg.GetEntries()
		if c.entries += len(entries); c.entries > c.opts.maxEntries {
			return fmt.Errorf("%s: the sandbox listed over %d entries in this copy: it stops there", printableName(remote), c.opts.maxEntries)
		}
		for _, child := range entries {
			name := child.GetName()
			// The guest chooses the names: each must be one plain name, or the copy could
			// reach outside target.
			if !plainName(name) {
				return fmt.Errorf("%s: the sandbox listed an entry named %q", printableName(remote), name)
			}
			childRemote := path.Join(remote, name)
			if len(childRemote) > maxGuestPath {
				// A real tree ends here (the guest's PATH_MAX); the host, writing relative to
				// descriptors, would go on as deep as a sandbox pretends.
				return fmt.Errorf("%s: the sandbox listed a tree deeper than a path can name", printableName(remote))
			}
			if child.GetType() == fspb.FileType_FILE_TYPE_SYMLINK {
				continue // below, once the rest is written
			}
			// rel is not kept by the callee: one slice grows and shrinks with the depth.
			rel = append(rel, name)
			err := c.downloadEntry(ctx, h, fd, child, childRemote, rel)
			rel = rel[:len(rel)-1]
			if err != nil {
				return err
			}
		}
		for _, child := range entries {
			if child.GetType() != fspb.FileType_FILE_TYPE_SYMLINK {
				continue
			}
			rel = append(rel, child.GetName())
			err := c.downloadLink(h, fd, rel, child.GetSymlinkTarget())
			rel = rel[:len(rel)-1]
			if err != nil {
				return err
			}
		}
		return h.chmod(fd, rel, mode)
	default:
		fmt.Fprintf(c.warn, "cp: skipped %s: not a file, directory or link\n", printableName(remote))
		return nil
	}
}

// downloadLink makes the link at components rel (rel[0] is the copy's top entry) to target in the
// open directory parent, or skips it with a warning when it points outside the copy (unless the
// user allowed that).
func (c *copier) downloadLink(h *hostDir, parent int, rel []string, target string) error {
	if target == "" {
		fmt.Fprintf(c.warn, "cp: skipped %s: a link without a target\n", h.rel(rel))
		return nil
	}
	if !c.opts.allowUnsafeLinks && !linkInside(rel, target) {
		fmt.Fprintf(c.warn, "cp: skipped %s: a link to %q, outside the copy (--allow-unsafe-links makes it)\n", h.rel(rel), target)
		return nil
	}
	return h.symlink(parent, rel, target)
}

// linkInside reports whether a link at components rel (rel[0] being the copy's top entry, which
// the user named) whose target is target points inside the copy, whatever the links it goes
// through: its target is relative; its leading ".." (only there: after a name, which may itself
// be a link, ".." is not where it seems) climb real directories of the copy and stay below its
// top; what follows descends from there, through links themselves inside. A link that is the
// top entry itself is relative to the user's directory, outside the copy. These are the links a
// later copy, or the user's own path, could write through to a place the sandbox chose, as tar's
// "data" filter refuses them.
func linkInside(rel []string, target string) bool {
	if target == "" || strings.HasPrefix(target, "/") {
		return false
	}
	depth := len(rel) - 1 // of the directory holding the link; 0 is the user's, outside the copy
	named := false
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			if named {
				return false
			}
			depth--
		default:
			named = true
		}
	}
	return depth >= 1
}

// upload copies local (a file, a directory or a symbolic link; "-": standard input) to remote.
func (c *copier) upload(ctx context.Context, local, remote string) error {
	if remote == "" {
		return errors.New("cp: the sandbox path is empty")
	}
	if local == "-" {
		return c.sb.Upload(ctx, remote, c.opts.user, c.stdin)
	}
	target := remote
	if e, err := c.stat(ctx, remote); err == nil && e.GetType() == fspb.FileType_FILE_TYPE_DIRECTORY {
		target = path.Join(e.GetPath(), filepath.Base(local))
	} else if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return fromGuest(remote, err)
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
		_, err := c.sb.FS.MakeDir(ctx, client.AsUser(connect.NewRequest(&fspb.MakeDirRequest{Path: remote}), c.opts.user))
		if err != nil && connect.CodeOf(err) != connect.CodeAlreadyExists {
			return fromGuest(remote, err)
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
		err = c.sb.Upload(ctx, remote, c.opts.user, f)
		_ = f.Close()
		if err != nil {
			return fromGuest(remote, err)
		}
	default:
		fmt.Fprintf(c.warn, "cp: skipped %s: not a file, directory or link\n", printableName(local))
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
		res, err := c.sb.ExecArgv(ctx, argv, c.opts.user, &out, &out)
		if err != nil {
			return err
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("cp: %s: %s", argv[0], printableName(strings.TrimSpace(out.String())))
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
