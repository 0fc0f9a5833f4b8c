package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/migstream"
)

// ignoreShared makes migration leave file-backed shared RAM out of the stream.
func (vm *VM) ignoreShared(ctx context.Context) error { return vm.setIgnoreShared(ctx, true) }

// setIgnoreShared sets x-ignore-shared (a VM restored from a template has it on, and a full save
// of it must turn it off: the capability travels in the stream).
func (vm *VM) setIgnoreShared(ctx context.Context, on bool) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}
	if err := vm.qmp.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return fmt.Errorf("migrate-set-capabilities: %w", err)
	}
	return nil
}

type migrationStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// migrationActive says whether a migration in this state is still under way.
func migrationActive(status string) bool {
	switch status {
	case "", "none", "completed", "failed", "cancelled":
		return false
	}
	return true
}

// pollMigration queries the migration until done says its state is final, and returns that state.
func (vm *VM) pollMigration(ctx context.Context, done func(status string) bool) (migrationStatus, error) {
	delay := 500 * time.Microsecond
	for {
		var st migrationStatus
		if err := vm.qmp.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return st, fmt.Errorf("query-migrate: %w", err)
		}
		if done(st.Status) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("waiting for the migration: %w", context.Cause(ctx))
		case <-vm.exited:
			return st, fmt.Errorf("%w during migration: %s", ErrQEMUExited, describeExit(vm.exitErr))
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Millisecond)
	}
}

// waitMigration waits until the migration completes or fails ("none", which QEMU may report
// before a migration has started, is not an end).
func (vm *VM) waitMigration(ctx context.Context) error {
	st, err := vm.pollMigration(ctx, func(s string) bool { return s == "completed" || s == "failed" || s == "cancelled" })
	if err != nil {
		return err
	}
	if st.Status != "completed" {
		return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
	}
	return nil
}

// cancelMigration cancels an outgoing migration still under way, if any, and waits until QEMU
// has finished with it (cancelled, or completed meanwhile). A VM that was stopped for it stays
// stopped.
func (vm *VM) cancelMigration(ctx context.Context) error {
	st, err := vm.pollMigration(ctx, func(string) bool { return true })
	if err != nil || !migrationActive(st.Status) {
		return err
	}
	vm.log.Warn("cancelling a migration left running", "status", st.Status)
	if err := vm.qmp.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
		return fmt.Errorf("migrate_cancel: %w", err)
	}
	_, err = vm.pollMigration(ctx, func(s string) bool { return !migrationActive(s) })
	return err
}

// Continue runs a VM that a save left stopped (it failed, or the VM goes on after a snapshot).
// QEMU writes some saves itself, so one may still be going: it is cancelled first, or its
// completion would stop the guest again. Continuing a running VM does nothing.
func (vm *VM) Continue(ctx context.Context) error {
	if err := vm.cancelMigration(ctx); err != nil {
		return err
	}
	if err := vm.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("continuing the VM: %w", err)
	}
	return nil
}

// incoming feeds a saved device state to a VM started with Incoming, and waits until it is loaded.
func (vm *VM) incoming(ctx context.Context, statePath string, ignoreShared bool) error {
	f, err := os.Open(statePath)
	if err != nil {
		return fmt.Errorf("opening the snapshot state: %w", err)
	}
	defer func() { _ = f.Close() }()
	if ignoreShared {
		if err := vm.ignoreShared(ctx); err != nil {
			return err
		}
	}
	// No self-announcement after the load: QEMU would write those frames to the network device
	// even before it has accepted the host's connection on it (QEMU 7.2 then dereferences a
	// null channel and dies; seen once in ~1000 restores). The host's switch learns the guest's
	// address from its first frame anyway.
	if err := vm.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"announce-rounds": 0}, nil); err != nil {
		return fmt.Errorf("migrate-set-parameters: %w", err)
	}
	// QEMU reads the stream from the file itself.
	if err := vm.qmp.AddFD(ctx, "migin", f); err != nil {
		return fmt.Errorf("passing the state file: %w", err)
	}
	if err := vm.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:migin"}, nil); err != nil {
		return fmt.Errorf("migrate-incoming: %w", err)
	}
	return vm.waitMigration(ctx)
}

