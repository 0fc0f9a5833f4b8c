package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cellhq/cell/internal/qmp"
)

// Config is how a Host runs VMs.
type Config struct {
	QEMU    string // qemu-system-x86_64
	QEMUImg string // qemu-img
	// OverlayOptions are qemu-img's -o options for every new overlay (cluster_size,
	// lazy_refcounts, extended_l2…; "" is its defaults).
	OverlayOptions string
	RunDir         string // VM working directories live here
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
	// exiting holds, by VM id, the exits of released QEMUs not yet gone: a VM of the same id
	// (the sandbox resumed) starts once they are, since until its process ends a killed QEMU
	// still holds its image locks on the disk layers the new one opens (hard links of the same
	// files), and the kernel frees its RAM before its files.
	mu      sync.Mutex
	exiting map[string][]<-chan struct{}
}

// exitsOf returns the exits of id's released QEMUs that are still running.
func (h *Host) exitsOf(id string) []<-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]<-chan struct{}(nil), h.exiting[id]...)
}

// waitReleased waits until no released QEMU of VM id is running.
func (h *Host) waitReleased(ctx context.Context, id string) error {
	for _, ch := range h.exitsOf(id) {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the previous VM of %s to exit: %w", id, ctx.Err())
		}
	}
	return nil
}

func (h *Host) trackExit(id string, exited <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.exiting == nil {
		h.exiting = map[string][]<-chan struct{}{}
	}
	h.exiting[id] = append(h.exiting[id], exited)
}

func (h *Host) untrackExit(id string, exited <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	list := h.exiting[id]
	for i, ch := range list {
		if ch == exited {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(h.exiting, id)
	} else {
		h.exiting[id] = list
	}
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
	ID string
	// dir is the VM's working directory (see WorkDir); File names what is in it.
	dir WorkDir
	// claim is this process's claim of dir (see claimDir), held while it manages the VM.
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
	qmp     *qmp.Client

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
	if err := vm.qmp.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info jit"}, &out); err != nil {
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
		if aside, err := vm.dir.MoveAside(); err != nil {
			vm.log.Warn("releasing the VM", "err", err)
		} else {
			vm.aside = aside // vm.dir keeps the name others know it by
		}
		vm.host.releases.Add(1)
		if vm.proc != nil {
			vm.host.trackExit(vm.ID, vm.exited)
		}
		go func() {
			defer vm.host.releases.Done()
			vm.finish()
			if vm.proc != nil {
				vm.host.untrackExit(vm.ID, vm.exited)
			}
		}()
	})
}

// teardown releases everything but the slot.
func (vm *VM) teardown() error {
	vm.closeSessions()
	vm.stopQEMU()
	vm.detach()
	dir := vm.dir
	if vm.aside.Path != "" {
		dir = vm.aside
	}
	return dir.Remove()
}

// stopQEMU ends QEMU: SIGTERM, then SIGKILL after the grace period. It returns once QEMU has
// exited.
func (vm *VM) stopQEMU() {
	if vm.proc == nil {
		return
	}
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

// File is the path of name in the VM's working directory, for what must be reached by path
// (the disk a template build keeps, a test's look at the disk).
func (vm *VM) File(name string) string { return vm.dir.File(name) }

// WorkDir is the path of the VM's working directory (for syncing it after a change of its
// entries).
func (vm *VM) WorkDir() string { return vm.dir.Path }

// Stop stops the guest's CPUs (QMP stop): the guest no longer runs, and its disk is drained and
// flushed. Continue runs it again.
func (vm *VM) Stop(ctx context.Context) error {
	if err := vm.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("stopping the VM: %w", err)
	}
	return nil
}
