package vmm

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cellhq/cell/internal/ids"
)

// ReapOrphans kills the QEMU processes running a VM of runDir and removes the VM directories
// there (and the ones moved aside) that no live VM owns. live says which ids are the caller's own
// VMs; a VM another live process claims (a `cell run`, a daemon sharing the run directory) is no
// orphan either. Entries of runDir that are not VM directories are left alone.
func ReapOrphans(runDir string, live func(id string) bool, log *slog.Logger) {
	for _, o := range findQEMUs(runDir) {
		if !live(o.id) && !Claimed(filepath.Join(runDir, o.id)) {
			log.Warn("killing orphan qemu", "sandbox", o.id, "pid", o.pid)
			if p, err := os.FindProcess(o.pid); err == nil {
				_ = p.Kill()
			}
		}
	}
	des, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, de := range des {
		orphan := !live(de.Name()) && ids.Validate("sandboxID", de.Name()) == nil
		if de.IsDir() && (orphan || IsGoneDir(de.Name())) && !Claimed(filepath.Join(runDir, de.Name())) {
			log.Warn("removing orphan VM directory", "dir", de.Name())
			_ = os.RemoveAll(filepath.Join(runDir, de.Name()))
		}
	}
}

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
