// Package images holds the recipes of Cell's guest image, embedded into the cell binary: the
// kernel config fragment and build script, and the root file system build script.
package images

import "embed"

// Recipes holds kernel/ and rootfs/.
//
//go:embed kernel/fragment.config kernel/build.sh rootfs/build.sh
var Recipes embed.FS
