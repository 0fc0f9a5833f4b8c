package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
	"slices"
	"strings"
	"testing"
)

func testMachine() Machine {
	return Machine{
		Name: "cell-abc", Kernel: "/k/vmlinux", Disk: "/r/abc/disk.qcow2", MemoryMiB: 512, CPUs: 2,
		Accel: AccelTCG, TSCkHz: 2596132, QMPSocket: "/r/abc/qmp", ConsoleSocket: "/r/abc/con",
		ChannelSocket: "/r/abc/ch", Sandbox: true,
	}
}

func argAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgsTCG(t *testing.T) {
	args, err := testMachine().Args()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-nodefaults", "-no-user-config", "-no-reboot", "-S"} {
		if !slices.Contains(args, want) {
			t.Errorf("missing %s in %v", want, args)
		}
	}
	if got := argAfter(args, "-accel"); len(got) != 1 || !strings.HasPrefix(got[0], "tcg,thread=multi,tb-size=") {
		t.Errorf("-accel = %v", got)
	}
	if got := argAfter(args, "-M"); len(got) != 1 || !strings.Contains(got[0], "microvm") || !strings.Contains(got[0], "acpi=off") {
		t.Errorf("-M = %v", got)
	}
	if got := argAfter(args, "-sandbox"); len(got) != 1 || got[0] != "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" {
		t.Errorf("-sandbox = %v", got)
	}
	if got := argAfter(args, "-m"); len(got) != 1 || got[0] != "512" {
		t.Errorf("-m = %v", got)
	}
	if got := argAfter(args, "-netdev"); len(got) != 0 {
		t.Errorf("no network device expected, got %v", got)
	}
	app := argAfter(args, "-append")[0]
	for _, want := range []string{"tsc_early_khz=2596132", "lpj=25961320", "init=/usr/bin/envd", "root=/dev/vda", "panic=-1", "norandmaps", "rodata=off"} {
		if !strings.Contains(app, want) {
			t.Errorf("cmdline lacks %s: %s", want, app)
		}
	}
	if !slices.Contains(argAfter(args, "-device"), "virtserialport,chardev=ch0,name=ctl") {
		t.Errorf("no channel port in %v", args)
	}
}

func TestArgsKVM(t *testing.T) {
	m := testMachine()
	m.Accel = AccelKVM
	m.Sandbox = false
	args, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	if got := argAfter(args, "-accel"); len(got) != 1 || got[0] != "kvm" {
		t.Errorf("-accel = %v", got)
	}
	if got := argAfter(args, "-cpu"); len(got) != 1 || got[0] != "host" {
		t.Errorf("-cpu = %v", got)
	}
	if slices.Contains(args, "-sandbox") {
		t.Error("sandbox disabled but present")
	}
	// Address-space randomisation and the kernel's read-only text are turned off only under TCG.
	if app := argAfter(args, "-append")[0]; strings.Contains(app, "norandmaps") || strings.Contains(app, "rodata=off") {
		t.Errorf("KVM guest without ASLR or a read-only kernel text: %s", app)
	}
}

func TestValidate(t *testing.T) {
	cases := map[string]func(*Machine){
		"memory":      func(m *Machine) { m.MemoryMiB = 16 },
		"cpus":        func(m *Machine) { m.CPUs = 0 },
		"accel":       func(m *Machine) { m.Accel = "" },
		"kernel":      func(m *Machine) { m.Kernel = "relative/vmlinux" },
		"disk":        func(m *Machine) { m.Disk = "/a,b" },
		"kernel args": func(m *Machine) { m.KernelArgs = []string{"a b"} },
		"tsc kHz":     func(m *Machine) { m.TSCkHz = 0 },
	}
	for field, mutate := range cases {
		m := testMachine()
		mutate(&m)
		_, err := m.Args()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: err = %v, want one naming the field", field, err)
		}
	}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": "", "auto": "", "kvm": AccelKVM, "tcg": AccelTCG} {
		got, err := ParseAccel(in)
		if err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseAccel("hvf"); err == nil {
		t.Error("ParseAccel(hvf) accepted")
	}
}

// An adopted VM's facts are read back from QEMU's command line: its extra kernel arguments must
// come back exactly, without any of Cell's own (a pause would store them, and each later restore
// would add Cell's again).
func TestMachineFromArgsRoundTrip(t *testing.T) {
	for _, accel := range []Accel{AccelTCG, AccelKVM} {
		m := testMachine()
		m.Accel = accel
		m.KernelArgs = []string{"cell.hostname=abc", "cell.net=192.168.127.2/24,192.168.127.1,65520"}
		args, err := m.Args()
		if err != nil {
			t.Fatal(err)
		}
		var vm VM
		vm.machineFromArgs(args)
		if !slices.Equal(vm.KernelArgs, m.KernelArgs) || vm.MemoryMiB != m.MemoryMiB || vm.CPUs != m.CPUs {
			t.Errorf("%s: read back %v, %d MiB, %d CPUs; want %v", accel, vm.KernelArgs, vm.MemoryMiB, vm.CPUs, m.KernelArgs)
		}
	}
}

// The stand-in kernel of a restore is an ELF QEMU's PVH loader takes: a Xen PHYS32_ENTRY note
// naming an address that a loadable segment holds.
func TestStubKernel(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(stubKernel()))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC || f.Entry != stubKernelEntry {
		t.Fatalf("header: %v %v %v %#x", f.Class, f.Machine, f.Type, f.Entry)
	}
	var entry uint64
	loaded := false
	for _, p := range f.Progs {
		b, err := io.ReadAll(p.Open())
		if err != nil {
			t.Fatal(err)
		}
		switch p.Type {
		case elf.PT_NOTE:
			if len(b) != 24 || binary.LittleEndian.Uint32(b[8:]) != 18 || string(b[12:16]) != "Xen\x00" {
				t.Fatalf("note %x", b)
			}
			entry = binary.LittleEndian.Uint64(b[16:])
		case elf.PT_LOAD:
			loaded = p.Paddr <= stubKernelEntry && stubKernelEntry < p.Paddr+p.Filesz && len(b) == int(p.Filesz)
		}
	}
	if entry != stubKernelEntry || !loaded {
		t.Fatalf("PVH entry %#x, loaded %v", entry, loaded)
	}
}
