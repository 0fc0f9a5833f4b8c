package vmm

import (
	"bytes"
	"encoding/binary"
)

// stubKernelFile is the stand-in kernel a restore starts QEMU with, in the VM's directory.
const stubKernelFile = "restore-kernel"

// stubKernelEntry is where the stub says it starts (1 MiB); it is never run.
const stubKernelEntry = 0x100000

// stubKernel returns a minimal PVH ELF: one loadable byte (hlt) at stubKernelEntry and the Xen
// PHYS32_ENTRY note QEMU's loader looks for.
//
// A restored guest's memory, kernel included, comes from its snapshot; QEMU still loads whatever
// -kernel names at start-up (its segments read into memory it then never writes to the guest
// while a migration is incoming). For the real 17 MB vmlinux that cost ~4 ms of every restore
// and ~3 MiB of QEMU's RSS. A snapshot stays bound to its real kernel through its fingerprint.
func stubKernel() []byte {
	const (
		ehSize   = 64
		phSize   = 56
		phNum    = 2
		noteOff  = ehSize + phNum*phSize
		noteSize = 12 + 4 + 8 // header, "Xen\0", 64-bit entry
		codeOff  = noteOff + noteSize
	)
	le := binary.LittleEndian
	var b bytes.Buffer
	w := func(v any) { _ = binary.Write(&b, le, v) }
	// ELF header: 64-bit, little-endian, executable, x86-64.
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	w(uint16(2))               // e_type: ET_EXEC
	w(uint16(62))              // e_machine: EM_X86_64
	w(uint32(1))               // e_version
	w(uint64(stubKernelEntry)) // e_entry
	w(uint64(ehSize))          // e_phoff
	w(uint64(0))               // e_shoff
	w(uint32(0))               // e_flags
	w(uint16(ehSize))          // e_ehsize
	w(uint16(phSize))          // e_phentsize
	w(uint16(phNum))           // e_phnum
	w(uint16(0))               // e_shentsize
	w(uint16(0))               // e_shnum
	w(uint16(0))               // e_shstrndx
	phdr := func(typ, flags uint32, off, addr, size, align uint64) {
		w(typ)
		w(flags)
		w(off)
		w(addr)  // p_vaddr
		w(addr)  // p_paddr
		w(size)  // p_filesz
		w(size)  // p_memsz
		w(align) // p_align
	}
	phdr(1, 5, codeOff, stubKernelEntry, 1, 1) // PT_LOAD, R+X: the hlt
	phdr(4, 4, noteOff, 0, noteSize, 4)        // PT_NOTE, R
	// The note: namesz, descsz, type XEN_ELFNOTE_PHYS32_ENTRY (18), "Xen", the entry address.
	w(uint32(4))
	w(uint32(8))
	w(uint32(18))
	b.WriteString("Xen\x00")
	w(uint64(stubKernelEntry))
	b.WriteByte(0xf4) // hlt
	return b.Bytes()
}
