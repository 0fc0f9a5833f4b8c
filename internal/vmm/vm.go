package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cellhq/cell/internal/channel"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/qmp"
)

// Config is how a Host runs VMs.
type Config struct {
	QEMU    string // qemu-system-x86_64
	QEMUImg string // qemu-img
	RunDir  string // VM working directories live here
	// MaxVMs bounds VMs running at once; Start waits (honouring its context) for a free slot.
	// Adopt never refuses a VM for it: adopted VMs past the limit hold slots until they end, and
	// Start waits until the count is below the limit.
	MaxVMs int
	// Attempts is how many times a transiently failing boot is tried (at least 1).
	Attempts int
	// BootTimeout bounds one boot attempt, QEMU start to envd ready.
	BootTimeout time.Duration
	// StopGrace is how long QEMU gets after SIGTERM before SIGKILL.
	StopGrace time.Duration
	// DieWithParent makes QEMU receive SIGKILL when this process dies (for `cell run`).
	DieWithParent bool
	// Detached VMs outlive this process so that a restarted daemon can adopt them: QEMU's own
	// output goes to qemu.log in the VM's directory (bounded, through a pipe whichever daemon
	// is attached drains; see qemuOutput) instead of a pipe to this process.
	Detached bool
	// Sandbox enables QEMU's seccomp sandbox.
	Sandbox bool
	// NetMAC, when set, gives every VM a virtio-net device with this MAC whose host end is a
	// unix socket in the VM's directory (see VM.TakeNet).
	NetMAC string
	// Disk, when set, refuses a VM whose disk could grow past the host's free space (see
	// DiskGuard); Start then fails with ErrInsufficientStorage.
	Disk   *DiskGuard
	TSCkHz int
	Log    *slog.Logger
}

// Host starts VMs on this machine.
type Host struct {
	cfg      Config
	slots    *slots
	overlays overlays
	releases sync.WaitGroup // VMs whose Release is still finishing
}

// Wait waits until every released VM (VM.Release) is gone: its QEMU exited, its directory
// removed, its slot free.
func (h *Host) Wait() { h.releases.Wait() }

