package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
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

// SyncTimeout bounds the guest's flush at the start of a pause. A guest that has not answered by
// then is paused without it: with its RAM nothing is lost (what it had not written out is in the
// saved RAM), and without, its disk is as after a power cut, which its file system is made to
// survive. Failing the pause instead would let a guest refuse to be paused (at its timeout, at
// shutdown) only by not answering.
const SyncTimeout = 5 * time.Second

// PauseTimeout bounds a whole pause of a VM with memoryMiB of RAM: the sync, the save (allowed
// 32 MiB/s, ~20 times slower than measured here, where 512 MiB of written RAM saves in well under
// a second), the disk's handover and the publication. Nothing in it waits for the guest but the
// sync, which has its own bound; the rest is QEMU and the host's disk.
func PauseTimeout(memoryMiB int) time.Duration {
	return 30*time.Second + time.Duration(memoryMiB)*time.Second/32
}

// undoTimeout bounds the undoing of a failed pause: continuing the VM, and envd's new session.
const undoTimeout = 15 * time.Second

// ErrPauseUndone is wrapped by Pause's error when the pause failed and was undone: nothing was
// published, and the VM runs on as before it, with its disk (envd gets a new session).
var ErrPauseUndone = errors.New("the pause was undone: the sandbox runs on")

// Pause flushes the guest's file systems, saves the sandbox into a new generation under dir
// (RAM and device state too when memory), publishes it atomically, and stops the VM: a paused
// sandbox holds no RAM. dir holds generations g<N>; the newest complete one is the sandbox (see
// CurrentPaused), and a file "current" names it for people. The generation is complete once
// its meta.json is there (written last, synced, before the rename that publishes it), so a crash
// at any point leaves the old or the new generation the newest complete one.
//
// Every step is bounded (the whole pause by PauseTimeout; ctx may bound it more). A pause that
// fails before publishing is undone (the error wraps ErrPauseUndone): the VM continues, with its
// disk. Only a VM that cannot be continued (its QEMU exited) is left stopped: then the error does
// not wrap ErrPauseUndone, and the caller closes the sandbox.
func (s *Sandbox) Pause(ctx context.Context, dir string, memory bool) (_ PausedMeta, err error) {
	ctx, cancel := context.WithTimeout(ctx, PauseTimeout(s.VM.MemoryMiB))
	defer cancel()
	meta := PausedMeta{ID: s.ID, Memory: memory, NamedRAM: s.VM.NamedRAM, RAMFile: memory && s.VM.NamedRAM, MemoryMiB: s.VM.MemoryMiB, CPUs: s.VM.CPUs,
		KernelArgs: s.VM.KernelArgs, PausedAt: time.Now().UTC()}
	sctx, scancel := context.WithTimeout(ctx, SyncTimeout)
	serr := s.Sync(sctx)
	s.VM.StartWriteback() // what the guest wrote goes to storage while its RAM is saved
	scancel()
	if serr != nil {
		s.log.Warn("pausing without the guest's flush", "sandbox", s.ID, "err", serr)
	}
	st, err := stage(dir)
	if err != nil {
		return meta, fmt.Errorf("%w: %w", ErrPauseUndone, err)
	}
	u := pauseUndo{s: s, staging: st.dir}
	defer func() {
		if err != nil {
			err = u.undo(ctx, err)
		}
	}()
	if err := st.writeMeta("meta.pending", meta); err != nil {
		return meta, err
	}
	// As for a template, the resumed envd should find its port closed. Unlike a template build,
	// a pause does not wait for envd to say so (vmm.VM.LeaveGuest): the wait took 5-13 ms, in
	// which a guest that has just written much keeps dirtying memory; pauses with 512 MiB written
	// measured 15-30 ms longer, for resumes ~10 ms shorter.
	s.VM.SuspendChannel()
	u.channel, u.stopped = true, true // a save stops the VM first, as a failed one may have
	if memory {
		if err := saveMemory(ctx, s.VM, st.dir, meta.RAMFile, true); err != nil {
			return meta, fmt.Errorf("saving the VM: %w", err)
		}
	} else if err := s.VM.Stop(ctx); err != nil {
		return meta, err
	}
	// Stopping the guest drained and flushed its disk: QEMU writes to it no more. (The state and
	// memory file were synced by the save.) The disk moves with its layers, no copy.
	disk := st.file(vmm.DiskFile)
	if err := s.VM.MoveDisk(ctx, st.dir); err != nil {
		return meta, fmt.Errorf("taking the VM's disk: %w", err)
	}
	u.disk = disk
	if err := vmm.SyncChain(disk); err != nil {
		return meta, fmt.Errorf("syncing the disk: %w", err)
	}
	// meta.json comes last: a directory with it is complete (see CurrentPaused, FinishPause).
	if err := st.completeMeta("meta.pending"); err != nil {
		return meta, err
	}
	if err := ctx.Err(); err != nil {
		return meta, fmt.Errorf("publishing: %w", context.Cause(ctx))
	}
	if err := publish(s.log, st); err != nil {
		return meta, err
	}
	// Published: QEMU is killed now, and its exit (where the kernel frees its RAM: ~40 ms with
	// 512 MiB written) finishes in the background.
	s.Release()
	CleanPaused(dir)
	return meta, nil
}

