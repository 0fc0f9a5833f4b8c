package manager

import (
	"errors"
	"fmt"

	"github.com/cellhq/cell/internal/store"
)

// state is where a sandbox is in its life in this process. It is finer than the state its
// record keeps (store.State*): a record says running while the VM is being saved, and paused
// while it is being started again, because that is what a crash in between leaves (see Recover).
type state uint8

const (
	creating state = iota // its VM boots (or a pooled one is handed its settings)
	running               // its VM runs; its timeout is armed
	pausing               // its VM is being saved: its exit is not a death, its timer is stopped
	paused                // saved under the data directory's paused/; no VM, no timeout
	resuming              // a VM is being started from its saved state
	killed                // final: killed by request, by its VM's death or at shutdown
	expired               // final: its timeout passed
	failed                // final: it could not start, be recorded or be paused
	left                  // let go of at shutdown, running, for the next daemon to adopt
)

var stateNames = [...]string{"creating", "running", "pausing", "paused", "resuming", "killed", "expired", "failed", "left"}

func (s state) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// transitions are the moves a sandbox's life may make; nothing leaves a final state. Only a
// running sandbox expires: a timer that fired just as a pause began (or finished) finds the
// sandbox pausing (or paused) when it ends it, and lets it be: an acknowledged pause never
// expires.
var transitions = map[state][]state{
	creating: {running, killed, failed, left},
	// paused: only back from a resume that could not be recorded (it stays paused).
	running:  {pausing, killed, expired, failed, left, paused},
	pausing:  {running, paused, killed, failed, left}, // running: the pause was undone
	paused:   {resuming, killed},
	resuming: {running, paused, killed}, // paused: the VM did not start
}

// gone reports whether the sandbox is over for this process: ended, or let go of.
func (s state) gone() bool { return len(transitions[s]) == 0 }

// record is the state a sandbox's record keeps in s ("": the one it had).
func (s state) record() string {
	switch s {
	case creating:
		return store.StateCreating
	case running:
		return store.StateRunning
	case paused:
		return store.StatePaused
	case killed:
		return store.StateKilled
	case expired:
		return store.StateExpired
	case failed:
		return store.StateFailed
	}
	return "" // pausing, resuming, left: what a crash now would leave
}

var errTransition = errors.New("sandbox state transition not allowed")

// to moves b to next if transitions allow it, and its record's state with it. b.mu must be held.
func (b *box) to(next state) error {
	for _, s := range transitions[b.state] {
		if s == next {
			b.state = next
			if r := next.record(); r != "" {
				b.rec.State = r
			}
			return nil
		}
	}
	return fmt.Errorf("%w: sandbox %s: %s to %s", errTransition, b.rec.ID, b.state, next)
}
