package initd

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReaperReapsOrphansNotOwnChildren: as PID 1 does, the test process takes the orphans of its
// children (a subreaper). Reap, called over and over meanwhile, reaps an orphan and leaves the
// children started through the Reaper to their own Wait, which sees their exit status.
func TestReaperReapsOrphansNotOwnChildren(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("becoming a subreaper: %v", err)
	}
	defer func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) }()
	r := NewReaper()
	stop := make(chan struct{})
	var reaping sync.WaitGroup
	reaping.Add(1)
	go func() { // the SIGCHLD loop's part, as often as can be
		defer reaping.Done()
		for {
			select {
			case <-stop:
				return
			default:
				r.Reap()
			}
		}
	}()
	defer func() { close(stop); reaping.Wait() }()

	for i := 0; i < 20; i++ {
		// An own child that exits at once with 3, and leaves an orphan (its background sleep),
		// which the kernel hands to this process when the child exits.
		cmd := exec.Command("/bin/sh", "-c", "sleep 0.05 & echo $!; exit 3")
		var out strings.Builder
		cmd.Stdout = &out
		if err := r.Start(func() (int, error) {
			if err := cmd.Start(); err != nil {
				return 0, err
			}
			return cmd.Process.Pid, nil
		}); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		r.Release(cmd.Process.Pid)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("round %d: the own child's Wait: %v, want exit status 3 (a reaper took it?)", i, err)
		}
		orphan, err := strconv.Atoi(strings.TrimSpace(out.String()))
		if err != nil {
			t.Fatalf("round %d: orphan pid %q", i, out.String())
		}
		deadline := time.Now().Add(5 * time.Second)
		for unix.Kill(orphan, 0) == nil { // a zombie still answers kill(pid, 0)
			if time.Now().After(deadline) {
				t.Fatalf("round %d: orphan %d was not reaped", i, orphan)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestReaperWaitsForAnOwnExitedChild: Reap does not take an own child that has exited, and says
// to look again; once its owner has waited, there is nothing left.
func TestReaperWaitsForAnOwnExitedChild(t *testing.T) {
	r := NewReaper()
	cmd := exec.Command("/bin/true")
	if err := r.Start(func() (int, error) { err := cmd.Start(); return cmd.Process.Pid, err }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !r.Reap() {
		if time.Now().After(deadline) {
			t.Fatal("Reap never reported the own child that exited")
		}
		time.Sleep(time.Millisecond)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the own child's Wait after Reap: %v", err)
	}
	r.Release(cmd.Process.Pid)
	if r.Reap() {
		t.Fatal("Reap still waits after the owner has waited")
	}
}
