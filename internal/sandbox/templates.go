package sandbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TemplateInfo describes a stored template snapshot.
type TemplateInfo struct {
	Name, Dir   string
	Fingerprint string
	CreatedAt   time.Time
	Bytes       int64 // allocated on disk
	Users       []string
}

// ListTemplates lists the snapshots under home/templates with the sandboxes that depend on each:
// those whose disk (in runDir, or a paused generation in pausedDir) is an overlay on its disk.
func ListTemplates(home, runDir, pausedDir string) ([]TemplateInfo, error) {
	dirs, _ := filepath.Glob(filepath.Join(home, "templates", "*", "*", "meta.json"))
	users := diskUsers(runDir, pausedDir)
	var out []TemplateInfo
	for _, m := range dirs {
		dir := filepath.Dir(m)
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		var meta templateMeta
		if json.Unmarshal(b, &meta) != nil {
			continue
		}
		ti := TemplateInfo{Name: meta.Name, Dir: dir, Fingerprint: meta.Fingerprint, CreatedAt: meta.CreatedAt,
			Users: users[filepath.Join(dir, "disk.qcow2")]}
		_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if info, err := d.Info(); err == nil {
					if st, ok := allocated(info); ok {
						ti.Bytes += st
					}
				}
			}
			return nil
		})
		out = append(out, ti)
	}
	return out, nil
}

// RemoveTemplate removes the template snapshot in dir, unless a sandbox depends on it.
func RemoveTemplate(dir, runDir, pausedDir string) error {
	if _, err := os.Stat(filepath.Join(dir, "meta.json")); err != nil {
		return fmt.Errorf("template %s: %w", dir, err)
	}
	if u := diskUsers(runDir, pausedDir)[filepath.Join(dir, "disk.qcow2")]; len(u) > 0 {
		return fmt.Errorf("template %s: %w: used by sandboxes %s", dir, ErrTemplateInUse, strings.Join(u, ", "))
	}
	return os.RemoveAll(dir)
}

// ErrTemplateInUse is returned when removing a template that sandboxes depend on.
var ErrTemplateInUse = errors.New("in use")

// diskUsers maps a backing file to the sandboxes whose disks are overlays on it.
func diskUsers(runDir, pausedDir string) map[string][]string {
	users := map[string][]string{}
	add := func(disk, id string) {
		if b, err := backingFile(disk); err == nil && b != "" {
			users[b] = append(users[b], id)
		}
	}
	if des, err := os.ReadDir(runDir); err == nil {
		for _, de := range des {
			add(filepath.Join(runDir, de.Name(), "disk.qcow2"), de.Name())
		}
	}
	gens, _ := filepath.Glob(filepath.Join(pausedDir, "*", "g*", "disk.qcow2"))
	for _, g := range gens {
		add(g, filepath.Base(filepath.Dir(filepath.Dir(g))))
	}
	return users
}

// backingFile reads the backing file name from a qcow2 header.
func backingFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	var h [20]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return "", err
	}
	if string(h[:4]) != "QFI\xfb" {
		return "", fmt.Errorf("%s: not a qcow2 file", path)
	}
	off, size := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint32(h[16:20])
	if off == 0 || size == 0 || size > 4096 {
		return "", nil
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", err
	}
	return string(name), nil
}