// Save stops the guest and writes its device state to statePath (RAM stays in the VM's shared
// memory file, which must then not change: the VM is left paused, to be closed).
func (vm *VM) Save(ctx context.Context, statePath string) error {
	return vm.save(ctx, statePath, false)
}

// SaveFull stops the guest and writes its device state and all of its RAM to statePath. The VM
// is left paused, to be closed (or continued with `cont`).
func (vm *VM) SaveFull(ctx context.Context, statePath string) error {
	return vm.save(ctx, statePath, true)
}

func (vm *VM) save(ctx context.Context, statePath string, full bool) error {
	if err := vm.prepareSave(ctx, full); err != nil {
		return err
	}
	out, err := createState(statePath)
	if err != nil {
		return err
	}
	defer func() { _ = out.Close() }()
	// QEMU writes the stream into the file itself: no copy through this process.
	if err := vm.qmp.AddFD(ctx, "migout", out); err != nil {
		return fmt.Errorf("passing the state file: %w", err)
	}
	if err := vm.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:migout"}, nil); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := vm.waitMigration(ctx); err != nil {
		// QEMU writes this stream itself: a save given up on must not go on under the caller.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = vm.cancelMigration(cctx)
		cancel()
		return err
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("syncing the snapshot state: %w", err)
	}
	return nil
}

// createState creates the new file statePath for a saved device state.
func createState(statePath string) (*os.File, error) {
	f, err := os.OpenFile(statePath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the snapshot state: %w", err)
	}
	return f, nil
}

// prepareSave stops the guest and sets the migration up: with RAM in the stream (full), or
// leaving the shared memory file out.
func (vm *VM) prepareSave(ctx context.Context, full bool) error {
	if err := vm.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("stopping the guest: %w", err)
	}
	if !full {
		return vm.ignoreShared(ctx)
	}
	if err := vm.setIgnoreShared(ctx, false); err != nil {
		return err
	}
	// QEMU's default migration bandwidth (128 MiB/s) would make a pause take seconds.
	if err := vm.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(64) << 30}, nil); err != nil {
		return fmt.Errorf("migrate-set-parameters: %w", err)
	}
	return nil
}

