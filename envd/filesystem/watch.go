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
	"time"

	"connectrpc.com/connect"
	"github.com/fsnotify/fsnotify"

	pb "github.com/cellhq/cell/proto/filesystem"
)

// MaxBufferedEvents bounds the events a watcher holds for a client that has not taken them.
const MaxBufferedEvents = 4096

// watcher turns fsnotify events under one directory into E2B filesystem events, buffered up to a
// limit; past it, events are counted as dropped instead of held.
type watcher struct {
	root      string
	recursive bool
	entries   bool
	limit     int

	fsw       *fsnotify.Watcher
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu      sync.Mutex
	buf     []*pb.FilesystemEvent
	dropped int
	err     error
	wake    chan struct{}
}

func newWatcher(log *slog.Logger, root string, recursive, entries bool, limit int) (*watcher, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fsError("watch "+root, err)
	}
	if !st.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %s is not a directory", root))
	}
	if limit <= 0 {
		limit = MaxBufferedEvents
	}
	fsw, err := fsnotify.NewBufferedWatcher(256)
	if err != nil {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("watch %s: %w", root, err))
	}
	w := &watcher{root: root, recursive: recursive, entries: entries, limit: limit, fsw: fsw,
		done: make(chan struct{}), wake: make(chan struct{}, 1)}
	if err := w.add(root); err != nil {
		_ = fsw.Close()
		return nil, fsError("watch "+root, err)
	}
	w.wg.Add(1)
	go w.run(log)
	return w, nil
}

// add watches dir, and with recursion every directory below it.
func (w *watcher) add(dir string) error {
	if !w.recursive {
		return w.fsw.Add(dir)
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			return nil
		}
		if d.IsDir() {
			if err := w.fsw.Add(p); err != nil && p == dir {
				return err
			}
		}
		return nil
	})
}

func eventType(op fsnotify.Op) pb.EventType {
	switch {
	case op.Has(fsnotify.Create):
		return pb.EventType_EVENT_TYPE_CREATE
	case op.Has(fsnotify.Write):
		return pb.EventType_EVENT_TYPE_WRITE
	case op.Has(fsnotify.Remove):
		return pb.EventType_EVENT_TYPE_REMOVE
	case op.Has(fsnotify.Rename):
		return pb.EventType_EVENT_TYPE_RENAME
	case op.Has(fsnotify.Chmod):
		return pb.EventType_EVENT_TYPE_CHMOD
	}
	return pb.EventType_EVENT_TYPE_UNSPECIFIED
}

func (w *watcher) run(log *slog.Logger) {
	defer w.wg.Done()
	for {
		select {
		case <-w.done:
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			t := eventType(ev.Op)
			if t == pb.EventType_EVENT_TYPE_UNSPECIFIED {
				continue
			}
			if t == pb.EventType_EVENT_TYPE_CREATE && w.recursive {
				if st, err := os.Lstat(ev.Name); err == nil && st.IsDir() {
					_ = w.add(ev.Name)
				}
			}
			rel, err := filepath.Rel(w.root, ev.Name)
			if err != nil {
				rel = ev.Name
			}
			fe := &pb.FilesystemEvent{Name: rel, Type: t}
			if w.entries && t != pb.EventType_EVENT_TYPE_REMOVE && t != pb.EventType_EVENT_TYPE_RENAME {
				if e, err := entryInfo(ev.Name, newNames()); err == nil {
					fe.Entry = e
				}
			}
			w.push(fe)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.mu.Lock()
				w.dropped++
				w.mu.Unlock()
				w.signal()
				continue
			}
			log.Debug("watch error", "root", w.root, "err", err)
		}
	}
}

func (w *watcher) push(ev *pb.FilesystemEvent) {
	w.mu.Lock()
	if len(w.buf) >= w.limit {
		w.dropped++
	} else {
		w.buf = append(w.buf, ev)
	}
	w.mu.Unlock()
	w.signal()
}

func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take returns the buffered events and how many were dropped, and empties the buffer.
func (w *watcher) take() ([]*pb.FilesystemEvent, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	evs, dropped := w.buf, w.dropped
	w.buf, w.dropped = nil, 0
	return evs, dropped, w.err
}

// stream sends events as they come until ctx ends; an overflow ends the stream with an error.
func (w *watcher) stream(ctx context.Context, keepalive time.Duration, send func(*pb.FilesystemEvent) error, ping func() error) error {
	ka := time.NewTicker(keepalive)
	defer ka.Stop()
	for {
		evs, dropped, _ := w.take()
		for _, ev := range evs {
			if err := send(ev); err != nil {
				return err
			}
		}
		if dropped > 0 {
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
				"watch %s: %d events dropped because the client fell more than %d behind", w.root, dropped, w.limit))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		case <-ka.C:
			if err := ping(); err != nil {
				return err
			}
		}
	}
}

func (w *watcher) close() {
	w.closeOnce.Do(func() {
		close(w.done)
		_ = w.fsw.Close()
		w.wg.Wait()
	})
}
