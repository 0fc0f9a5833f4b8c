package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/pkg/envd"
)

// BuildMachines runs template builds on the sandbox runtime: build VMs are sandboxes of no team,
// restored from the base template or a layer, and layers are snapshots (see
// Runtime.SaveLayer) that the runtime restores like any other.
type BuildMachines struct {
	Runtime *Runtime
	Home    string
}

var _ build.Machines = BuildMachines{}

func (m BuildMachines) Start(ctx context.Context, from string, cpus, memoryMiB int) (build.VM, error) {
	// A build reaches the internet (package registries); never the host's private networks.
	m.touch(from)
	sb, err := m.Runtime.Boot(ctx, Options{Template: from, CPUs: cpus, MemoryMiB: memoryMiB, Init: &envd.InitRequest{}})
	if err != nil {
		return nil, err
	}
	return sb, nil
}

// Boot cold-boots a build VM on disk, a root file system made from an OCI image (see
// image.Provision), instead of Cell's base image. It is saved as a layer like any other.
func (m BuildMachines) Boot(ctx context.Context, disk string, cpus, memoryMiB int) (build.VM, error) {
	sb, err := m.Runtime.Boot(ctx, Options{Cold: true, baseDisk: disk, CPUs: cpus, MemoryMiB: memoryMiB, Init: &envd.InitRequest{}})
	if err != nil {
		return nil, err
	}
	return sb, nil
}

// ImageDisk is where the root file system that layer name boots from goes (see Boot): beside
// the layer, and removed with it.
func (m BuildMachines) ImageDisk(name string) string {
	return datadir.Layout{Home: m.Home}.ImageDisk(name)
}

func (m BuildMachines) Save(ctx context.Context, vm build.VM, name, team string, meta []byte) (string, error) {
	sb, ok := vm.(*Sandbox)
	if !ok {
		return "", fmt.Errorf("saving layer %s: not a sandbox of this runtime", name)
	}
	if _, err := os.Stat(datadir.Layout{Home: m.Home}.Snapshot(name)); m.Runtime.Template(name) != nil || err == nil {
		// A forced step remade a cached layer (or the cached one failed its digests): the new
		// one gets a name of its own.
		name = name + "-" + ids.New(8)
	}
	t, err := m.Runtime.SaveLayer(ctx, sb, m.Home, name, team, meta)
	if err != nil {
		return "", err
	}
	m.Runtime.SetTemplate(name, t)
	return name, nil
}

func (m BuildMachines) Layer(name string) ([]byte, bool) {
	t := m.Runtime.Template(name)
	if t == nil {
		// Another process (a `cell run --apt` beside this one) may have made it since.
		t = m.load(name)
	}
	if t == nil || t.Layer == nil {
		return nil, false
	}
	m.touch(name)
	return t.Layer, true
}

// load reads the layer name from the data directory, if it is whole and made for this
// machine, and makes the runtime restore from it.
func (m BuildMachines) load(name string) *Template {
	if ids.Validate("template", name) != nil {
		return nil
	}
	fp, err := m.Runtime.Host.Fingerprint(m.Runtime.baseSpec())
	if err != nil {
		return nil
	}
	t, err := loadTemplate(datadir.Layout{Home: m.Home}.Snapshot(name), fp)
	if err != nil || t.Layer == nil {
		return nil
	}
	// Another process wrote it: its files must be what that process recorded. A layer that
	// is not is left where it is (disks may stand on it) and built again under another name.
	if err := t.Verify(context.Background()); err != nil {
		m.Runtime.Log.Warn("a build layer does not match its digests; it is not used", "layer", name, "err", err)
		return nil
	}
	m.Runtime.SetTemplate(name, t)
	return t
}

// Lock takes the cross-process lock of the layer name (a file beside the layers): two
// processes that would build the same layer build it once, the second finding it made.
func (m BuildMachines) Lock(ctx context.Context, name string) (func(), error) {
	if err := ids.Validate("template", name); err != nil {
		return nil, err
	}
	dir := datadir.Layout{Home: m.Home}.Templates()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "."+name+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := flock(ctx, f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("waiting for another build of layer %s: %w", name, err)
	}
	return func() { _ = f.Close() }, nil
}

// LayerInfo is one build layer on disk.
type LayerInfo struct {
	Name string
	// Bytes is what removing it gives back: its files not shared with another layer's
	// directory (by hard link) are counted.
	Bytes int64
	// Used is when a build last started from it or found it cached.
	Used time.Time
}

// Layers lists the build layers the runtime knows.
func (m BuildMachines) Layers() []LayerInfo {
	var out []LayerInfo
	for _, t := range m.Runtime.Templates() {
		if t.Layer == nil {
			continue
		}
		li := LayerInfo{Name: t.Name, Bytes: ownBytes(t.Dir)}
		if st, err := os.Stat(m.ImageDisk(t.Name)); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				li.Bytes += sys.Blocks * 512 // the OCI image's disk goes with the layer
			}
		}
		if st, err := os.Stat(t.Dir); err == nil {
			li.Used = st.ModTime()
		}
		out = append(out, li)
	}
	return out
}

// ownBytes is the disk the files of dir take that no other directory links: what removing dir
// gives back (a file is linked once per name it has in dir, e.g. a top layer is also
// disk.qcow2).
func ownBytes(dir string) int64 {
	des, _ := os.ReadDir(dir)
	names := map[uint64]uint64{}
	stats := map[uint64]*syscall.Stat_t{}
	for _, de := range des {
		info, err := de.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			names[st.Ino]++
			stats[st.Ino] = st
		}
	}
	var n int64
	for ino, st := range stats {
		if uint64(st.Nlink) == names[ino] {
			n += st.Blocks * 512
		}
	}
	return n
}

// touch records that a layer was used (its directory's time), for the cache's eviction.
func (m BuildMachines) touch(name string) {
	if t := m.Runtime.Template(name); t != nil && t.Layer != nil {
		now := time.Now()
		_ = os.Chtimes(t.Dir, now, now)
	}
}

// RemoveLayer removes the layer name unless a sandbox, running or paused, or another layer
// or snapshot has a disk on it (sandbox.ErrTemplateInUse).
func (m BuildMachines) RemoveLayer(name, runDir, pausedDir string) error {
	t := m.Runtime.Template(name)
	if t == nil || t.Layer == nil {
		return fmt.Errorf("layer %s: not found", name)
	}
	if err := RemoveTemplate(t.Dir, runDir, pausedDir); err != nil {
		return err
	}
	m.Runtime.DropTemplate(name)
	// The image below it goes when nothing stands on it: a layer saved under another name
	// (the cached one was unusable) may.
	if img := m.ImageDisk(name); len(DiskUsers(m.Home, runDir, pausedDir, img)) == 0 {
		if err := os.Remove(img); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("layer %s: its image disk: %w", name, err)
		}
	}
	_ = os.Remove(filepath.Dir(t.Dir))
	return nil
}