// pauseUndo is what a pause has done so far, to undo when it fails.
type pauseUndo struct {
	s       *Sandbox
	staging string // the staging directory, to remove
	channel bool   // the channel to envd was suspended
	stopped bool   // the VM may be stopped
	disk    string // where the VM's disk was moved to
}

// undo gives the VM back its disk and continues it after the pause failed with cause. The result
// wraps ErrPauseUndone when the VM runs on.
func (u *pauseUndo) undo(ctx context.Context, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	vm := u.s.VM
	// The disk goes back before the VM continues: a crash from here on finds it where a running
	// VM's is, and the VM is adopted (and continued, if it was still stopped).
	if u.disk != "" {
		if err := vm.ReturnDisk(u.staging); err != nil {
			return fmt.Errorf("%w; giving the VM its disk back: %w", cause, err)
		}
		syncDir(vm.WorkDir())
	}
	_ = os.RemoveAll(u.staging)
	if u.stopped {
		if err := vm.Continue(ctx); err != nil {
			return fmt.Errorf("%w; %w", cause, u.s.explain(ctx, err))
		}
	}
	select {
	case <-vm.Exited():
		return fmt.Errorf("%w; %w: qemu %s", cause, ErrVMExited, vm.ExitReason())
	default:
	}
	if u.channel {
		vm.ResumeChannel()
		// Waited for so that the caller's next request finds envd, but not required: a guest
		// slow to answer is retried at its next request.
		if _, err := vm.Session(ctx); err != nil {
			u.s.log.Warn("envd has not answered since the undone pause", "sandbox", u.s.ID, "err", err)
		}
	}
	u.s.log.Warn("pause failed and was undone: the sandbox runs on", "sandbox", u.s.ID, "err", cause)
	return fmt.Errorf("%w: %w", ErrPauseUndone, cause)
}

// publish makes the complete staging directory st the newest generation of its paused sandbox:
// renamed into place, it is the sandbox (CurrentPaused). The file "current" is then made to
// name it, for people and for older Cells; failing that is only logged.
func publish(log *slog.Logger, st *staged) error {
	dir := st.parent
	gen := nextGeneration(dir)
	if err := st.publishAs(filepath.Join(dir, gen)); err != nil {
		return fmt.Errorf("publishing the paused sandbox: %w", err)
	}
	if err := nameCurrent(dir, gen); err != nil {
		log.Warn("naming the current paused generation", "dir", dir, "err", err)
	}
	return nil
}

// nameCurrent makes dir's file "current" name gen, atomically.
func nameCurrent(dir, gen string) error {
	if err := writeSynced(filepath.Join(dir, ".current.tmp"), []byte(gen)); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, ".current.tmp"), filepath.Join(dir, "current")); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// nextGeneration names a new generation under dir: g<N>, N the time in nanoseconds, or above
// every generation there if the clock went back.
func nextGeneration(dir string) string {
	n := time.Now().UnixNano()
	if des, err := os.ReadDir(dir); err == nil {
		for _, de := range des {
			if g, ok := generation(de.Name()); ok && g >= n {
				n = g + 1
			}
		}
	}
	return "g" + strconv.FormatInt(n, 10)
}

// generation parses a generation's name g<N>.
func generation(name string) (int64, bool) {
	digits, ok := strings.CutPrefix(name, "g")
	if !ok || digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	return n, err == nil
}

// complete reads the meta of the saved sandbox in directory g and says whether g holds all of it:
// meta.json (written last), the disk, and the saved memory when meta says there is one.
func complete(g string) (PausedMeta, bool) {
	var meta PausedMeta
	b, err := os.ReadFile(filepath.Join(g, "meta.json"))
	if err != nil || json.Unmarshal(b, &meta) != nil {
		return meta, false
	}
	if _, err := vmm.Chain(filepath.Join(g, vmm.DiskFile)); err != nil {
		return meta, false // no disk, or a layer of it missing
	}
	return meta, !meta.Memory || savedMemory(g, meta)
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
		if !de.IsDir() || !strings.HasPrefix(de.Name(), datadir.Staging) {
			continue
		}
		if _, err := os.Stat(filepath.Join(st, "meta.json")); err == nil {
			continue
		}
		if os.Rename(filepath.Join(st, vmm.DiskFile), vmDisk) == nil {
			_ = os.RemoveAll(st)
			return true
		}
	}
	return false
}

