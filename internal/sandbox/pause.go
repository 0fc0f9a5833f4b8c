package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/envd/server"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
)

// PausedMeta describes a paused sandbox's saved generation.
type PausedMeta struct {
	ID         string    `json:"id"`
	Memory     bool      `json:"memory"`            // RAM and device state saved (else the disk only)
	NamedRAM   bool      `json:"namedRAM"`          // the VM's RAM was a memory backend object
	RAMFile    bool      `json:"ramFile,omitempty"` // RAM is in the file mem, not in the state stream
	MemoryMiB  int       `json:"memoryMiB"`
	CPUs       int       `json:"cpus"`
	KernelArgs []string  `json:"kernelArgs"`
	PausedAt   time.Time `json:"pausedAt"`
}

// Pause flushes the guest's file systems, saves the sandbox into a new generation under dir
// (RAM and device state too when memory), publishes it atomically, and stops the VM: a paused
// sandbox holds no RAM. dir holds generations g<N>, and a file "current" naming the complete one;
// it is replaced by rename, so a crash at any point leaves the old or the new generation current.
func (s *Sandbox) Pause(ctx context.Context, dir string, memory bool) (PausedMeta, error) {
	meta := PausedMeta{ID: s.ID, Memory: memory, NamedRAM: s.VM.NamedRAM, RAMFile: memory && s.VM.NamedRAM, MemoryMiB: s.VM.MemoryMiB, CPUs: s.VM.CPUs,
		KernelArgs: s.VM.KernelArgs, PausedAt: time.Now().UTC()}
	if err := s.Sync(ctx); err != nil {
		return meta, fmt.Errorf("flushing the guest's file systems: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return meta, err
	}
	staging, err := os.MkdirTemp(dir, ".staging-")
	if err != nil {
		return meta, err
	}
	defer func() { _ = os.RemoveAll(staging) }()
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := writeSynced(filepath.Join(staging, "meta.pending"), b); err != nil {
		return meta, err
	}
	// As for a template, the resumed envd should find its port closed. Unlike a template build,
	// a pause does not wait for envd to say so (vmm.VM.LeaveGuest): the wait took 5-13 ms, in
	// which a guest that has just written much keeps dirtying memory; pauses with 512 MiB written
	// measured 15-30 ms longer, for resumes ~10 ms shorter.
	s.VM.SuspendChannel()
	if memory {
		if err := saveMemory(ctx, s.VM, staging, meta.RAMFile, true); err != nil {
			return meta, fmt.Errorf("saving the VM: %w", err)
		}
	} else if err := s.VM.QMP.Execute(ctx, "stop", nil, nil); err != nil {
		return meta, fmt.Errorf("stopping the VM: %w", err)
	}
	// Stopping the guest drained and flushed its disk: QEMU writes to it no more.
	if err := os.Rename(s.VM.Dir.File("disk.qcow2"), filepath.Join(staging, "disk.qcow2")); err != nil {
		return meta, err
	}
	// QEMU is killed now, and its exit (where the kernel frees its RAM: ~40 ms with 512 MiB
	// written) goes on while the generation is published.
	s.Release()
	// The state (and memory file) were synced by the save.
	if err := syncFile(filepath.Join(staging, "disk.qcow2")); err != nil {
		return meta, err
	}
	// meta.json comes last: a staging directory with it is complete (see FinishPause).
	if err := os.Rename(filepath.Join(staging, "meta.pending"), filepath.Join(staging, "meta.json")); err != nil {
		return meta, err
	}
	syncDir(staging)
	if err := publish(dir, staging); err != nil {
		return meta, err
	}
	CleanPaused(dir)
	return meta, nil
}

// publish makes the complete staging directory the current generation under dir.
func publish(dir, staging string) error {
	gen := "g" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := os.Rename(staging, filepath.Join(dir, gen)); err != nil {
		return err
	}
	syncDir(dir)
	if err := writeSynced(filepath.Join(dir, ".current.tmp"), []byte(gen)); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, ".current.tmp"), filepath.Join(dir, "current")); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// UndoPause gives a VM back the disk an interrupted pause took from it (a staging generation
// with the disk but without meta.json: the VM had not been stopped for good yet). It reports
// whether it did.
func UndoPause(dir, vmDisk string) bool {
	des, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, de := range des {
		st := filepath.Join(dir, de.Name())
		if !de.IsDir() || !strings.HasPrefix(de.Name(), ".staging-") {
			continue
		}
		if _, err := os.Stat(filepath.Join(st, "meta.json")); err == nil {
			continue
		}
		if os.Rename(filepath.Join(st, "disk.qcow2"), vmDisk) == nil {
			_ = os.RemoveAll(st)
			return true
		}
	}
	return false
}

