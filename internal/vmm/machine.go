package vmm

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/cellhq/cell/internal/channel"
)

// Accel is the accelerator QEMU uses.
type Accel string

// The accelerators Cell knows.
const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// ParseAccel parses an --accel value: "auto" (the empty Accel), "kvm" or "tcg".
func ParseAccel(s string) (Accel, error) {
	switch s {
	case "", "auto":
		return "", nil
	case "kvm":
		return AccelKVM, nil
	case "tcg":
		return AccelTCG, nil
	}
	return "", fmt.Errorf("accel: %q is not one of auto, kvm, tcg", s)
}

// Limits on what a VM may ask for.
const (
	MinMemoryMiB = 128
	MaxMemoryMiB = 64 << 10
	MaxCPUs      = 64
	// TCGCacheMiB bounds TCG's translation cache (QEMU's default is 1 GiB per VM).
	TCGCacheMiB = 128
)

// Machine is everything QEMU's command line is made of. Paths must be absolute.
type Machine struct {
	Name       string // shown in the process list, e.g. "cell-<id>"
	Kernel     string
	KernelArgs []string // appended after Cell's own
	Disk       string   // the VM's own qcow2 overlay
	MemoryMiB  int
	CPUs       int
	Accel      Accel
	TSCkHz     int // host TSC frequency, for tsc_early_khz and lpj

	QMPSocket     string
	ConsoleSocket string
	ChannelSocket string
	// NetSocket is where QEMU listens for the host's end of the guest's network device (a
	// stream of length-prefixed Ethernet frames); empty: no network device.
	NetSocket string
	NetMAC    string
	// Sandbox enables QEMU's seccomp sandbox.
	Sandbox bool

	// MemPath backs guest RAM with this file: shared (MAP_SHARED) when MemShared, so that a
	// snapshot leaves RAM in the file; private copy-on-write otherwise, for a clone of it.
	MemPath   string
	MemShared bool
	// MemAnon puts RAM in an anonymous memory backend object named like a file-backed one (the
	// RAM block names of a saved VM and its restore must match; a split save needs the name).
	MemAnon bool
	// Incoming starts QEMU waiting for a migration stream (restore) instead of booting.
	Incoming bool
}

// Validate checks the machine description.
func (m Machine) Validate() error {
	var errs []error
	if m.MemoryMiB < MinMemoryMiB || m.MemoryMiB > MaxMemoryMiB {
		errs = append(errs, fmt.Errorf("memory: %d MiB is outside %d..%d", m.MemoryMiB, MinMemoryMiB, MaxMemoryMiB))
	}
	if m.CPUs < 1 || m.CPUs > MaxCPUs {
		errs = append(errs, fmt.Errorf("cpus: %d is outside 1..%d", m.CPUs, MaxCPUs))
	}
	if m.Accel != AccelKVM && m.Accel != AccelTCG {
		errs = append(errs, fmt.Errorf("accel: %q must be resolved to kvm or tcg", m.Accel))
	}
	paths := map[string]string{"kernel": m.Kernel, "disk": m.Disk, "qmp socket": m.QMPSocket,
		"console socket": m.ConsoleSocket, "channel socket": m.ChannelSocket}
	if m.MemPath != "" {
		paths["memory file"] = m.MemPath
	}
	if m.NetSocket != "" {
		paths["network socket"] = m.NetSocket
		if _, err := net.ParseMAC(m.NetMAC); err != nil {
			errs = append(errs, fmt.Errorf("net mac: %w", err))
		}
	}
	for name, p := range paths {
		if !strings.HasPrefix(p, "/") {
			errs = append(errs, fmt.Errorf("%s: path %q must be absolute", name, p))
		}
		if strings.ContainsAny(p, ",\n") {
			errs = append(errs, fmt.Errorf("%s: path %q must not contain ',' or a newline", name, p))
		}
	}
	for _, a := range m.KernelArgs {
		if strings.ContainsAny(a, " \n\x00") || a == "" {
			errs = append(errs, fmt.Errorf("kernel args: %q must be one non-empty word", a))
		}
	}
	if m.TSCkHz <= 0 {
		errs = append(errs, fmt.Errorf("tsc kHz: %d must be positive", m.TSCkHz))
	}
	return errors.Join(errs...)
}