// SaveSplit stops the guest and saves it like SaveFull, except that its RAM (the memory backend
// ram0: vm.NamedRAM) goes to memPath, a file laid out like the RAM with zero pages as holes,
// and statePath gets the rest. A restore maps memPath (Snapshot{MemPath, Full}) instead of
// reading the RAM from the stream. QEMU writes the stream into a pipe that this process splits
// (internal/migstream); the RAM's writeback to disk starts while it is being written, and both
// files are synced before SaveSplit returns. The VM is left paused, to be closed or continued.
// A VM restored from a memory file is saved without the stream when it can be (see delta.go);
// last says that the VM will not run again (a pause), so that its own memory file may be updated
// in place.
func (vm *VM) SaveSplit(ctx context.Context, statePath, memPath string, last bool) error {
	if !vm.NamedRAM {
		return errors.New("a split save needs the RAM in a memory backend (ram0)")
	}
	if vm.ramSrc != nil {
		err := vm.saveDelta(ctx, statePath, memPath, last)
		if !errors.Is(err, errNoDelta) {
			return err
		}
		vm.log.Warn("saving RAM through the migration stream instead", "reason", err)
	}
	if err := vm.prepareSave(ctx, true); err != nil {
		return err
	}
	state, err := createState(statePath)
	if err != nil {
		return err
	}
	defer func() { _ = state.Close() }()
	mem, err := os.OpenFile(memPath, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("creating the memory file: %w", err)
	}
	defer func() { _ = mem.Close() }()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer func() { _ = pr.Close() }()
	// A larger pipe: fewer wake-ups per MiB (best effort; the default works too).
	_, _ = unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	err = vm.qmp.AddFD(ctx, "migout", pw)
	_ = pw.Close() // QEMU has its own copy: the stream ends when QEMU closes it
	if err != nil {
		return fmt.Errorf("passing the migration pipe: %w", err)
	}
	type result struct {
		stats migstream.Stats
		err   error
	}
	split := make(chan result, 1)
	go func() {
		st, err := migstream.Split(pr, state, &writeback{f: mem}, "ram0", int64(vm.MemoryMiB)<<20)
		// A failed split stops reading: closing the pipe fails QEMU's writes instead of blocking them.
		_ = pr.Close()
		split <- result{st, err}
	}()
	if err := vm.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:migout"}, nil); err != nil {
		_ = pr.Close()
		<-split
		return fmt.Errorf("migrate: %w", err)
	}
	t0 := time.Now()
	werr := vm.waitMigration(ctx)
	tMig := time.Since(t0)
	var res result
	if werr != nil {
		_ = pr.Close()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = vm.cancelMigration(cctx)
		cancel()
		res = <-split
		return errors.Join(werr, res.err)
	}
	select {
	case res = <-split:
	case <-ctx.Done():
		_ = pr.Close()
		<-split
		return fmt.Errorf("splitting the migration stream: %w", context.Cause(ctx))
	}
	if res.err != nil {
		return fmt.Errorf("splitting the migration stream: %w", res.err)
	}
	tSplit := time.Since(t0)
	if err := state.Sync(); err != nil {
		return fmt.Errorf("syncing the snapshot state: %w", err)
	}
	if err := mem.Sync(); err != nil {
		return fmt.Errorf("syncing the memory file: %w", err)
	}
	vm.log.Debug("split save", "migrated", tMig, "split", tSplit, "synced", time.Since(t0), "ramPages", res.stats.Pages, "zeroPages", res.stats.ZeroPages, "stateBytes", res.stats.StateBytes)
	return nil
}

// writeback writes a memory file and starts writing each piece back to disk at once, so that
// the final sync has little left to wait for.
type writeback struct{ f *os.File }

func (w *writeback) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.f.WriteAt(p, off)
	if err == nil {
		w.started(off, int64(n))
	}
	return n, err
}

// started starts writing n bytes at off back (they were written some other way).
func (w *writeback) started(off, n int64) {
	_ = unix.SyncFileRange(int(w.f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

func (w *writeback) Truncate(size int64) error { return w.f.Truncate(size) }

// Fingerprint identifies everything a snapshot of a VM started from spec depends on: the QEMU
// binary (path, size, mtime), the machine's command line (with per-VM paths left out), the
// kernel and the disk layers. A snapshot is only ever restored into a VM with the same one.
func (h *Host) Fingerprint(spec Spec) (string, error) {
	m := Machine{
		Name: "cell-x", Kernel: spec.Kernel, KernelArgs: spec.KernelArgs, Disk: "/disk", MemoryMiB: spec.MemoryMiB,
		CPUs: spec.CPUs, Accel: spec.Accel, TSCkHz: h.cfg.TSCkHz, QMPSocket: "/q", ConsoleSocket: "/c",
		ChannelSocket: "/ch", Sandbox: h.cfg.Sandbox, MemPath: "/mem",
	}
	if h.cfg.NetMAC != "" {
		m.NetSocket, m.NetMAC = "/net", h.cfg.NetMAC
	}
	args, err := m.Args()
	if err != nil {
		return "", err
	}
	sum := sha256.New()
	for _, p := range []string{h.cfg.QEMU, spec.Kernel, spec.BaseDisk} {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(sum, "%s|%d|%d\n", p, st.Size(), st.ModTime().UnixNano())
	}
	fmt.Fprintln(sum, strings.Join(args, "\x00"))
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// CopyFile copies src to a new file dst and syncs it.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if serr := out.Sync(); err == nil {
		err = serr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
