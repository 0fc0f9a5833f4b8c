package filesystem

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"connectrpc.com/connect"

	"github.com/cellhq/cell/envd/process"
	"github.com/cellhq/cell/envd/state"
	"github.com/cellhq/cell/internal/ids"
	pb "github.com/cellhq/cell/proto/filesystem"
	"github.com/cellhq/cell/proto/filesystem/filesystemconnect"
)

// MaxWatchers bounds the polled watchers alive at once.
const MaxWatchers = 256

// Service is the filesystem service. Use New.
type Service struct {
	log      *slog.Logger
	defaults *state.Defaults
	users    *process.Users

	mu       sync.Mutex
	watchers map[string]*watcher
}

var _ filesystemconnect.FilesystemHandler = (*Service)(nil)

// New returns a Service that resolves users with users (the default one from defaults).
func New(log *slog.Logger, defaults *state.Defaults, users *process.Users) *Service {
	return &Service{log: log, defaults: defaults, users: users, watchers: map[string]*watcher{}}
}

// identity resolves the request's user (Basic auth, else the default user).
func (s *Service) identity(h interface{ Get(string) string }) (process.Identity, error) {
	name := process.UserFromHeader(h)
	if name == "" {
		name = s.defaults.User()
	}
	id, err := s.users.Lookup(name)
	if err != nil {
		return id, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("user %q: %w", name, err))
	}
	return id, nil
}

func (s *Service) path(h interface{ Get(string) string }, p string) (string, process.Identity, error) {
	id, err := s.identity(h)
	if err != nil {
		return "", id, err
	}
	abs, err := resolve(p, id)
	return abs, id, err
}

// Stat describes one entry.
func (s *Service) Stat(_ context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	p, _, err := s.path(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	e, err := entryInfo(p, newNames())
	if err != nil {
		return nil, fsError("stat "+p, err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its parents, owned by the user; AlreadyExists if it exists.
func (s *Service) MakeDir(_ context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	p, id, err := s.path(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(p); err == nil {
		if st.IsDir() {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory %s already exists", p))
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %s exists and is not a directory", p))
	}
	if err := mkdirAllAs(p, id); err != nil {
		return nil, fsError("make dir "+p, err)
	}
	e, err := entryInfo(p, newNames())
	if err != nil {
		return nil, fsError("stat "+p, err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: e}), nil
}

// Move renames source to destination, creating the destination's parents.
func (s *Service) Move(_ context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	src, id, err := s.path(req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := resolve(req.Msg.GetDestination(), id)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(src); err != nil {
		return nil, fsError("move "+src, err)
	}
	if err := mkdirAllAs(filepath.Dir(dst), id); err != nil {
		return nil, fsError("move "+src, err)
	}
	if err := os.Rename(src, dst); err != nil {
		return nil, fsError("move "+src+" to "+dst, err)
	}
	e, err := entryInfo(dst, newNames())
	if err != nil {
		return nil, fsError("stat "+dst, err)
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

// ListDir lists a directory to the given depth (1 when unset), not following symlinks.
func (s *Service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	root, _, err := s.path(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	// A symlink to a directory is listed as that directory, as ls would.
	if target, err := filepath.EvalSymlinks(root); err == nil {
		root = target
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, fsError("list "+root, err)
	}
	if !st.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %s is not a directory", root))
	}
	n := newNames()
	var entries []*pb.EntryInfo
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		des, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, de := range des {
			p := filepath.Join(dir, de.Name())
			info, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			entries = append(entries, entryFrom(p, info, n))
			if de.IsDir() && level < depth {
				if err := walk(p, level+1); err != nil && !errors.Is(err, fs.ErrPermission) {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(root, 1); err != nil {
		return nil, fsError("list "+root, err)
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: entries}), nil
}

// Remove removes a file or a directory tree.
func (s *Service) Remove(_ context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	p, _, err := s.path(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(p); err != nil {
		return nil, fsError("remove "+p, err)
	}
	if err := os.RemoveAll(p); err != nil {
		return nil, fsError("remove "+p, err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

// WatchDir streams the events under a directory until the client goes away.
func (s *Service) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], out *connect.ServerStream[pb.WatchDirResponse]) error {
	p, _, err := s.path(req.Header(), req.Msg.GetPath())
	if err != nil {
		return err
	}
	w, err := newWatcher(s.log, p, req.Msg.GetRecursive(), req.Msg.GetIncludeEntry(), 0)
	if err != nil {
		return err
	}
	defer w.close()
	if err := out.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	return w.stream(ctx, process.KeepAlive(req.Header()), func(ev *pb.FilesystemEvent) error {
		return out.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: ev}})
	}, func() error {
		return out.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}})
	})
}

// CreateWatcher starts a polled watcher whose events GetWatcherEvents collects.
func (s *Service) CreateWatcher(_ context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	p, _, err := s.path(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	full := len(s.watchers) >= MaxWatchers
	s.mu.Unlock()
	if full {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("watchers: at most %d at once; remove some first", MaxWatchers))
	}
	w, err := newWatcher(s.log, p, req.Msg.GetRecursive(), req.Msg.GetIncludeEntry(), MaxBufferedEvents)
	if err != nil {
		return nil, err
	}
	id := ids.New(16)
	s.mu.Lock()
	s.watchers[id] = w
	s.mu.Unlock()
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

func (s *Service) watcher(id string) (*watcher, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.watchers[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return w, nil
}

// GetWatcherEvents returns and forgets the events a watcher buffered. If the buffer overflowed
// since the last call, the call fails with ResourceExhausted (naming how many were dropped) and
// the watcher starts afresh.
func (s *Service) GetWatcherEvents(_ context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	w, err := s.watcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	evs, dropped, werr := w.take()
	if werr != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("watcher %s: %w", req.Msg.GetWatcherId(), werr))
	}
	if dropped > 0 {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"watcher %s: %d events dropped because more than %d were buffered; list the directory again", req.Msg.GetWatcherId(), dropped, MaxBufferedEvents))
	}
	return connect.NewResponse(&pb.GetWatcherEventsResponse{Events: evs}), nil
}

// RemoveWatcher stops a polled watcher.
func (s *Service) RemoveWatcher(_ context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	s.mu.Lock()
	w, ok := s.watchers[req.Msg.GetWatcherId()]
	delete(s.watchers, req.Msg.GetWatcherId())
	s.mu.Unlock()
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", req.Msg.GetWatcherId()))
	}
	w.close()
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}

// Close stops every watcher.
func (s *Service) Close() {
	s.mu.Lock()
	ws := s.watchers
	s.watchers = map[string]*watcher{}
	s.mu.Unlock()
	for _, w := range ws {
		w.close()
	}
}