// DiskOptimalIO is the optimal I/O size the guest's disk advertises. Linux sets a disk's readahead
// to twice it (here 2 MiB instead of 128 KiB), so a cold boot reads envd and the rest in 75
// requests instead of 187: each request costs the guest ~1 ms of emulated kernel and QEMU work
// whatever its size, and a cold boot measured 80-150 ms shorter (bench boot, side by side).
const DiskOptimalIO = 1 << 20

// DiskDiscardGranularity is the discard granularity the guest's disk advertises: the qcow2
// cluster (64 KiB), the smallest unit the overlay can free. QEMU's default, the 512-byte sector,
// let the guest send discards of less than a cluster, which free nothing.
const DiskDiscardGranularity = 64 << 10

// KernelCmdline is the guest kernel command line. The timing options come from measurements on
// TCG (see docs/ARCHITECTURE.md): without tsc_early_khz some boots hang calibrating the TSC,
// without tsc=reliable the guest falls back to jiffies. The local APIC timer stays on, with its
// period given (calibrating it cost ~0.24 s of a cold boot): without it (noapictimer) the guest
// has no one-shot clock events, so no high-resolution timers (every sleep rounds up to 10 ms)
// and no tickless idle (an idle VM took 5.6% of a host core; with it 0.1%).
func (m Machine) KernelCmdline() string {
	args := []string{
		"console=ttyS0", "quiet", "loglevel=4",
		"tsc_early_khz=" + strconv.Itoa(m.TSCkHz), "tsc=reliable", "no_timer_check",
		"lpj=" + strconv.Itoa(m.TSCkHz*10), // loops per jiffy at HZ=100
		// QEMU's local APIC (TCG, and KVM's) counts at 1 GHz: 10^7 ticks per jiffy at HZ=100.
		// Given, the kernel (patched: images/kernel/build.sh) skips ~0.24 s of calibration.
		"lapic_timer_period=10000000",
		"mitigations=off", "nokaslr", "noreplace-smp", "rcupdate.rcu_expedited=1",
		"random.trust_cpu=on",
		// Drivers probe their devices in parallel, on both vCPUs: a cold boot ~10 ms shorter.
		"driver_async_probe=*",
		"panic=-1", "reboot=t", // a panic or reboot ends QEMU (-no-reboot)
		"root=/dev/vda", "rw", "rootfstype=ext4",
		// The root is mounted with online discard: ext4 tells the disk which blocks a deleted
		// file freed once their transaction commits, and QEMU frees the overlay's clusters (and
		// punches them out of the host file). Without it the space of the files a sandbox
		// deleted stayed taken on the host until the sandbox ended: its overlay held the most
		// the guest had ever written, up to its whole size.
		"rootflags=discard",
	}
	if m.Accel == AccelTCG {
		// TCG (QEMU 7.2) finds translated code by its virtual address. With address-space
		// randomisation every new process maps ld.so, libc and its own PIE code elsewhere, and
		// all of it is translated again: `bash -lc true` took 114-143 ms in a running guest, 21-27
		// ms without; `python3 -c pass` 127 -> 81 ms. Inside the guest it protects nothing Cell
		// promises (the VM is the boundary, and the sandbox user has passwordless sudo); a user
		// who wants it back sets the kernel.randomize_va_space sysctl.
		args = append(args, "norandmaps")
		// Nor does the kernel write-protect its own text and read-only data once booted: under
		// TCG the page-table splits and TLB flushes of that step cost ~6 ms of the boot's
		// critical path, right before init (cold boot round medians 7 ms lower in 6 of 6
		// interleaved rounds of n=20). The same reasoning: root in the guest is the sandbox
		// user's anyway.
		args = append(args, "rodata=off")
	}
	// The kernel hands what it does not know to init's environment: envd (PID 1, which serves
	// the host) runs without asynchronous preemption. Under TCG a goroutine easily runs past the
	// Go runtime's 10 ms slice, and each preemption is a signal whose delivery (kernel and
	// runtime paths, cold in every restored clone) costs more than the fairness it buys an
	// I/O-bound server. Commands get an environment of their own, without it.
	args = append(args, "GODEBUG=asyncpreemptoff=1")
	// init= ends Cell's own arguments: an adopted VM's extra ones are read back after it.
	args = append(args, "init=/usr/bin/envd")
	return strings.Join(append(args, m.KernelArgs...), " ")
}