// FinishPause completes a pause that a crash interrupted after it took the sandbox's disk (the
// VM is gone or must go): a complete staging generation is published; failing that, one holding
// the disk is completed from its meta.pending (with its saved state), or as a disk-only
// generation when even that is missing (resume then boots from the disk). It reports whether
// dir now has a current generation.
func FinishPause(dir string, id string, memoryMiB, cpus int) (bool, error) {
	if _, _, err := CurrentPaused(dir); err == nil {
		return true, nil
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	var withDisk string
	for _, de := range des {
		if !de.IsDir() || !strings.HasPrefix(de.Name(), ".staging-") {
			continue
		}
		st := filepath.Join(dir, de.Name())
		if _, err := os.Stat(filepath.Join(st, "meta.json")); err == nil {
			return true, publish(dir, st)
		}
		if _, err := os.Stat(filepath.Join(st, "disk.qcow2")); err == nil {
			withDisk = st
		}
	}
	if withDisk == "" {
		return false, nil
	}
	// The disk moves into staging only once the VM is saved and stopped: with it, the state (when
	// the pause saved one) is complete, and meta.pending says what it is.
	var meta PausedMeta
	if b, err := os.ReadFile(filepath.Join(withDisk, "meta.pending")); err == nil && json.Unmarshal(b, &meta) == nil && meta.ID == id {
		if !savedMemory(withDisk, meta) {
			meta.Memory, meta.RAMFile = false, false
		}
	} else {
		meta = PausedMeta{ID: id, MemoryMiB: memoryMiB, CPUs: cpus, PausedAt: time.Now().UTC()}
	}
	if !meta.Memory {
		_ = os.Remove(filepath.Join(withDisk, "state"))
		_ = os.Remove(filepath.Join(withDisk, "mem"))
	}
	for _, f := range []string{"state", "mem", "disk.qcow2"} {
		if err := syncFile(filepath.Join(withDisk, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := writeSynced(filepath.Join(withDisk, "meta.json"), b); err != nil {
		return false, err
	}
	return true, publish(dir, withDisk)
}

// savedMemory says whether a staging generation holds the saved memory its meta describes.
func savedMemory(dir string, meta PausedMeta) bool {
	files := []string{"state"}
	if meta.RAMFile {
		files = append(files, "mem")
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// CurrentPaused returns the current generation under dir and its meta.
func CurrentPaused(dir string) (string, PausedMeta, error) {
	var meta PausedMeta
	b, err := os.ReadFile(filepath.Join(dir, "current"))
	if err != nil {
		return "", meta, err
	}
	gen := strings.TrimSpace(string(b))
	if !strings.HasPrefix(gen, "g") || strings.ContainsAny(gen, "/.") {
		return "", meta, fmt.Errorf("%s: bad generation %q", dir, gen)
	}
	g := filepath.Join(dir, gen)
	mb, err := os.ReadFile(filepath.Join(g, "meta.json"))
	if err != nil {
		return "", meta, err
	}
	if err := json.Unmarshal(mb, &meta); err != nil {
		return "", meta, err
	}
	return g, meta, nil
}

// CleanPaused removes what is not the current generation under dir: staging directories of
// interrupted pauses and superseded generations. Without a readable current it removes nothing.
func CleanPaused(dir string) {
	cur, _, err := CurrentPaused(dir)
	if err != nil {
		return
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		if de.IsDir() && p != cur {
			_ = os.RemoveAll(p)
		}
	}
}

// Resume starts a paused sandbox from its current generation under dir: from its RAM when it was
// saved, else by booting its disk. A sandbox resumed from its RAM is the same machine going on:
// envd still holds its env vars, token and host name, and the handshake sets its clock (its RNG
// state is its own: no other VM runs from a generation, which goes once the sandbox runs). A
// booted one gets init, with its host name, fresh randomness and the clock. The generation is
// left in place; the caller removes it once the sandbox is recorded as running.
// The sandbox gets a new network under rules.
func (r *Runtime) Resume(ctx context.Context, dir string, init server.InitRequest, rules *netstack.Rules) (*Sandbox, error) {
	g, meta, err := CurrentPaused(dir)
	if err != nil {
		return nil, fmt.Errorf("paused sandbox: %w", err)
	}
	spec := vmm.Spec{ID: meta.ID, Kernel: r.Image.Kernel, Disk: filepath.Join(g, "disk.qcow2"), MemoryMiB: meta.MemoryMiB,
		CPUs: meta.CPUs, Accel: r.Accel, KernelArgs: meta.KernelArgs}
	if meta.Memory {
		spec.Restore = &vmm.Snapshot{StatePath: filepath.Join(g, "state"), Full: true, NamedRAM: meta.NamedRAM}
		if meta.RAMFile {
			// QEMU maps it copy-on-write; the VM takes it over (it is this sandbox's alone), so
			// that removing the generation later leaves it, and the next pause updates it.
			spec.Restore.MemPath, spec.Restore.OwnMem = filepath.Join(g, "mem"), true
		}
	} else {
		spec.KernelArgs = r.kernelArgs(meta.ID)
	}
	vm, err := r.Host.Start(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("resuming sandbox %s: %w", meta.ID, err)
	}
	sb := newSandbox(vm)
	sb.Restored = meta.Memory
	if err := r.attachNet(sb, rules); err != nil {
		_ = sb.Close()
		return nil, err
	}
	if init.AccessToken != nil {
		sb.SetToken(*init.AccessToken) // envd (resumed from RAM) already enforces it
	}
	if meta.Memory {
		// envd resumed from RAM holds its env vars, token and identity already, and the
		// handshake has set its clock: no /init (whose first HTTP request costs a resumed
		// guest ~30 ms of cold code under TCG).
		return sb, nil
	}
	if err := sb.Init(ctx, init); err != nil {
		_ = sb.Close()
		return nil, err
	}
	return sb, nil
}
