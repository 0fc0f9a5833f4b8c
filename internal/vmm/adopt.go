package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/qmp"
)

// ErrNotOurs is returned by Adopt when the process is gone or is not the VM's QEMU.
var ErrNotOurs = errors.New("not this VM's QEMU process")

// ProcStat returns the fields of /proc/PID/stat after the command name: field N of proc(5) is at
// index N-3.
func ProcStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return f, nil
}

// ProcessStartTicks returns field 22 of /proc/PID/stat: when the process started, in clock ticks
// since boot.
func ProcessStartTicks(pid int) (uint64, error) {
	f, err := ProcStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// IsOurs reports whether pid is the QEMU that runs VM id and started at startTicks.
func IsOurs(pid int, startTicks uint64, id string) bool {
	if pid <= 0 {
		return false
	}
	st, err := ProcessStartTicks(pid)
	if err != nil || st != startTicks {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte("\x00-name\x00cell-"+id+"\x00"))
}

// Adopt takes over a VM that an earlier process started detached: it checks that pid is still
// that VM's QEMU and reconnects QMP, the console and the network device; ctx bounds these, which
// QEMU itself answers. envd is not waited for: its session is made in the background (see
// Session), so a guest slow to answer a restarted daemon is adopted all the same. The VM holds a
// slot, taken past the limit if none is free (see Config.MaxVMs).
func (h *Host) Adopt(ctx context.Context, id string, pid int, startTicks uint64) (_ *VM, retErr error) {
	if err := ids.Validate("vm id", id); err != nil {
		return nil, err
	}
	if !IsOurs(pid, startTicks, id) {
		return nil, fmt.Errorf("vm %s pid %d: %w", id, pid, ErrNotOurs)
	}
	dir := WorkDir{Path: h.cfg.RunDir + "/" + id}
	claim, err := claimDir(dir.Path)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", id, err)
	}
	vm := &VM{ID: id, dir: dir, PID: pid, StartTicks: startTicks, host: h, log: h.cfg.Log.With("vm", id),
		stderr: &tail{}, exited: make(chan struct{}), closeDone: make(chan struct{}), detached: true, claim: claim}
	proc, err := os.FindProcess(pid)
	if err != nil {
		_ = claim.Close()
		return nil, err
	}
	vm.proc = proc
	if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		vm.machineFromArgs(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
	}
	stop, err := watchExit(pid, vm)
	if err != nil {
		_ = claim.Close()
		return nil, fmt.Errorf("vm %s: %w", id, err)
	}
	vm.stopWatch = stop
	h.slots.force()
	if used, over := h.slots.inUse(); over > 0 {
		vm.log.Warn("adopted past the VM limit: no new VM starts until enough have ended", "max_vms", h.cfg.MaxVMs, "running", used)
	}
	vm.qemuOut = adoptQEMUOutput(dir)
	defer func() {
		if retErr != nil {
			vm.detach()
			h.slots.release()
		}
	}()
	// A VM that took its memory file over still has it: saves work as before the restart (a
	// file that is not the one QEMU maps is found out by the save, which then uses the stream).
	if f, err := os.OpenFile(dir.File(ownRAMFile), os.O_RDWR, 0); err == nil {
		vm.ramSrc, vm.ownRAM = f, true
	}
	vm.qmp, err = dialRetry(ctx, dir.File("qmp.sock"), func(c net.Conn) (*qmp.Client, error) { return qmp.NewClient(ctx, c) })
	if err != nil {
		return nil, fmt.Errorf("vm %s: reconnecting QMP: %w", id, err)
	}
	// A daemon killed while the VM was stopped (saving a snapshot, a pause that went no further)
	// left it stopped: it runs again, as the record says.
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := vm.qmp.Execute(ctx, "query-status", nil, &st); err != nil {
		return nil, fmt.Errorf("vm %s: query-status: %w", id, err)
	}
	if !st.Running {
		h.cfg.Log.Warn("adopted VM was stopped: continuing it", "vm", id, "status", st.Status)
		if err := vm.Continue(ctx); err != nil {
			return nil, fmt.Errorf("vm %s: continuing it (%s): %w", id, st.Status, err)
		}
	}
	if conn, err := (&net.Dialer{}).DialContext(ctx, "unix", dir.File("console.sock")); err == nil {
		vm.conCon = conn
		if vm.console, err = appendConsole(conn, dir.File("console.log")); err != nil {
			return nil, err
		}
	}
	if h.cfg.NetMAC != "" {
		// QEMU accepts a new connection on its network socket once the old one closed.
		if vm.net, err = dialRetry(ctx, dir.File(netSocket), func(c net.Conn) (net.Conn, error) { return c, nil }); err != nil {
			return nil, fmt.Errorf("vm %s: reconnecting the network device: %w", id, err)
		}
	}
	vm.connectSoon()
	return vm, nil
}