// Args returns QEMU's arguments (without the program name). The VM starts paused (-S): the host
// attaches its console and channel first, then continues it over QMP.
func (m Machine) Args() ([]string, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	args := []string{
		"-name", m.Name,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-S",
		"-M", m.machineOpt(),
	}
	switch m.Accel {
	case AccelKVM:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case AccelTCG:
		args = append(args, "-accel", "tcg,thread=multi,tb-size="+strconv.Itoa(TCGCacheMiB),
			"-cpu", "qemu64,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt")
	}
	if m.Sandbox {
		args = append(args, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
	}
	args = append(args,
		"-m", strconv.Itoa(m.MemoryMiB),
		"-smp", strconv.Itoa(m.CPUs),
		"-kernel", m.Kernel,
		"-append", m.KernelCmdline(),
		"-qmp", "unix:"+m.QMPSocket+",server=on,wait=off",
		"-chardev", "socket,id=con0,path="+m.ConsoleSocket+",server=on,wait=off",
		"-serial", "chardev:con0",
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=ch0,path="+m.ChannelSocket+",server=on,wait=off",
		"-device", "virtserialport,chardev=ch0,name="+channel.PortName,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng0",
		// discard=unmap passes the guest's discards on (qcow2 frees the clusters, and punches
		// holes in the file); detect-zeroes=unmap stores a write of zeroes as zero clusters,
		// which take no space on the host, instead of allocating them.
		"-drive", "file="+m.Disk+",if=none,id=d0,format=qcow2,node-name=n0,cache=unsafe,discard=unmap,detect-zeroes=unmap",
		"-device", "virtio-blk-device,drive=d0,opt_io_size="+strconv.Itoa(DiskOptimalIO)+
			",discard_granularity="+strconv.Itoa(DiskDiscardGranularity),
	)
	if m.NetSocket != "" {
		// QEMU listens; after the host process restarts it dials again and QEMU accepts anew.
		args = append(args,
			"-netdev", "stream,id=net0,server=on,addr.type=unix,addr.path="+m.NetSocket,
			"-device", "virtio-net-device,netdev=net0,mac="+m.NetMAC)
	}
	// The guest reports the memory it frees (free page reporting, a few seconds after), and QEMU
	// drops its copy: a pause or snapshot then saves what the guest holds, not what it once held
	// (a page cache it dropped), and an idle clone gives memory back. A page of a clone's RAM
	// falls back to its snapshot's file, which our QEMU leaves alone (images/qemu/
	// discard-private.patch). Last, so that the other devices keep their transports.
	args = append(args, "-device", "virtio-balloon-device,free-page-reporting=on")
	if m.MemPath != "" {
		share := "off"
		if m.MemShared {
			share = "on"
		}
		args = append(args, "-object", "memory-backend-file,id=ram0,size="+strconv.Itoa(m.MemoryMiB)+"M,mem-path="+m.MemPath+",share="+share)
	} else if m.MemAnon {
		args = append(args, "-object", "memory-backend-ram,id=ram0,size="+strconv.Itoa(m.MemoryMiB)+"M")
	}
	if m.Incoming {
		args = append(args, "-incoming", "defer")
	}
	return args, nil
}

// machineType is QEMU's machine: saved device states name it, and a restore checks it.
const machineType = "microvm"

func (m Machine) machineOpt() string {
	opt := machineType + ",acpi=off,x-option-roms=off"
	if m.MemPath != "" || m.MemAnon {
		opt += ",memory-backend=ram0"
	}
	return opt
}
