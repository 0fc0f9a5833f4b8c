// Package image owns Cell's guest image pipeline: the kernel (built from Debian's
// linux-source-6.1 with Cell's config fragment), the `base` root file system tree (debootstrap),
// and the bootable qcow2 disk made from that tree with envd as init (`mkfs.ext4 -d`, no mounts, no
// loop devices). Each artifact is cached under the data directory by the hash of its recipe and
// published atomically; a build holds a file lock so that concurrent callers build once.
package image
