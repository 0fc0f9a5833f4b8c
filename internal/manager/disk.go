package manager

import (
	"fmt"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/vmm"
)

// templateDiskMiB is the disk of template's sandboxes at the least: its file system's size.
func (m *Manager) templateDiskMiB(template string) int {
	floor := sandbox.DefaultDiskMiB
	if t := m.cfg.Templates.Template(template); t != nil {
		floor = max(floor, int(t.DiskBytes/vmm.MiB))
	}
	return floor
}

// diskMiB is the disk size of template's sandboxes whose create gives none: the daemon's
// default, or the template's disk when that is larger.
func (m *Manager) diskMiB(template string) int {
	def := m.cfg.DiskMiB
	if def == 0 {
		def = sandbox.DefaultDiskMiB
	}
	return max(def, m.templateDiskMiB(template))
}

// admitDisk resolves a create's disk size (asked; 0: the default) and checks that the host's disk
// can take it: a sandbox may write its whole disk.
func (m *Manager) admitDisk(template string, asked int) (int, error) {
	size := asked
	if size == 0 {
		size = m.diskMiB(template)
	}
	if floor := m.templateDiskMiB(template); size < floor || size > sandbox.MaxDiskMiB {
		return 0, fmt.Errorf("%w: diskSizeMB: %d is outside %d..%d (a sandbox's file system starts as its template's, %d MiB, and can only grow)",
			ErrInvalid, size, floor, sandbox.MaxDiskMiB, floor)
	}
	if err := m.cfg.Disk.Admit(uint64(size)*vmm.MiB, "a sandbox disk"); err != nil {
		return 0, err
	}
	return size, nil
}
