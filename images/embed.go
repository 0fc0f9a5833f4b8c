// Package images holds the recipes of Cell's guest image, embedded into the cell binary: the
// kernel config fragment and build script, the root file system build script, and the build
// script, device list and patches of Cell's QEMU.
package images

import "embed"

// Recipes holds kernel/, rootfs/ and qemu/.
//
//go:embed kernel/fragment.config kernel/build.sh rootfs/build.sh qemu/build.sh qemu/devices.mak qemu/acpi-stub.patch qemu/tcg-ss32.patch qemu/discard-private.patch
var Recipes embed.FS
