package filesystem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cellhq/cell/envd/process"
	pb "github.com/cellhq/cell/proto/filesystem"
)

// xattrPrefix is where file metadata lives: user.<key>.
const xattrPrefix = "user."

// resolve turns a client path into an absolute, clean path for id: relative paths (and "~")
// are taken from the user's home directory.
func resolve(p string, id process.Identity) (string, error) {
	if p == "" {
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("path: must not be empty"))
	}
	if strings.ContainsRune(p, 0) {
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("path: must not contain NUL"))
	}
	abs, err := id.Resolve(p)
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path: %w", err))
	}
	return abs, nil
}

// fsError maps an OS error to the Connect code E2B's SDKs expect.
func fsError(what string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, fs.ErrExist):
		return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, fs.ErrPermission):
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, syscall.ENOSPC):
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENOTEMPTY):
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %w", what, err))
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("%s: %w", what, err))
}

// names caches uid and gid names for one listing.
type names struct{ users, groups map[uint32]string }

func newNames() *names { return &names{users: map[uint32]string{}, groups: map[uint32]string{}} }

func (n *names) user(uid uint32) string {
	if s, ok := n.users[uid]; ok {
		return s
	}
	s := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(s); err == nil {
		s = u.Username
	}
	n.users[uid] = s
	return s
}

func (n *names) group(gid uint32) string {
	if s, ok := n.groups[gid]; ok {
		return s
	}
	s := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(s); err == nil {
		s = g.Name
	}
	n.groups[gid] = s
	return s
}

// entryInfo describes path (not following a final symlink).
func entryInfo(path string, n *names) (*pb.EntryInfo, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	return entryFrom(path, st, n), nil
}

func entryFrom(path string, st fs.FileInfo, n *names) *pb.EntryInfo {
	e := &pb.EntryInfo{
		Name: filepath.Base(path), Path: path, Size: st.Size(), Mode: uint32(st.Mode().Perm()),
		Permissions: st.Mode().String(), ModifiedTime: timestamppb.New(st.ModTime()),
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
		if t, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &t
		}
	case st.IsDir():
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	default:
		e.Type = pb.FileType_FILE_TYPE_FILE
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		e.Owner = n.user(sys.Uid)
		e.Group = n.group(sys.Gid)
	}
	if e.Type != pb.FileType_FILE_TYPE_SYMLINK {
		e.Metadata = readMetadata(path)
	}
	return e
}

// readMetadata returns the user.* extended attributes of path, without the prefix.
func readMetadata(path string) map[string]string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if err != nil || n <= 0 {
		return nil
	}
	var md map[string]string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		key, ok := strings.CutPrefix(name, xattrPrefix)
		if !ok || key == "" {
			continue
		}
		val := make([]byte, 4096)
		m, err := unix.Lgetxattr(path, name, val)
		if err != nil {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = string(val[:m])
	}
	return md
}

// mkdirAllAs creates dir and its missing parents, owned by id.
func mkdirAllAs(dir string, id process.Identity) error {
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s: %w", dir, syscall.ENOTDIR)
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllAs(parent, id); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return os.Lchown(dir, int(id.UID), int(id.GID))
}
