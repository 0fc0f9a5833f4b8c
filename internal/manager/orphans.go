package manager

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

type qemuProc struct {
	pid int
	id  string
}

// findQEMUs lists QEMU processes whose command line names a VM directory under runDir.
func findQEMUs(runDir string) []qemuProc {
	des, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []qemuProc
	marker := []byte(runDir + "/")
	for _, de := range des {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + de.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, marker) {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-name" && strings.HasPrefix(args[i+1], "cell-") {
				out = append(out, qemuProc{pid: pid, id: strings.TrimPrefix(args[i+1], "cell-")})
			}
		}
	}
	return out
}

// removeIfEmpty removes dir if nothing (but a lock file) is left in it.
func removeIfEmpty(dir string) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range des {
		if de.Name() != ".lock" {
			return nil
		}
	}
	return os.RemoveAll(dir)
}
