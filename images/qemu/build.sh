#!/usr/bin/env bash
# Builds Cell's QEMU: Debian's own QEMU source, at the version of the installed qemu-system-x86
# package (Debian's patches applied), configured for one machine (microvm with virtio-mmio) and
# linked statically. Debian's dynamically linked build loads 51 shared libraries at each start,
# and under the page-fault costs of these hosts that is ~15 ms of every sandbox's create, resume
# and fork; this one starts in ~2 ms.
# Usage: build.sh DEVICES_MAK OUT WORKDIR PATCH...
# Called by `cell image build`, which caches the result by the hash of this recipe and of the
# installed qemu-system-x86.
set -euo pipefail
devices=$1 out=$2 work=$3
shift 3
version=$(dpkg-query -W -f='${source:Version}' qemu-system-x86 2>/dev/null) || {
  echo "qemu-system-x86 is not installed: apt-get install qemu-system-x86" >&2; exit 3; }
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mkdir -p "$work"/apt/lists/partial "$work"/apt/cache/archives/partial "$work"/src
# A private apt configuration for the source index: the host's apt setup is left alone, and apt
# checks the index against Debian's signed release files as usual.
cat > "$work"/apt/sources.list <<SOURCES
deb-src http://deb.debian.org/debian $suite main
deb-src http://deb.debian.org/debian $suite-updates main
deb-src http://deb.debian.org/debian-security $suite-security main
SOURCES
apt_opts=(-o Dir::Etc::SourceList="$work"/apt/sources.list -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$work"/apt/lists -o Dir::Cache="$work"/apt/cache -o APT::Sandbox::User=root -q)
echo "step: fetching the source index"
apt-get "${apt_opts[@]}" update >/dev/null
echo "step: fetching and unpacking Debian's qemu $version source"
(cd "$work"/src && apt-get "${apt_opts[@]}" source --only-source "qemu=$version" >/dev/null)
srcdir=$(find "$work"/src -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n1)
[ -n "$srcdir" ] || { echo "apt-get source left no qemu-* directory" >&2; exit 5; }
cd "$srcdir"
# The patches: acpi-stub.patch, because QEMU 7.2 defines pc_madt_cpu_entry twice when built
# without its default devices (fixed in 8.0); tcg-ss32.patch, so that TCG translates 64-bit code
# once whatever SS is (see the patch); discard-private.patch, so that a guest's discarded memory
# (free page reporting) never punches holes in a memory snapshot's file that other VMs map.
for patchfile in "$@"; do
  echo "step: patching ($(basename "$patchfile"))"
  patch -p1 --forward --quiet < "$patchfile"
done
cp "$devices" configs/devices/x86_64-softmmu/cell.mak
echo "step: configuring (x86_64, microvm only, static)"
mkdir -p build && cd build
../configure --target-list=x86_64-softmmu --static \
  --without-default-features --without-default-devices --with-devices-x86_64=cell \
  --enable-tcg --enable-kvm --enable-seccomp --enable-fdt=system \
  --firmwarepath=/usr/share/qemu --disable-docs --disable-werror >/dev/null
echo "step: compiling with $(nproc) jobs"
ninja -j"$(nproc)" qemu-system-x86_64 >/dev/null
./qemu-system-x86_64 --version >/dev/null
cp qemu-system-x86_64 "$out.tmp"
echo "$version" > "$out.version"
mv "$out.tmp" "$out"
echo "step: done"