// FinishPause completes a pause that a crash interrupted after it took the sandbox's disk (the
// VM is gone or must go): a complete generation (published, or still staging) is the result;
// failing that, a staging generation holding the disk is completed from its meta.pending (with
// its saved state), or as a disk-only generation when even that is missing (resume then boots
// from the disk). It reports whether dir now has a complete generation.
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
		if !de.IsDir() || !strings.HasPrefix(de.Name(), datadir.Staging) {
			continue
		}
		st := filepath.Join(dir, de.Name())
		if _, ok := complete(st); ok {
			return true, publish(slog.New(slog.DiscardHandler), &staged{parent: dir, dir: st})
		}
		if _, err := os.Stat(filepath.Join(st, vmm.DiskFile)); err == nil {
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
	for _, f := range []string{"state", "mem"} {
		if err := syncFile(filepath.Join(withDisk, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
	}
	if err := vmm.SyncChain(filepath.Join(withDisk, vmm.DiskFile)); err != nil {
		return false, err
	}
	st := &staged{parent: dir, dir: withDisk}
	if err := st.writeMeta("meta.json", meta); err != nil {
		return false, err
	}
	syncDir(withDisk)
	return true, publish(slog.New(slog.DiscardHandler), st)
}

// PauseRecovery is what RecoverPause found of a pause a crash interrupted, and did with it.
type PauseRecovery int

const (
	// NoPauseTook: the VM still has its disk (or there is no paused directory): no pause took it,
	// nothing was done.
	NoPauseTook PauseRecovery = iota
	// PauseUndone: the VM, still ours, got its disk back and runs on.
	PauseUndone
	// PauseFinished: the paused directory holds a complete generation; the VM, if alive, must
	// stop and its directory go.
	PauseFinished
	// PauseUnrecoverable: the VM's disk is gone and no complete generation could be made of what
	// was saved.
	PauseUnrecoverable
)

// RecoverPause settles, from the files, a pause a crash interrupted after it took the VM's disk
// (vmDisk) into the paused directory dir: a VM still ours (alive) whose pause had not finished
// saving gets its disk back (UndoPause); otherwise the pause is completed from what was saved
// (FinishPause; id, memoryMiB and cpus describe the sandbox when no meta was saved).
func RecoverPause(dir, vmDisk string, alive bool, id string, memoryMiB, cpus int) (PauseRecovery, error) {
	if _, err := os.Stat(vmDisk); err == nil || !errors.Is(err, os.ErrNotExist) {
		return NoPauseTook, nil
	}
	if _, err := os.Stat(dir); err != nil {
		return NoPauseTook, nil
	}
	if alive && UndoPause(dir, vmDisk) {
		return PauseUndone, nil
	}
	ok, err := FinishPause(dir, id, memoryMiB, cpus)
	if err != nil {
		return PauseUnrecoverable, fmt.Errorf("completing the interrupted pause of %s: %w", id, err)
	}
	if !ok {
		return PauseUnrecoverable, nil
	}
	return PauseFinished, nil
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

// CurrentPaused returns the paused sandbox under dir: its newest complete generation, and its
// meta. The file "current" is not trusted for it: a crash between a generation's rename into
// place and the update of "current" leaves the new generation complete and "current" naming the
// old one (or none). With no complete generation the error wraps os.ErrNotExist.
func CurrentPaused(dir string) (string, PausedMeta, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return "", PausedMeta{}, err
	}
	var best string
	var bestN int64 = -1
	var bestMeta PausedMeta
	for _, de := range des {
		n, ok := generation(de.Name())
		if !ok || !de.IsDir() || n <= bestN {
			continue
		}
		g := filepath.Join(dir, de.Name())
		if meta, ok := complete(g); ok {
			best, bestN, bestMeta = g, n, meta
		}
	}
	if best == "" {
		return "", PausedMeta{}, fmt.Errorf("%s: no complete paused generation: %w", dir, os.ErrNotExist)
	}
	return best, bestMeta, nil
}

// CleanPaused removes what is not the current generation under dir (staging directories of
// interrupted pauses, superseded or incomplete generations), and makes "current" name it if it
// does not. Without a complete generation it removes nothing.
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
	if b, err := os.ReadFile(filepath.Join(dir, "current")); err != nil || strings.TrimSpace(string(b)) != filepath.Base(cur) {
		_ = nameCurrent(dir, filepath.Base(cur))
	}
}

// Resume starts a paused sandbox from its current generation under dir: from its RAM when it was
// saved and memory is true, else by booting its disk. A sandbox resumed from its RAM is the same machine going on:
// envd still holds its env vars, token and host name, and the handshake sets its clock (its RNG
// state is its own: no other VM runs from a generation, which goes once the sandbox runs). A
// booted one gets init, with its host name, fresh randomness and the clock. The generation is
// left in place; the caller removes it once the sandbox is recorded as running.
// The sandbox gets a new network under rules.
func (r *Runtime) Resume(ctx context.Context, dir string, init envd.InitRequest, rules *netstack.Rules, memory bool) (*Sandbox, error) {
	g, meta, err := CurrentPaused(dir)
	if err != nil {
		return nil, fmt.Errorf("paused sandbox: %w", err)
	}
	if !memory {
		meta.Memory = false // boot from the saved disk alone (the guest synced it before the save)
	}
	spec := vmm.Spec{ID: meta.ID, Kernel: r.Image.Kernel, Disk: filepath.Join(g, vmm.DiskFile), MemoryMiB: meta.MemoryMiB,
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
	sb := newSandbox(vm, r.Log)
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
