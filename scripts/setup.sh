#!/usr/bin/env bash
# Installs the Debian packages Cell needs to build and run sandboxes, skipping those present.
set -euo pipefail
packages=(
  qemu-system-x86 qemu-utils            # Debian's QEMU (its source and firmware) and the disk tool
  dpkg-dev patch g++ ninja-build meson pkg-config python3 libglib2.0-dev libpixman-1-dev libfdt-dev libseccomp-dev zlib1g-dev  # Cell's static QEMU
  debootstrap e2fsprogs curl            # guest root file system (curl: npm's tarball for it)
  linux-source-6.1 make gcc flex bison bc libelf-dev xz-utils cpio  # guest kernel
  ca-certificates
  iproute2                              # `ip`: the network tests make their own test hosts (netns + veth)
  bubblewrap                            # `cell bench compare`: a process sandbox on the host, the floor
)
# The E2B SDK test suite needs Node.js 20+ and npm; Debian's nodejs is used only when none is there.
command -v node >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
