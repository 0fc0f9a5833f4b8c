#!/usr/bin/env bash
# Builds Cell's guest kernel (a PVH vmlinux) from Debian's linux-source-6.1.
# Usage: build.sh FRAGMENT OUT_VMLINUX WORKDIR
# Called by `cell image build`, which caches the result by the hash of this recipe.
set -euo pipefail
fragment=$1 out=$2 work=$3
src_tar=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -n1)
[ -n "$src_tar" ] || { echo "missing /usr/src/linux-source-6.1.tar.xz: apt-get install linux-source-6.1" >&2; exit 3; }
mkdir -p "$work"
echo "step: extracting $(basename "$src_tar")"
tar -xf "$src_tar" -C "$work"
cd "$work"/linux-source-6.1
# One source change: the init memory is kept (made non-executable) instead of freed. Under TCG,
# freed init pages were the first the guest reused, for envd's memory and page cache, and a write
# to a page holding translated code invalidates its translations one by one, each invalidation
# flushing every vCPU's jump cache: ~11,000 flushes while envd started (~300 with the memory kept).
# It costs 692 KiB of guest RAM; a cold boot is ~30 ms shorter. (It also makes moot an earlier
# change: freeing, x86 filled the init code's pages with a poison byte, writes that took QEMU's
# slow path and cost ~0.2 s of every boot. The image's gaps, freed only with rodata on, hold no
# code.)
echo "step: patching (init memory kept)"
perl -0pi -e 's/\tfree_kernel_image_pages\("unused kernel image \(initmem\)",\n\t+&__init_begin, &__init_end\);\n/\t\/* cell: init memory is kept, not executable (see images\/kernel\/build.sh). *\/\n\tset_memory_nx((unsigned long)__init_begin, (__init_end - __init_begin) >> PAGE_SHIFT);\n/' arch/x86/mm/init.c
grep -q 'cell: init memory is kept' arch/x86/mm/init.c || { echo "patch did not apply to arch/x86/mm/init.c (free_initmem)" >&2; exit 6; }
# A second: the boot parameter lapic_timer_period= (the APIC timer's ticks per jiffy) skips the
# APIC timer's calibration and verification against the PIT, ~0.24 s of every cold boot under
# TCG; the kernel has the variable (platform code sets it) but no parameter for it.
echo "step: patching (lapic_timer_period= boot parameter)"
cat >> arch/x86/kernel/apic/apic.c <<'PATCH'

/* cell: the APIC timer period is known to the VMM; no calibration against the PIT. */
static int __init cell_lapic_timer_period(char *arg)
{
	return kstrtouint(arg, 0, &lapic_timer_period);
}
early_param("lapic_timer_period", cell_lapic_timer_period);
PATCH
# A third: SSE is on (CR4.OSFXSR and OSXMMEXCPT) from head_64.S's first CR4 write on each CPU, not
# from the FPU's set-up later: QEMU keys its translations on those bits, so every function that
# ran before the FPU's set-up was translated again after it (~3,400 translation blocks a boot).
# x86-64 CPUs all have SSE; the FPU's set-up sets the same bits again.
echo "step: patching (SSE on from the first CR4 write)"
sed -i 's/^\torl\t\$(X86_CR4_PAE | X86_CR4_PGE), %ecx$/\torl\t$(X86_CR4_PAE | X86_CR4_PGE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT), %ecx \/* cell: SSE on from here *\//' arch/x86/kernel/head_64.S
grep -q 'cell: SSE on from here' arch/x86/kernel/head_64.S || { echo "patch did not apply to arch/x86/kernel/head_64.S" >&2; exit 6; }
echo "step: configuring (tinyconfig + fragment)"
make -s tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig >/dev/null
# Fail loudly if an option we rely on was dropped by Kconfig dependencies.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=y) ;; *) continue ;; esac
  grep -qx "$line" .config || { echo "kernel config lacks $line after olddefconfig" >&2; missing=1; }
done < "$fragment"
[ "$missing" = 0 ] || exit 4
echo "step: compiling vmlinux with $(nproc) jobs"
make -s -j"$(nproc)" vmlinux KBUILD_BUILD_TIMESTAMP="2024-01-01 00:00:00 UTC" KBUILD_BUILD_USER=cell KBUILD_BUILD_HOST=cell
# QEMU loads a vmlinux's symbol table and sorts it (for its disassembler) at every start: without
# it, a cold boot's QEMU answers QMP in ~11 ms instead of ~15. The symbols stay in System.map.
objcopy --strip-all vmlinux "$out.tmp"
cp System.map "$out.map"
cp .config "$out.config"
mv "$out.tmp" "$out"
echo "step: done"
