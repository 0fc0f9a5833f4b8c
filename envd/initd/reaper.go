package initd

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reaper reaps the orphans the kernel hands PID 1, and leaves alone the children envd started
// itself and waits for (os/exec's Wait finds its child gone if another wait took it first).
type Reaper struct {
	// starting is read-held while a child is forked and recorded: Reap, which holds it whole,
	// never sees a child of envd's before it is known as one.
	starting sync.RWMutex
	mu       sync.Mutex
	own      map[int]struct{}
}

// NewReaper returns a Reaper that knows no children yet.
func NewReaper() *Reaper { return &Reaper{own: map[int]struct{}{}} }

// Start runs start, which forks a child and returns its pid, and keeps Reap away from that
// child until Release.
func (r *Reaper) Start(start func() (pid int, err error)) error {
	r.starting.RLock()
	defer r.starting.RUnlock()
	pid, err := start()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.own[pid] = struct{}{}
	r.mu.Unlock()
	return nil
}

// Release says that pid, started through Start, has been waited for.
func (r *Reaper) Release(pid int) {
	r.mu.Lock()
	delete(r.own, pid)
	r.mu.Unlock()
}

// Reap reaps the exited children that are not envd's own. It returns true when it stopped at
// one of envd's own that has exited and not yet been waited for (the kernel shows the exited
// children one at a time): the caller tries again a little later.
func (r *Reaper) Reap() (again bool) {
	r.starting.Lock()
	defer r.starting.Unlock()
	for {
		// WNOWAIT: look at the next exited child without reaping it.
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
			return false // ECHILD: no children at all
		}
		pid := siginfoPid(&info)
		if pid <= 0 {
			return false // none has exited
		}
		r.mu.Lock()
		_, own := r.own[pid]
		r.mu.Unlock()
		if own {
			return true
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != nil {
			return false
		}
	}
}

// siginfoPid is si_pid of a SIGCHLD siginfo: the first field of the union after the three ints
// (and the padding that aligns the union to 8 bytes on 64-bit Linux), which x/sys/unix leaves
// unnamed.
func siginfoPid(info *unix.Siginfo) int {
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(info), 16)))
}
