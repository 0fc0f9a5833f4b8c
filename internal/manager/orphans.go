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

// findQEMUs lists QEMU processes whose command line names their own VM directory under runDir
// (runDir/<id>/, where -name is cell-<id>), as a whole path: /srv/home/run/ is not /home/run/.
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
				id := strings.TrimPrefix(args[i+1], "cell-")
				if namesDir(args, runDir+"/"+id+"/") {
					out = append(out, qemuProc{pid: pid, id: id})
				}
			}
		}
	}
	return out
}

// namesDir reports whether one of args holds a path starting with dir, where a path starts an
// argument or follows '=', ':' or ',' (QEMU's option syntax: path=…, unix:…).
func namesDir(args []string, dir string) bool {
	for _, a := range args {
		for i := strings.Index(a, dir); i >= 0; {
			if i == 0 || strings.ContainsRune("=:,", rune(a[i-1])) {
				return true
			}
			j := strings.Index(a[i+1:], dir)
			if j < 0 {
				break
			}
			i += 1 + j
		}
	}
	return false
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
