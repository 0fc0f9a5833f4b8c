package vmm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/cellhq/cell/internal/channel"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/qmp"
)

// Start boots a VM and waits until envd answers on the channel. It waits for a free VM slot
// first. Transient failures are retried; the returned error is a *BootError when QEMU ran.
func (h *Host) Start(ctx context.Context, spec Spec) (*VM, error) {
	have, err := h.checkSpec(&spec)
	if err != nil {
		return nil, err
	}
	if err := h.waitReleased(ctx, spec.ID); err != nil {
		return nil, err
	}
	if err := h.slots.acquire(ctx); err != nil {
		return nil, fmt.Errorf("waiting for a free VM slot (%d running): %w", h.cfg.MaxVMs, err)
	}
	var lastErr error
	backoff := 50 * time.Millisecond
	for attempt := 1; attempt <= h.cfg.Attempts; attempt++ {
		vm, err := h.startOnce(ctx, spec, have)
		if err == nil {
			return vm, nil
		}
		lastErr = err
		var be *BootError
		if !errors.As(err, &be) || !be.Transient || attempt == h.cfg.Attempts || ctx.Err() != nil {
			break
		}
		wait := backoff/2 + rand.N(backoff)
		h.cfg.Log.Warn("transient boot failure, retrying", "vm", spec.ID, "attempt", attempt, "wait", wait, "err", be.Err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		backoff *= 2
	}
	h.slots.release()
	return nil, lastErr
}

// checkSpec checks what spec names, settles its disk size (spec.DiskBytes) and admits that disk
// on the host. It returns the size of the disk the VM's disk starts from.
func (h *Host) checkSpec(spec *Spec) (have uint64, err error) {
	if err := ids.Validate("vm id", spec.ID); err != nil {
		return 0, err
	}
	disks := map[string]string{"kernel": spec.Kernel, "base disk": spec.BaseDisk}
	if spec.Disk != "" {
		disks = map[string]string{"kernel": spec.Kernel, "disk": spec.Disk}
	}
	for name, p := range disks {
		if _, err := os.Stat(p); err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	from := spec.BaseDisk
	if spec.Disk != "" {
		from = spec.Disk
	}
	if have, err = DiskVirtualSize(from); err != nil {
		return 0, err
	}
	switch {
	case spec.DiskBytes%MiB != 0:
		return 0, fmt.Errorf("disk size: %d bytes is not a whole number of MiB", spec.DiskBytes)
	case spec.DiskBytes != 0 && spec.DiskBytes < have:
		// The guest's file system fills the disk it starts from: it cannot shrink under it.
		return 0, fmt.Errorf("disk size: %s is below the %s of the disk it starts from", FormatSize(spec.DiskBytes), FormatSize(have))
	case spec.DiskBytes == 0:
		spec.DiskBytes = have
	}
	// A VM may come to hold its whole disk on the host: it starts only if that fits (a resume's
	// copy of its disk is part of it).
	if err := h.cfg.Disk.Admit(spec.DiskBytes, "a sandbox disk"); err != nil {
		return 0, err
	}
	return have, nil
}

// cleanup is what a start attempt has set up so far: each phase pushes the undoing of what it
// made, and a failed attempt runs them all, last first. A started VM drops it: from then on
// Close (teardown) releases the same things.
type cleanup []func()

func (c *cleanup) push(undo func()) { *c = append(*c, undo) }

func (c *cleanup) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

// startOnce is one attempt of Start; have is the size of the disk the VM's disk starts from. Its
// phases: the working directory and its claim, the disk, the machine (and a restore's memory
// file), QEMU's launch, attaching to QEMU's sockets, the restore, running the guest, and envd's
// handshake. A failure before QEMU runs is returned as it is; after, it is a *BootError.
func (h *Host) startOnce(ctx context.Context, spec Spec, have uint64) (*VM, error) {
	var undo cleanup
	vm, err := h.newVM(spec.ID, &undo)
	var m Machine
	if err == nil {
		m, err = vm.prepare(ctx, spec, &undo)
	}
	var launched time.Time
	if err == nil {
		launched, err = vm.launch(m, &undo)
	}
	if err != nil {
		// QEMU never ran: there is nothing to add to the error.
		undo.run()
		return nil, err
	}
	if err := vm.boot(ctx, spec, m, have, launched, &undo); err != nil {
		// A detached QEMU's output is a file in the directory the cleanup removes: read
		// first when QEMU has already exited (what it said is complete then).
		var said string
		select {
		case <-vm.exited:
			said = vm.stderrText()
		default:
		}
		undo.run()
		be := vm.bootError(err)
		if be.QEMUStderr == "" {
			be.QEMUStderr = said
		}
		return nil, be
	}
	if spec.Disk != "" {
		vm.maintainDisk() // each resume adds a layer
	}
	return vm, nil
}

// newVM makes the VM's working directory and takes its claim (see claimDir).
func (h *Host) newVM(id string, undo *cleanup) (*VM, error) {
	dir, err := NewWorkDir(h.cfg.RunDir, id)
	if err != nil {
		return nil, err
	}
	undo.push(func() { _ = dir.Remove() })
	vm := &VM{ID: id, dir: dir, host: h, log: h.cfg.Log.With("vm", id),
		stderr: &tail{}, exited: make(chan struct{}), closeDone: make(chan struct{})}
	if vm.claim, err = claimDir(dir.Path); err != nil {
		return nil, err
	}
	undo.push(vm.dropClaim)
	return vm, nil
}

// prepare makes the VM's disk and describes its machine: what QEMU is launched with.
func (vm *VM) prepare(ctx context.Context, spec Spec, undo *cleanup) (Machine, error) {
	// The VM writes to a new top layer (see chain.go): on its template's disk, or on the disk it
	// already has (a paused sandbox's), taken by reference: the original stays as it was, a
	// consistent snapshot until the VM is safely running. The layers are in the working
	// directory, and go with it.
	var top string
	var err error
	if spec.Disk != "" {
		top, err = vm.host.takeChain(ctx, spec.Disk, vm.dir.Path)
	} else {
		top, err = vm.host.newTop(ctx, vm.dir.Path, spec.BaseDisk, spec.BaseDisk)
	}
	if err != nil {
		return Machine{}, fmt.Errorf("the VM's disk: %w", err)
	}
	vm.MemoryMiB, vm.CPUs, vm.KernelArgs = spec.MemoryMiB, spec.CPUs, spec.KernelArgs
	// A booted VM's RAM is a named memory backend too (anonymous unless MemPath): a pause or
	// snapshot can then put it in a file that restores map (SaveSplit).
	vm.NamedRAM = spec.Restore == nil || spec.Restore.MemPath != "" || spec.Restore.NamedRAM
	cfg := vm.host.cfg
	m := Machine{
		Name: "cell-" + spec.ID, Kernel: spec.Kernel, KernelArgs: spec.KernelArgs, Disk: vm.dir.File(top),
		MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Accel: spec.Accel, TSCkHz: cfg.TSCkHz,
		QMPSocket: vm.dir.File("qmp.sock"), ConsoleSocket: vm.dir.File("console.sock"),
		ChannelSocket: vm.dir.File("ch.sock"), Sandbox: cfg.Sandbox,
		MemPath: spec.MemPath, MemShared: spec.MemShared,
	}
	if cfg.NetMAC != "" {
		m.NetSocket, m.NetMAC = vm.dir.File(netSocket), cfg.NetMAC
	}
	if spec.Restore == nil {
		m.MemAnon = spec.MemPath == ""
		return m, nil
	}
	mem, err := vm.openRestoreMemory(spec.Restore, undo)
	if err != nil {
		return Machine{}, err
	}
	m.MemPath, m.MemShared, m.Incoming = mem, false, true
	// The guest's kernel is in the snapshot's memory: QEMU gets a stand-in to load.
	m.Kernel = vm.dir.File(stubKernelFile)
	if err := os.WriteFile(m.Kernel, stubKernel(), 0o600); err != nil {
		return Machine{}, fmt.Errorf("writing the stand-in kernel: %w", err)
	}
	m.MemAnon = spec.Restore.Full && spec.Restore.MemPath == "" && spec.Restore.NamedRAM
	return m, nil
}

// openRestoreMemory opens the memory file the restored VM's RAM maps (see VM.ramSrc), taking it
// over when it is the VM's own, and returns the path QEMU maps ("" for none).
func (vm *VM) openRestoreMemory(r *Snapshot, undo *cleanup) (string, error) {
	mem := r.MemPath
	if mem == "" {
		return "", nil
	}
	if r.OwnMem {
		// A name of the VM's own (no copy): the file outlives its snapshot's removal, and goes
		// with the working directory.
		if err := os.Link(mem, vm.dir.File(ownRAMFile)); err == nil {
			mem, vm.ownRAM = vm.dir.File(ownRAMFile), true
		} else {
			vm.log.Debug("the memory file stays shared", "err", err)
		}
	}
	// Opened before QEMU maps it: the same file.
	flag := os.O_RDONLY
	if vm.ownRAM {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(mem, flag, 0)
	if err != nil {
		return "", fmt.Errorf("opening the snapshot's memory file: %w", err)
	}
	vm.ramSrc = f
	undo.push(vm.closeRAM)
	return mem, nil
}

// launch starts QEMU for m, with its output going to the VM's stderr tail or (detached) to
// qemu.log, and a goroutine that records its exit. It returns when QEMU was started.
func (vm *VM) launch(m Machine, undo *cleanup) (time.Time, error) {
	args, err := m.Args()
	if err != nil {
		return time.Time{}, err
	}
	cfg := vm.host.cfg
	// QEMU is not bound to the start's context: it belongs to the VM, and that context only
	// bounds the boot.
	cmd := exec.Command(cfg.QEMU, args...)
	cmd.Dir = vm.dir.Path
	cmd.Stdout = vm.stderr
	cmd.Stderr = vm.stderr
	if cfg.Detached {
		out, err := newQEMUOutput(vm.dir)
		if err != nil {
			return time.Time{}, err
		}
		vm.qemuOut, vm.detached = out, true
		undo.push(vm.releaseQEMUOutput) // it closes QEMU's ends too, should QEMU not start
		out.attach(cmd)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cfg.DieWithParent && !cfg.Detached {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return time.Time{}, fmt.Errorf("starting qemu: %w", err)
	}
	vm.cmd, vm.proc, vm.PID = cmd, cmd.Process, cmd.Process.Pid
	undo.push(vm.stopQEMU)
	if vm.qemuOut != nil {
		// QEMU has its own copies of its ends now.
		if err := vm.qemuOut.started(); err != nil {
			vm.log.Warn("QEMU's output may block it when no daemon drains it", "err", err)
		}
	}
	vm.StartTicks, _ = ProcessStartTicks(vm.PID)
	go func() {
		vm.exitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	return t0, nil
}

// boot takes a launched QEMU to a guest whose envd answers: it attaches to QEMU's sockets,
// restores the snapshot if there is one, grows the disk and runs the guest, then makes the
// channel's first handshake, all within the boot timeout. launched is when QEMU started.
func (vm *VM) boot(ctx context.Context, spec Spec, m Machine, have uint64, launched time.Time, undo *cleanup) error {
	b := vm.newBootAttempt(ctx, launched)
	defer b.end()
	chConn, err := vm.attach(b, m, undo)
	if err != nil {
		return err
	}
	if spec.Restore != nil {
		if err := vm.incoming(b.ctx, spec.Restore.StatePath, !spec.Restore.Full); err != nil {
			return b.fail("restoring the snapshot", err)
		}
	}
	if spec.DiskBytes > have {
		// Before the guest runs: a booting kernel finds the disk at its size; a restored one
		// (which knew the smaller disk) gets virtio's configuration-change interrupt when it
		// continues, and reads the new size.
		if err := vm.qmp.Execute(b.ctx, "block_resize", map[string]any{"node-name": "n0", "size": spec.DiskBytes}, nil); err != nil {
			return b.fail("growing the disk", err)
		}
	}
	if err := vm.qmp.Execute(b.ctx, "cont", nil, nil); err != nil {
		return b.fail("starting the guest", err)
	}
	tCont := time.Now()
	if err := vm.handshake(b, chConn, spec.Init); err != nil {
		return err
	}
	vm.log.Debug("vm booted", "qmp", b.tQMP.Sub(b.t0), "qemu_ready", tCont.Sub(b.t0), "guest_ready", time.Since(tCont), "pid", vm.PID)
	return nil
}

// attach connects to QEMU's QMP, console, guest channel and network sockets. It returns the
// channel's connection, for the handshake.
func (vm *VM) attach(b *bootAttempt, m Machine, undo *cleanup) (net.Conn, error) {
	var err error
	// QEMU creates its sockets before it serves QMP; once QMP answers, all are there.
	vm.qmp, err = dialRetry(b.ctx, m.QMPSocket, func(c net.Conn) (*qmp.Client, error) { return qmp.NewClient(b.ctx, c) })
	if err != nil {
		return nil, b.fail("connecting to QMP", err)
	}
	b.tQMP = time.Now()
	undo.push(vm.closeQMP)
	conn, err := dialRetry(b.ctx, m.ConsoleSocket, plainConn)
	if err != nil {
		return nil, b.fail("connecting to the console", err)
	}
	vm.conCon = conn
	undo.push(vm.closeConsole)
	if vm.console, err = startConsole(conn, vm.dir.File("console.log")); err != nil {
		return nil, err
	}
	chConn, err := dialRetry(b.ctx, m.ChannelSocket, plainConn)
	if err != nil {
		return nil, b.fail("connecting to the guest channel", err)
	}
	// Closing it again after a handshake that closed it does no harm.
	undo.push(func() { _ = chConn.Close() })
	if m.NetSocket != "" {
		// Connected before the guest runs: frames it sends early wait in the socket.
		if vm.net, err = dialRetry(b.ctx, m.NetSocket, plainConn); err != nil {
			return nil, b.fail("connecting to the network device", err)
		}
		undo.push(vm.closeNet)
	}
	return chConn, nil
}

// handshake makes the channel's first handshake with envd, which takes spec.Init.
func (vm *VM) handshake(b *bootAttempt, chConn net.Conn, init []byte) error {
	var err error
	vm.sess.cur, err = channel.Connect(b.ctx, chConn, vm.log, init)
	if errors.Is(err, channel.ErrInitRefused) {
		return &BootError{Err: fmt.Errorf("starting envd: %w", err)} // the same init would be refused again
	}
	if err != nil {
		be := &BootError{Err: b.fail("waiting for envd", err)}
		var inner *BootError
		if errors.As(be.Err, &inner) {
			be = inner
		} else if errors.Is(err, channel.ErrHandshake) {
			be.Transient = true
		}
		return be
	}
	return nil
}

// bootError is the *BootError of a failed boot whose cleanup has run: QEMU is gone, so what it
// and the guest's console said is complete.
func (vm *VM) bootError(err error) *BootError {
	be := &BootError{Err: err}
	var inner *BootError
	if errors.As(err, &inner) {
		be = inner
	}
	if vm.console != nil {
		be.ConsoleTail = vm.console.tail.String()
	}
	be.QEMUStderr = vm.stderrText()
	return be
}

// bootAttempt bounds one boot from QEMU's launch until envd answers: its context ends at the
// boot timeout, when QEMU exits, or with the start's context, and says which.
type bootAttempt struct {
	vm      *VM
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	timeout time.Duration
	t0      time.Time // QEMU's launch
	tQMP    time.Time // QMP answered
}

func (vm *VM) newBootAttempt(ctx context.Context, launched time.Time) *bootAttempt {
	b := &bootAttempt{vm: vm, timeout: vm.host.cfg.BootTimeout, t0: launched}
	b.ctx, b.cancel = context.WithCancelCause(ctx)
	b.timer = time.AfterFunc(b.timeout, func() { b.cancel(errBootTimeout) })
	go func() {
		select {
		case <-vm.exited:
			b.cancel(fmt.Errorf("%w during boot: %s", ErrQEMUExited, describeExit(vm.exitErr)))
		case <-b.ctx.Done():
		}
	}()
	return b
}

// end releases the attempt's timer and its watch of QEMU's exit.
func (b *bootAttempt) end() {
	b.timer.Stop()
	b.cancel(nil)
}

// fail explains why the boot failed while it was doing what: QEMU's exit (transient when QEMU
// crashed), the boot timeout (transient), or the start's context, before err itself.
func (b *bootAttempt) fail(what string, err error) error {
	vm := b.vm
	cause := context.Cause(b.ctx)
	if cause == nil {
		// A broken connection usually means QEMU is on its way out; let it say how.
		select {
		case <-vm.exited:
			cause = fmt.Errorf("%w during boot: %s", ErrQEMUExited, describeExit(vm.exitErr))
		case <-time.After(time.Second):
		}
	}
	switch {
	case errors.Is(cause, ErrQEMUExited) && crashed(vm.exitErr):
		// QEMU itself crashed (not killed, not a refused configuration): worth another try.
		return &BootError{Err: cause, Transient: true}
	case errors.Is(cause, ErrQEMUExited):
		return cause
	case errors.Is(cause, errBootTimeout):
		return &BootError{Err: fmt.Errorf("%s: %w after %v", what, errBootTimeout, b.timeout), Transient: true}
	case cause != nil:
		return fmt.Errorf("%s: %w", what, cause)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// crashed says whether a process ended by a crash signal (SIGSEGV, SIGBUS, SIGILL, SIGABRT).
func crashed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return false
	}
	switch ws.Signal() {
	case syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGILL, syscall.SIGABRT:
		return true
	}
	return false
}

// plainConn is dialRetry's wrap for a connection used as it is.
func plainConn(c net.Conn) (net.Conn, error) { return c, nil }

// dialRetry dials a unix socket until it accepts or ctx ends: every millisecond for the first
// 100 ms (QEMU creates its sockets ~25 ms after it starts; doubling delays overshot by up to
// 15 ms), then backing off to every 20 ms.
func dialRetry[T any](ctx context.Context, path string, wrap func(net.Conn) (T, error)) (T, error) {
	var zero T
	var d net.Dialer
	delay, start := time.Millisecond, time.Now()
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			v, err := wrap(c)
			if err != nil {
				_ = c.Close()
				return zero, err
			}
			return v, nil
		}
		select {
		case <-ctx.Done():
			return zero, err
		case <-time.After(delay):
		}
		if time.Since(start) > 100*time.Millisecond {
			delay = min(2*delay, 20*time.Millisecond)
		}
	}
}