// NewHost checks cfg and returns a Host.
func NewHost(cfg Config) (*Host, error) {
	if cfg.QEMU == "" || cfg.QEMUImg == "" {
		return nil, errors.New("vmm: QEMU and QEMUImg paths are required")
	}
	if cfg.MaxVMs <= 0 {
		return nil, fmt.Errorf("vmm: max VMs %d must be positive", cfg.MaxVMs)
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 1
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 30 * time.Second
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 2 * time.Second
	}
	if cfg.TSCkHz <= 0 {
		khz, err := HostTSCkHz()
		if err != nil {
			return nil, err
		}
		cfg.TSCkHz = khz
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Host{cfg: cfg, slots: newSlots(cfg.MaxVMs)}, nil
}

// Slots says how many VM slots are held and how many of them past the limit (VMs adopted by a
// daemon restarted with a lower limit): no VM starts until that is back to zero and a slot is free.
func (h *Host) Slots() (used, over int) { return h.slots.inUse() }

// RunDir is where the host's VM directories live.
func (h *Host) RunDir() string { return h.cfg.RunDir }

// DiskGuard is what admits VM disks on this host (nil: everything).
func (h *Host) DiskGuard() *DiskGuard { return h.cfg.Disk }

// Spec is one VM to start.
type Spec struct {
	ID         string
	Kernel     string
	BaseDisk   string // qcow2 the VM's overlay is backed by
	MemoryMiB  int
	CPUs       int
	Accel      Accel // resolved: kvm or tcg
	KernelArgs []string

	// MemPath and MemShared back RAM with a file (see Machine); a VM to be snapshotted as a
	// template uses a shared one.
	MemPath   string
	MemShared bool
	// Restore, when set, starts the VM from this snapshot instead of booting it: RAM maps the
	// snapshot's file copy-on-write (or comes whole from the stream) and BaseDisk must be the
	// snapshot's disk layer (or Disk the VM's own disk).
	Restore *Snapshot
	// Disk, when set, is copied to be the VM's disk instead of a new overlay on BaseDisk.
	Disk string
	// DiskBytes, when set, is the size of the VM's disk (a multiple of 1 MiB): the disk it
	// starts from (BaseDisk's, or Disk's) grows to it before the guest runs, and the guest is
	// told (its file system grows only when something in it resizes it). 0: that disk's size.
	DiskBytes uint64
	// Init, when not nil, goes to envd with the channel's first handshake (see channel.Connect):
	// the sandbox's identity, applied before Start returns. A guest that refuses it fails Start
	// for good (channel.ErrInitRefused), without a retry.
	Init []byte
}

// Snapshot is a saved VM: device state, and RAM in a file.
type Snapshot struct {
	MemPath   string
	StatePath string
	// Full snapshots carry RAM in the stream. MemPath, if set, is still mapped (the stream
	// overwrites it); NamedRAM says the saved VM had its RAM in a memory backend object.
	Full     bool
	NamedRAM bool
	// OwnMem says that MemPath belongs to this VM alone (a paused sandbox's): the VM takes it
	// over (a link in its working directory) and a final save updates it in place.
	OwnMem bool
}

// VM is a running QEMU. Close releases everything it holds.
type VM struct {
	ID  string
	Dir WorkDir
	// claim is this process's claim of Dir (see claimDir), held while it manages the VM.
	claim *os.File
	PID   int
	// StartTicks is QEMU's start time (/proc/PID/stat field 22): with PID it names the process
	// even after the PID is reused.
	StartTicks uint64
	// The machine, as a pause must reproduce it.
	MemoryMiB, CPUs int
	NamedRAM        bool     // RAM is the memory backend object ram0
	KernelArgs      []string // Cell's extra kernel arguments
	// ramSrc is the memory file the RAM maps copy-on-write (a restored VM), open so that a save
	// can read what the guest did not change even once the file is renamed or removed. ownRAM:
	// it is the VM's own (ownRAMFile in its working directory), writable.
	ramSrc *os.File
	ownRAM bool

	host    *Host
	log     *slog.Logger
	cmd     *exec.Cmd
	proc    *os.Process
	stderr  *tail
	console *console
	conCon  net.Conn
	QMP     *qmp.Client

	// sess is the channel to envd (see Session); sessWG counts its attempts in flight.
	sess   sessions
	sessWG sync.WaitGroup

	netMu sync.Mutex
	net   net.Conn // the host end of the network device until TakeNet

	diskMu sync.Mutex // serializes what changes the disk's layers (chain.go)

	exited  chan struct{}
	exitErr error // valid once exited is closed

	closeOnce sync.Once
	closeErr  error
	closeDone chan struct{} // closed once Close (or Release) has finished
	aside     WorkDir       // where Release moved the working directory

	detached  bool
	qemuOut   *qemuOutput // drains a detached QEMU's output into qemu.log
	stopWatch func()      // stops the exit watcher of an adopted VM
}

// BootError is a failed boot with what QEMU and the guest said.
type BootError struct {
	Err         error
	Transient   bool
	ConsoleTail string
	QEMUStderr  string
}

func (e *BootError) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	if s := strings.TrimSpace(e.QEMUStderr); s != "" {
		b.WriteString("\nqemu stderr:\n" + lastLines(s, 10))
	}
	if s := strings.TrimSpace(e.ConsoleTail); s != "" {
		b.WriteString("\nguest console (last lines):\n" + lastLines(s, 20))
	} else {
		b.WriteString("\nguest console: (empty)")
	}
	return b.String()
}

func (e *BootError) Unwrap() error { return e.Err }

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ErrQEMUExited is wrapped when QEMU ended while it was needed.
var ErrQEMUExited = errors.New("qemu exited")

// errBootTimeout is the cause of a boot attempt that ran out of time.
var errBootTimeout = errors.New("guest did not become ready in time")