// watchExit closes vm.exited when pid exits (it need not be our child).
func watchExit(pid int, vm *VM) (stop func(), err error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { _ = unix.Close(fd) }()
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 200)
			if err != nil && !errors.Is(err, syscall.EINTR) {
				vm.exitErr = fmt.Errorf("watching pid %d: %w", pid, err)
				close(vm.exited)
				return
			}
			if n > 0 {
				vm.exitErr = errors.New("exited (not our child: status unknown)")
				close(vm.exited)
				return
			}
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }, nil
}

// Detach lets go of the VM without stopping it: connections are closed, QEMU keeps running and
// its directory stays, for a later Adopt. The slot is freed. Close after Detach does nothing.
func (vm *VM) Detach() {
	vm.closeOnce.Do(func() {
		vm.detach()
		vm.host.slots.release()
		close(vm.closeDone)
	})
}

// detach closes this process's connections to the VM (channel, QMP, console) and stops the
// exit watcher of an adopted one; QEMU itself is left alone.
func (vm *VM) detach() {
	vm.closeRAM()
	vm.closeNet()
	vm.closeSessions()
	vm.closeQMP()
	vm.closeConsole()
	vm.releaseQEMUOutput()
	if vm.stopWatch != nil {
		vm.stopWatch()
	}
	vm.dropClaim() // last: the VM is free for another process to manage
}

// closeRAM closes the memory file a restored VM's RAM maps.
func (vm *VM) closeRAM() {
	if f := vm.ramSrc; f != nil {
		vm.ramSrc = nil
		_ = f.Close()
	}
}

// closeNet closes the host end of the network device, unless it was taken.
func (vm *VM) closeNet() {
	if c := vm.TakeNet(); c != nil {
		_ = c.Close()
	}
}

func (vm *VM) closeQMP() {
	if vm.qmp != nil {
		_ = vm.qmp.Close()
	}
}

// closeConsole closes the console's connection and waits until its log has what was read.
func (vm *VM) closeConsole() {
	if vm.conCon != nil {
		_ = vm.conCon.Close()
	}
	if vm.console != nil {
		<-vm.console.done
	}
}

// releaseQEMUOutput stops draining a detached QEMU's output: to its end if QEMU is gone,
// at once if it goes on (it writes into the pipe for the next daemon).
func (vm *VM) releaseQEMUOutput() {
	o := vm.qemuOut
	if o == nil {
		return
	}
	select {
	case <-vm.exited:
		o.finish(time.Second) // QEMU is gone: what it wrote last is still in the pipe
	default:
		o.stop()
	}
}

// dropClaim lets go of the claim of the VM's directory: another process may manage the VM.
func (vm *VM) dropClaim() {
	if f := vm.claim; f != nil {
		vm.claim = nil
		_ = f.Close()
	}
}

// netSocket is the network device's socket in a VM's directory.
const netSocket = "net.sock"

// TakeNet hands over the host end of the VM's network device (a stream of frames in QEMU's
// length-prefixed framing); the caller then owns it. Nil if the VM has none or it was taken.
func (vm *VM) TakeNet() net.Conn {
	vm.netMu.Lock()
	defer vm.netMu.Unlock()
	c := vm.net
	vm.net = nil
	return c
}

// stderrText is what QEMU itself printed (the tail of qemu.log for a detached VM).
func (vm *VM) stderrText() string {
	if !vm.detached {
		return vm.stderr.String()
	}
	f, err := os.Open(vm.dir.File(qemuLog))
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	if st, err := f.Stat(); err == nil && st.Size() > 4096 {
		_, _ = f.Seek(-4096, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// WaitExit waits up to d for QEMU to exit.
func (vm *VM) WaitExit(d time.Duration) bool {
	select {
	case <-vm.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// machineFromArgs recovers the machine facts of an adopted VM from QEMU's command line.
func (vm *VM) machineFromArgs(args []string) {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-m":
			vm.MemoryMiB, _ = strconv.Atoi(args[i+1])
		case "-smp":
			vm.CPUs, _ = strconv.Atoi(args[i+1])
		case "-M":
			vm.NamedRAM = strings.Contains(args[i+1], "memory-backend=ram0")
		case "-append":
			if _, extra, ok := strings.Cut(args[i+1], "init=/usr/bin/envd"); ok {
				vm.KernelArgs = strings.Fields(extra)
			}
		}
	}
}
