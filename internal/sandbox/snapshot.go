package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/filesum"
	"github.com/cellhq/cell/internal/vmm"
)

// Snapshot saves the running sandbox s as template name (a snapshot labelled label, owned by team) under
// home/templates/name/snap: its device state and RAM, and its disk as it is, by reference (its
// layers linked; s goes on writing to a new top layer, see vmm.VM.TakeDisk). s is stopped only
// while it is saved, then continues.
func (r *Runtime) Snapshot(ctx context.Context, s *Sandbox, home, name, label, team string, fork bool) (*Template, error) {
	return r.snapshot(ctx, s, home, name, templateMeta{Label: label, Team: team, Fork: fork}, false)
}

// SaveLayer saves the running sandbox s as a template build's layer named name, owned by team,
// with layer (the build's record of it) in its meta.json: a layer is published whole, with its
// record, or not at all. s goes on running, as after Snapshot.
func (r *Runtime) SaveLayer(ctx context.Context, s *Sandbox, home, name, team string, layer []byte) (*Template, error) {
	if len(layer) == 0 || !json.Valid(layer) {
		return nil, fmt.Errorf("layer %s: its record must be JSON", name)
	}
	// Nothing of a user's streams through the channel: envd lets go of its session first, so
	// that clones find it waiting for their host, as the base template's do (a create from a
	// layer saved inside the session took ~25 ms more under TCG).
	return r.snapshot(ctx, s, home, name, templateMeta{Team: team, Layer: layer}, true)
}

// snapshot saves s as name with the meta's label, team, fork and layer; leave: outside envd's
// session (which ends every stream through the channel, so not for a user's sandbox).
func (r *Runtime) snapshot(ctx context.Context, s *Sandbox, home, name string, own templateMeta, leave bool) (*Template, error) {
	fp, err := r.Host.Fingerprint(r.baseSpec())
	if err != nil {
		return nil, err
	}
	layout := datadir.Layout{Home: home}
	parent := layout.Template(name)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	final := layout.Snapshot(name)
	if _, err := os.Stat(final); err == nil {
		return nil, fmt.Errorf("snapshot %s already exists", name)
	}
	// The snapshot writes the RAM (its disk is taken by reference): refused when the host's disk
	// cannot take it.
	need := uint64(s.VM.MemoryMiB) * vmm.MiB
	if err := r.Host.DiskGuard().Admit(need, "a snapshot's memory"); err != nil {
		return nil, fmt.Errorf("snapshot of %s: %w", s.ID, err)
	}
	st, err := stage(parent)
	if err != nil {
		return nil, err
	}
	defer st.discard()
	t0 := time.Now()
	if leave {
		if !s.VM.LeaveGuest(ctx, leaveWait) {
			r.Log.Debug("saving a layer: envd did not let go of its session", "sandbox", s.ID)
		}
		defer s.VM.ResumeChannel() // the VM goes on, and so do its sessions
	}
	s.VM.StartWriteback() // the disk goes to storage while the RAM is saved
	ramFile := s.VM.NamedRAM
	err = saveMemory(ctx, s.VM, st.dir, ramFile, false)
	tSaved := time.Now()
	if err == nil {
		// Stopping the VM flushed QEMU's qcow2 caches to the file: it is consistent now, and
		// becomes a read-only layer that the snapshot and the VM share.
		err = s.VM.TakeDisk(ctx, st.dir)
	}
	// The sandbox goes on whatever happened (a save given up on is cancelled first).
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	cerr := s.VM.Continue(cctx)
	cancel()
	if cerr != nil && err == nil {
		err = fmt.Errorf("continuing the sandbox: %w", cerr)
	}
	if err == nil {
		err = vmm.SyncChain(st.file(vmm.DiskFile))
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot of %s: %w", s.ID, err)
	}
	meta := templateMeta{Name: name, Fingerprint: fp, MemoryMiB: s.VM.MemoryMiB, CPUs: s.VM.CPUs, KernelArgs: s.VM.KernelArgs,
		Accel: r.Accel, CreatedAt: time.Now().UTC(), BuildMillis: time.Since(t0).Milliseconds(),
		Full: true, RAMFile: ramFile, NamedRAM: s.VM.NamedRAM, Team: own.Team, Source: s.ID, Fork: own.Fork, Label: own.Label, Layer: own.Layer}
	if tok := s.token.Load(); tok != nil {
		meta.Token = *tok
	}
	if own.Layer != nil {
		// A layer may be adopted by another process (or, later, another host): what it holds
		// is recorded now, once, and checked there.
		if meta.Sums, err = sumFiles(ctx, st.dir, ramFile); err != nil {
			return nil, fmt.Errorf("snapshot of %s: %w", s.ID, err)
		}
	}
	if err := st.writeMeta("meta.json", meta); err != nil {
		return nil, err
	}
	if err := st.publishAs(final); err != nil {
		return nil, err
	}
	r.Log.Debug("snapshot saved", "sandbox", s.ID, "memory", tSaved.Sub(t0), "total", time.Since(t0))
	return loadTemplate(final, fp)
}

