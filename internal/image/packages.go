package image

import "os/exec"

// Debian packages each stage needs.
func kernelPackages() []string {
	return []string{"linux-source-6.1", "make", "gcc", "flex", "bison", "bc", "libelf-dev", "xz-utils"}
}
func qemuPackages() []string {
	return []string{"qemu-system-x86", "dpkg-dev", "patch", "gcc", "g++", "ninja-build", "meson", "pkg-config",
		"python3", "libglib2.0-dev", "libpixman-1-dev", "libfdt-dev", "libseccomp-dev", "zlib1g-dev"}
}
func rootfsPackages() []string { return []string{"debootstrap", "curl"} }
func diskPackages() []string   { return []string{"e2fsprogs", "qemu-utils"} }

// missingPackages returns the packages of want that dpkg does not report as installed.
func missingPackages(want []string) []string {
	var missing []string
	for _, p := range want {
		out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || string(out) != "install ok installed" {
			missing = append(missing, p)
		}
	}
	return missing
}
