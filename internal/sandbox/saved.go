package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/cellhq/cell/internal/datadir"
)

// staged is a saved VM being written: a template build, a snapshot or a paused generation. It is
// a staging directory next to where it goes; its meta.json is written last and synced, and only
// a rename publishes it, so a reader (or the recovery after a crash) finds a whole saved VM or
// none. The VM's files (state, mem, the disk's layers) are synced by whoever writes them.
type staged struct {
	parent, dir string
}

// stage makes a staging directory in parent, creating parent if need be.
func stage(parent string) (*staged, error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, datadir.Staging)
	if err != nil {
		return nil, err
	}
	return &staged{parent: parent, dir: dir}, nil
}

// file is the path of name in the staging directory.
func (s *staged) file(name string) string { return filepath.Join(s.dir, name) }

// writeMeta writes meta as the JSON file name (meta.json, or a pause's meta.pending), synced.
func (s *staged) writeMeta(name string, meta any) error {
	b, _ := json.MarshalIndent(meta, "", "  ")
	return writeSynced(s.file(name), b)
}

// completeMeta makes the meta written as pending the saved VM's meta.json: the directory is
// complete (see complete), durably.
func (s *staged) completeMeta(pending string) error {
	if err := os.Rename(s.file(pending), s.file("meta.json")); err != nil {
		return err
	}
	syncDir(s.dir)
	return nil
}

// publishAs renames the complete staging directory to final, durably.
func (s *staged) publishAs(final string) error {
	if err := os.Rename(s.dir, final); err != nil {
		return err
	}
	syncDir(s.parent)
	return nil
}

// discard removes what is left of the staging directory (nothing once published).
func (s *staged) discard() { _ = os.RemoveAll(s.dir) }

// writeSynced writes b to path and syncs it.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	return f.Sync()
}

func syncDir(path string) {
	if d, err := os.Open(path); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
