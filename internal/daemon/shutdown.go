package daemon

import (
	"fmt"

	"github.com/cellhq/cell/internal/manager"
)

// ShutdownMode is what Shutdown does with the sandboxes still running. Paused ones are kept in
// every mode: they hold no VM, and the next daemon takes them back from the store.
type ShutdownMode int

// The shutdown modes.
const (
	// Kill kills every running sandbox (`cell serve`'s default).
	Kill ShutdownMode = iota
	// Leave lets go of their VMs, which keep running for the next daemon to re-adopt
	// (--leave-running).
	Leave
	// Pause pauses them with their memory, a few at a time; one that fails to pause is killed
	// (--pause-on-shutdown).
	Pause
)

func (m ShutdownMode) String() string {
	switch m {
	case Kill:
		return "kill"
	case Leave:
		return "leave-running"
	case Pause:
		return "pause"
	}
	return fmt.Sprintf("ShutdownMode(%d)", int(m))
}

// ShutdownModeOf is the mode `cell serve`'s flags choose: --leave-running, else
// --pause-on-shutdown, else Kill. Given both, --leave-running wins: leaving VMs running loses
// nothing, and the next daemon can still pause them.
func ShutdownModeOf(leaveRunning, pauseOnShutdown bool) ShutdownMode {
	switch {
	case leaveRunning:
		return Leave
	case pauseOnShutdown:
		return Pause
	}
	return Kill
}

// manager is the manager's mode for m.
func (m ShutdownMode) manager() (manager.ShutdownMode, error) {
	switch m {
	case Kill:
		return manager.Kill, nil
	case Leave:
		return manager.Leave, nil
	case Pause:
		return manager.PauseAll, nil
	}
	return 0, fmt.Errorf("unknown shutdown mode %v", m)
}