// saveMemory stops vm and saves its device state and RAM into dir: RAM into the file mem when
// ramFile (restores map it: clones share its pages and start as fast as from a template), else
// into the state stream. Both are synced. last: the VM will not run again (see vmm.SaveSplit).
func saveMemory(ctx context.Context, vm *vmm.VM, dir string, ramFile, last bool) error {
	if ramFile {
		return vm.SaveSplit(ctx, filepath.Join(dir, "state"), filepath.Join(dir, "mem"), last)
	}
	return vm.SaveFull(ctx, filepath.Join(dir, "state"))
}

// LoadSnapshots returns the snapshots of running sandboxes stored under home that this machine
// can restore. Snapshots a crash interrupted (staging directories) are removed first.
func (r *Runtime) LoadSnapshots(home string) ([]*Template, error) {
	fp, err := r.Host.Fingerprint(r.baseSpec())
	if err != nil {
		return nil, err
	}
	layout := datadir.Layout{Home: home}
	stale, _ := filepath.Glob(filepath.Join(layout.Templates(), "*", datadir.Staging+"*"))
	for _, d := range stale {
		if filepath.Base(filepath.Dir(d)) == "base" {
			continue // the base template's builds have their own lock
		}
		r.Log.Warn("removing an interrupted snapshot", "dir", d)
		_ = os.RemoveAll(d)
		_ = os.Remove(filepath.Dir(d)) // its template directory, if nothing else is in it
	}
	dirs, _ := filepath.Glob(layout.Snapshot("*"))
	var out []*Template
	for _, d := range dirs {
		t, err := loadTemplate(d, fp)
		if err != nil {
			r.Log.Warn("snapshot not usable here", "dir", d, "err", err)
			continue
		}
		out = append(out, t)
	}
	return out, nil
}

// layerFiles are the files of a saved VM directory that are its own: the device state, the RAM
// (when in a file) and the top of its disk chain (the layers below are other directories').
func layerFiles(ramFile bool) []string {
	if ramFile {
		return []string{"state", "mem", vmm.DiskFile}
	}
	return []string{"state", vmm.DiskFile}
}

// sumFiles takes the digests of dir's own files.
func sumFiles(ctx context.Context, dir string, ramFile bool) (map[string]string, error) {
	sums := map[string]string{}
	for _, f := range layerFiles(ramFile) {
		sum, err := filesum.File(ctx, filepath.Join(dir, f))
		if err != nil {
			return nil, fmt.Errorf("digest of %s: %w", f, err)
		}
		sums[f] = sum
	}
	return sums, nil
}

// Verify checks the files of a layer against the digests recorded when it was published: an
// error when one differs, or when the layer has none.
func (t *Template) Verify(ctx context.Context) error {
	if len(t.sums) == 0 {
		return fmt.Errorf("%s: no digests recorded", t.Dir)
	}
	for f, want := range t.sums {
		if err := filesum.Verify(ctx, filepath.Join(t.Dir, filepath.Base(f)), want); err != nil {
			return err
		}
	}
	return nil
}
