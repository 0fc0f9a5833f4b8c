package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/image"
	"github.com/cellhq/cell/internal/vmm"
)

// TemplateInfo describes a stored template snapshot.
type TemplateInfo struct {
	Name, Dir   string
	Fingerprint string
	CreatedAt   time.Time
	Bytes       int64 // allocated on disk
	Users       []string
}

// ListTemplates lists the snapshots under home/templates with what depends on each: the sandboxes
// whose disk (in runDir, or a paused generation in pausedDir) and the snapshots whose disk is an
// overlay on its disk.
func ListTemplates(home, runDir, pausedDir string) ([]TemplateInfo, error) {
	dirs, _ := filepath.Glob(filepath.Join(datadir.Layout{Home: home}.Templates(), "*", "*", "meta.json"))
	users := diskUsers(home, runDir, pausedDir)
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

// RemoveTemplate removes the template snapshot in dir (home/templates/<name>/<fingerprint>),
// unless a sandbox or another snapshot depends on it.
func RemoveTemplate(dir, runDir, pausedDir string) error {
	if _, err := os.Stat(filepath.Join(dir, "meta.json")); err != nil {
		return fmt.Errorf("template %s: %w", dir, err)
	}
	home := filepath.Dir(filepath.Dir(filepath.Dir(dir)))
	if u := diskUsers(home, runDir, pausedDir)[filepath.Join(dir, "disk.qcow2")]; len(u) > 0 {
		return fmt.Errorf("template %s: %w: used by %s", dir, ErrTemplateInUse, strings.Join(u, ", "))
	}
	return os.RemoveAll(dir)
}

// ErrTemplateInUse is returned when removing a template that sandboxes depend on.
var ErrTemplateInUse = errors.New("in use")

// PruneTemplates removes the snapshots of template name under home, other than the one in keep,
// that nothing depends on (see RemoveTemplate), and returns what it removed. A new QEMU, kernel,
// image or envd makes a new base template; the old one (hundreds of MB) stayed behind for good.
// Snapshots users made of their sandboxes have other names and are never pruned.
func PruneTemplates(home, name, keep, runDir, pausedDir string) ([]TemplateInfo, error) {
	all, err := ListTemplates(home, runDir, pausedDir)
	if err != nil {
		return nil, err
	}
	var removed []TemplateInfo
	var errs []error
	for _, t := range all {
		// A staging directory may be a build under way: left alone.
		if filepath.Base(filepath.Dir(t.Dir)) != name || t.Dir == keep || len(t.Users) > 0 ||
			strings.HasPrefix(filepath.Base(t.Dir), ".") {
			continue
		}
		if err := RemoveTemplate(t.Dir, runDir, pausedDir); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, t)
	}
	return removed, errors.Join(errs...)
}

// DiskUsers lists what has a disk whose chain goes through disk (see diskUsers).
func DiskUsers(home, runDir, pausedDir, disk string) []string {
	return diskUsers(home, runDir, pausedDir)[filepath.Clean(disk)]
}

// diskUsers maps a disk file to what has a disk whose chain goes through it (below its own top):
// running sandboxes (by id; not the directories of released VMs), paused ones (by id) and template snapshots ("template
// <name>/<dir>"). Keys are clean absolute paths.
func diskUsers(home, runDir, pausedDir string) map[string][]string {
	users := map[string][]string{}
	add := func(disk, id string) {
		chain, _ := vmm.Chain(disk) // what resolves, even if a layer is missing
		for _, f := range chain[min(1, len(chain)):] {
			f = filepath.Clean(f)
			if !slices.Contains(users[f], id) {
				users[f] = append(users[f], id)
			}
		}
	}
	if des, err := os.ReadDir(runDir); err == nil {
		for _, de := range des {
			// A released VM's directory, still being removed in the background, uses nothing.
			if !vmm.IsGoneDir(de.Name()) {
				add(filepath.Join(runDir, de.Name(), "disk.qcow2"), de.Name())
			}
		}
	}
	gens, _ := filepath.Glob(filepath.Join(pausedDir, "*", "g*", "disk.qcow2"))
	for _, g := range gens {
		add(g, filepath.Base(filepath.Dir(filepath.Dir(g))))
	}
	disks, _ := filepath.Glob(filepath.Join(datadir.Layout{Home: home}.Templates(), "*", "*", "disk.qcow2"))
	for _, d := range disks {
		dir := filepath.Dir(d)
		add(d, "template "+filepath.Base(filepath.Dir(dir))+"/"+filepath.Base(dir))
	}
	return users
}

// PruneImages removes the image artifacts under b's home that earlier recipes built (see
// image.Builder.Prune), keeping every base disk that a disk under home (a template's, a running
// or a paused sandbox's) is an overlay on. It must only run when b's home is home: another
// data directory sharing the image cache could depend on a base disk this one does not see.
func PruneImages(ctx context.Context, b *image.Builder, home, runDir, pausedDir string) ([]string, error) {
	used := map[string]bool{}
	for backing := range diskUsers(home, runDir, pausedDir) {
		used[filepath.Clean(backing)] = true
	}
	return b.Prune(ctx, func(disk string) bool { return used[filepath.Clean(disk)] })
}