// Start boots a VM and waits until envd answers on the channel. It waits for a free VM slot
// first. Transient failures are retried; the returned error is a *BootError when QEMU ran.
func (h *Host) Start(ctx context.Context, spec Spec) (*VM, error) {
	if err := ids.Validate("vm id", spec.ID); err != nil {
		return nil, err
	}
	disks := map[string]string{"kernel": spec.Kernel, "base disk": spec.BaseDisk}
	if spec.Disk != "" {
		disks = map[string]string{"kernel": spec.Kernel, "disk": spec.Disk}
	}
	for name, p := range disks {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	from := spec.BaseDisk
	if spec.Disk != "" {
		from = spec.Disk
	}
	have, err := DiskVirtualSize(from)
	if err != nil {
		return nil, err
	}
	switch {
	case spec.DiskBytes%MiB != 0:
		return nil, fmt.Errorf("disk size: %d bytes is not a whole number of MiB", spec.DiskBytes)
	case spec.DiskBytes != 0 && spec.DiskBytes < have:
		// The guest's file system fills the disk it starts from: it cannot shrink under it.
		return nil, fmt.Errorf("disk size: %s is below the %s of the disk it starts from", FormatSize(spec.DiskBytes), FormatSize(have))
	case spec.DiskBytes == 0:
		spec.DiskBytes = have
	}
	// A VM may come to hold its whole disk on the host: it starts only if that fits (a resume's
	// copy of its disk is part of it).
	if err := h.cfg.Disk.Admit(spec.DiskBytes, "a sandbox disk"); err != nil {
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

// startOnce is one attempt of Start; have is the size of the disk the VM's disk starts from.
func (h *Host) startOnce(ctx context.Context, spec Spec, have uint64) (_ *VM, retErr error) {
	dir, err := NewWorkDir(h.cfg.RunDir, spec.ID)
	if err != nil {
		return nil, err
	}
	vm := &VM{ID: spec.ID, Dir: dir, host: h, log: h.cfg.Log.With("vm", spec.ID),
		stderr: &tail{}, exited: make(chan struct{}), closeDone: make(chan struct{})}
	if vm.claim, err = claimDir(dir.Path); err != nil {
		_ = dir.Remove()
		return nil, err
	}
	defer func() {
		if retErr != nil && vm.cmd == nil {
			// QEMU never ran: there is nothing to add to the error.
			_ = vm.teardown()
			return
		}
		if retErr != nil {
			be := &BootError{Err: retErr}
			var inner *BootError
			if errors.As(retErr, &inner) {
				be = inner
			}
			defer func() { be.QEMUStderr = vm.stderrText() }()
			_ = vm.teardown()
			// The console is complete once QEMU is gone.
			if vm.console != nil {
				be.ConsoleTail = vm.console.tail.String()
			}
			retErr = be
		}
	}()

	// The VM writes to a new top layer (see chain.go): on its template's disk, or on the disk it
	// already has (a paused sandbox's), taken by reference: the original stays as it was, a
	// consistent snapshot until the VM is safely running.
	var top string
	if spec.Disk != "" {
		top, err = h.takeChain(ctx, spec.Disk, dir.Path)
	} else {
		top, err = h.newTop(ctx, dir.Path, spec.BaseDisk, spec.BaseDisk)
	}
	if err != nil {
		return nil, fmt.Errorf("the VM's disk: %w", err)
	}
	disk := dir.File(top)
	vm.MemoryMiB, vm.CPUs, vm.KernelArgs = spec.MemoryMiB, spec.CPUs, spec.KernelArgs
	// A booted VM's RAM is a named memory backend too (anonymous unless MemPath): a pause or
	// snapshot can then put it in a file that restores map (SaveSplit).
	vm.NamedRAM = spec.Restore == nil || spec.Restore.MemPath != "" || spec.Restore.NamedRAM
	m := Machine{
		Name: "cell-" + spec.ID, Kernel: spec.Kernel, KernelArgs: spec.KernelArgs, Disk: disk,
		MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs, Accel: spec.Accel, TSCkHz: h.cfg.TSCkHz,
		QMPSocket: dir.File("qmp.sock"), ConsoleSocket: dir.File("console.sock"),
		ChannelSocket: dir.File("ch.sock"), Sandbox: h.cfg.Sandbox,
		MemPath: spec.MemPath, MemShared: spec.MemShared,
	}
	if h.cfg.NetMAC != "" {
		m.NetSocket, m.NetMAC = dir.File(netSocket), h.cfg.NetMAC
	}
	if spec.Restore != nil {
		mem := spec.Restore.MemPath
		if mem != "" {
			if spec.Restore.OwnMem {
				// A name of the VM's own (no copy): the file outlives its snapshot's removal,
				// and goes with the working directory.
				if err := os.Link(mem, dir.File(ownRAMFile)); err == nil {
					mem, vm.ownRAM = dir.File(ownRAMFile), true
				} else {
					vm.log.Debug("the memory file stays shared", "err", err)
				}
			}
			// Opened before QEMU maps it: the same file.
			flag := os.O_RDONLY
			if vm.ownRAM {
				flag = os.O_RDWR
			}
			if vm.ramSrc, err = os.OpenFile(mem, flag, 0); err != nil {
				return nil, fmt.Errorf("opening the snapshot's memory file: %w", err)
			}
		}
		m.MemPath, m.MemShared, m.Incoming = mem, false, true
		// The guest's kernel is in the snapshot's memory: QEMU gets a stand-in to load.
		m.Kernel = dir.File(stubKernelFile)
		if err := os.WriteFile(m.Kernel, stubKernel(), 0o600); err != nil {
			return nil, fmt.Errorf("writing the stand-in kernel: %w", err)
		}
		m.MemAnon = spec.Restore.Full && spec.Restore.MemPath == "" && spec.Restore.NamedRAM
	} else {
		m.MemAnon = spec.MemPath == ""
	}
	args, err := m.Args()
	if err != nil {
		return nil, err
	}
	// QEMU is not bound to ctx: it belongs to the VM, and ctx only bounds the boot.
	cmd := exec.Command(h.cfg.QEMU, args...)
	cmd.Dir = dir.Path
	cmd.Stdout = vm.stderr
	cmd.Stderr = vm.stderr
	if h.cfg.Detached {
		out, err := newQEMUOutput(dir)
		if err != nil {
			return nil, err
		}
		vm.qemuOut = out
		defer out.closeChildEnds() // QEMU has its own copies once started
		out.attach(cmd)
		vm.detached = true
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if h.cfg.DieWithParent && !h.cfg.Detached {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting qemu: %w", err)
	}
	vm.cmd = cmd
	vm.proc = cmd.Process
	vm.PID = vm.cmd.Process.Pid
	if vm.qemuOut != nil {
		if err := vm.qemuOut.started(); err != nil {
			vm.log.Warn("QEMU's output may block it when no daemon drains it", "err", err)
		}
	}
	vm.StartTicks, _ = ProcessStartTicks(vm.PID)
	go func() {
		vm.exitErr = vm.cmd.Wait()
		close(vm.exited)
	}()

	bootCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(h.cfg.BootTimeout, func() { cancel(errBootTimeout) })
	defer timer.Stop()
	go func() {
		select {
		case <-vm.exited:
			cancel(fmt.Errorf("%w during boot: %s", ErrQEMUExited, describeExit(vm.exitErr)))
		case <-bootCtx.Done():
		}
	}()
	fail := func(what string, err error) error {
		cause := context.Cause(bootCtx)
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
			return &BootError{Err: fmt.Errorf("%s: %w after %v", what, errBootTimeout, h.cfg.BootTimeout), Transient: true}
		case cause != nil:
			return fmt.Errorf("%s: %w", what, cause)
		}
		return fmt.Errorf("%s: %w", what, err)
	}

	// QEMU creates its sockets before it serves QMP; once QMP answers, all are there.
	vm.QMP, err = dialRetry(bootCtx, m.QMPSocket, func(c net.Conn) (*qmp.Client, error) { return qmp.NewClient(bootCtx, c) })
	if err != nil {
		return nil, fail("connecting to QMP", err)
	}
	tQMP := time.Now()
	conn, err := dialRetry(bootCtx, m.ConsoleSocket, func(c net.Conn) (net.Conn, error) { return c, nil })
	if err != nil {
		return nil, fail("connecting to the console", err)
	}
	vm.conCon = conn
	if vm.console, err = startConsole(conn, dir.File("console.log")); err != nil {
		return nil, err
	}
	chConn, err := dialRetry(bootCtx, m.ChannelSocket, func(c net.Conn) (net.Conn, error) { return c, nil })
	if err != nil {
		return nil, fail("connecting to the guest channel", err)
	}
	if m.NetSocket != "" {
		// Connected before the guest runs: frames it sends early wait in the socket.
		vm.net, err = dialRetry(bootCtx, m.NetSocket, func(c net.Conn) (net.Conn, error) { return c, nil })
		if err != nil {
			_ = chConn.Close()
			return nil, fail("connecting to the network device", err)
		}
	}
	if spec.Restore != nil {
		if err := vm.incoming(bootCtx, spec.Restore.StatePath, !spec.Restore.Full); err != nil {
			_ = chConn.Close()
			return nil, fail("restoring the snapshot", err)
		}
	}
	if spec.DiskBytes > have {
		// Before the guest runs: a booting kernel finds the disk at its size; a restored one
		// (which knew the smaller disk) gets virtio's configuration-change interrupt when it
		// continues, and reads the new size.
		if err := vm.QMP.Execute(bootCtx, "block_resize", map[string]any{"node-name": "n0", "size": spec.DiskBytes}, nil); err != nil {
			_ = chConn.Close()
			return nil, fail("growing the disk", err)
		}
	}
	if err := vm.QMP.Execute(bootCtx, "cont", nil, nil); err != nil {
		_ = chConn.Close()
		return nil, fail("starting the guest", err)
	}
	tCont := time.Now()
	vm.sess.cur, err = channel.Connect(bootCtx, chConn, vm.log, spec.Init)
	if errors.Is(err, channel.ErrInitRefused) {
		return nil, &BootError{Err: fmt.Errorf("starting envd: %w", err)} // the same init would be refused again
	}
	if err != nil {
		be := &BootError{Err: fail("waiting for envd", err)}
		var inner *BootError
		if errors.As(be.Err, &inner) {
			be = inner
		} else if errors.Is(err, channel.ErrHandshake) {
			be.Transient = true
		}
		return nil, be
	}
	vm.log.Debug("vm booted", "qmp", tQMP.Sub(t0), "qemu_ready", tCont.Sub(t0), "guest_ready", time.Since(tCont), "pid", vm.PID)
	if spec.Disk != "" {
		vm.maintainDisk() // each resume adds a layer
	}
	return vm, nil
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

func describeExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String()
		}
		return fmt.Sprintf("exit status %d", ee.ExitCode())
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// ExitReason describes how QEMU ended; only meaningful after Exited is closed.
func (vm *VM) ExitReason() string { return describeExit(vm.exitErr) }

// ConsoleTail returns the last few KiB of the guest's console.
func (vm *VM) ConsoleTail() string {
	if vm.console == nil {
		return ""
	}
	return vm.console.tail.String()
}

// TranslationBlocks is how many blocks of guest code QEMU's TCG has translated so far ("TB count"
// of the monitor's `info jit`): the main cost of a cold boot under TCG, which a changed kernel,
// envd or QEMU can raise. It is an error under KVM, which translates nothing.
func (vm *VM) TranslationBlocks(ctx context.Context) (int, error) {
	var out string
	if err := vm.QMP.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info jit"}, &out); err != nil {
		return 0, fmt.Errorf("info jit: %w", err)
	}
	return parseTBCount(out)
}

// parseTBCount reads the "TB count" line of `info jit`.
func parseTBCount(info string) (int, error) {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(line, "TB count"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0, fmt.Errorf("info jit: TB count %q: %w", strings.TrimSpace(v), err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("info jit: no TB count in %q", info)
}

// Close stops QEMU (SIGTERM, then SIGKILL after the grace period), closes the QMP, console and
// channel connections, removes the working directory and frees the VM's slot. It is idempotent
// and safe to call from several goroutines.
func (vm *VM) Close() error {
	vm.closeOnce.Do(vm.finish)
	<-vm.closeDone
	return vm.closeErr
}

func (vm *VM) finish() {
	vm.closeErr = vm.teardown()
	vm.host.slots.release()
	close(vm.closeDone)
}

// Release is Close for a VM that is stopped and whose state is saved (a pause): QEMU is killed
// at once, and the rest finishes in the background (Host.Wait waits for it): QEMU's exit, in
// which the kernel frees its RAM (~40 ms with 512 MiB written), the working directory's removal
// and the slot. The directory is renamed aside first, so a VM with the same id (the sandbox
// resumed) may start at once. Close after Release waits for it to finish.
func (vm *VM) Release() {
	vm.closeOnce.Do(func() {
		if vm.proc != nil {
			_ = vm.proc.Kill()
		}
		if aside, err := vm.Dir.MoveAside(); err != nil {
			vm.log.Warn("releasing the VM", "err", err)
		} else {
			vm.aside = aside // vm.Dir keeps the name others know it by
		}
		vm.host.releases.Add(1)
		go func() {
			defer vm.host.releases.Done()
			vm.finish()
		}()
	})
}

// teardown releases everything but the slot.
func (vm *VM) teardown() error {
	var errs []error
	vm.closeSessions()
	if vm.proc != nil {
		select {
		case <-vm.exited:
		default:
			_ = vm.proc.Signal(syscall.SIGTERM)
			select {
			case <-vm.exited:
			case <-time.After(vm.host.cfg.StopGrace):
				vm.log.Warn("qemu ignored SIGTERM, killing it", "pid", vm.PID)
				_ = vm.proc.Kill()
				<-vm.exited
			}
		}
	}
	vm.detach()
	dir := vm.Dir
	if vm.aside.Path != "" {
		dir = vm.aside
	}
	if err := dir.Remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
