package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/pkg/envd"
)

// TestPauseFailureIsUndone: a pause that runs out of time at any step (its deadline set ever
// later, to land in the sync, the stop, the save of 150 MB of RAM, the disk's handover) is
// undone: the VM runs on with its memory and disk, nothing is left in the paused directory, and
// a later pause and resume work.
func TestPauseFailureIsUndone(t *testing.T) {
	rt := newRuntime(t, runDir(t), nil)
	ctx := context.Background()
	sb, err := rt.Boot(ctx, sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sb.Close() }()
	mustRun(t, sb, "echo m > /tmp/mem; echo d > /home/user/disk; sync; "+
		"head -c 150000000 /dev/urandom > /dev/shm/fill; sha256sum < /dev/shm/fill > /tmp/fill.sum")
	check := func(when string) {
		t.Helper()
		out := mustRun(t, sb, "cat /tmp/mem /home/user/disk; sha256sum < /dev/shm/fill | cmp - /tmp/fill.sum && echo same")
		if out != "m\nd\nsame\n" {
			t.Fatalf("%s: the sandbox lost its state: %q", when, out)
		}
	}
	dir := filepath.Join(t.TempDir(), "paused", sb.ID)
	var undone, inSave int
	for _, d := range []time.Duration{time.Millisecond, 30 * time.Millisecond, 100 * time.Millisecond,
		200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond} {
		pctx, cancel := context.WithTimeout(ctx, d)
		t0 := time.Now()
		_, err := sb.Pause(pctx, dir, true)
		cancel()
		if err == nil {
			t.Logf("deadline %v: the pause finished in %v", d, time.Since(t0))
			break
		}
		if !errors.Is(err, sandbox.ErrPauseUndone) {
			t.Fatalf("deadline %v: %v, want an undone pause", d, err)
		}
		undone++
		if strings.Contains(err.Error(), "saving the VM") {
			inSave++
		}
		t.Logf("deadline %v: undone after %v: %v", d, time.Since(t0), err)
		if _, err := os.Stat(sb.VM.File("disk.qcow2")); err != nil {
			t.Fatalf("deadline %v: the VM has no disk after the undone pause: %v", d, err)
		}
		if des, _ := os.ReadDir(dir); len(des) != 0 {
			t.Fatalf("deadline %v: left in the paused directory: %v", d, des)
		}
		check("after an undone pause")
	}
	if undone == 0 || inSave == 0 {
		t.Fatalf("%d pauses undone, %d of them while saving: nothing tested", undone, inSave)
	}
	// Undone pauses leave nothing behind that stops a real one.
	if _, _, err := sandbox.CurrentPaused(dir); err != nil {
		if _, err := sb.Pause(ctx, dir, true); err != nil {
			t.Fatalf("pause after undone ones: %v", err)
		}
	}
	token := ""
	sb2, err := rt.Resume(ctx, dir, envd.InitRequest{AccessToken: &token}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	sb = sb2
	check("after the resume")
}

// TestAdoptAndPauseASilentGuest: a VM whose guest does not answer the restarted daemon (its
// channel is held by another client, so envd cannot hear it) is adopted at once and not killed;
// its pause does not wait for the guest's flush longer than SyncTimeout; resumed, with the
// channel free again, it has its memory and disk.
func TestAdoptAndPauseASilentGuest(t *testing.T) {
	rd := runDir(t)
	detached := func(c *sandbox.RuntimeConfig) { c.Detached, c.DieWithParent = true, false }
	rt1 := newRuntime(t, rd, detached)
	ctx := context.Background()
	sb, err := rt1.Boot(ctx, sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, pid, ticks := sb.ID, sb.VM.PID, sb.VM.StartTicks
	killIfOurs(t, id, pid, ticks)
	mustRun(t, sb, "echo m > /tmp/mem; echo d > /home/user/disk; sync")
	sb.Detach()
	// QEMU serves one client on the channel's socket: this one, which says nothing.
	blocker, err := net.Dial("unix", filepath.Join(rd, id, "ch.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Close() }()

	rt2 := newRuntime(t, rd, detached)
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	t0 := time.Now()
	sb2, err := rt2.Adopt(actx, id, pid, ticks, nil)
	cancel()
	if err != nil {
		t.Fatalf("adopting a VM whose guest does not answer: %v", err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("adoption waited %v for the guest", took)
	}
	if _, err := sbRun(sb2, time.Second, "true"); err == nil {
		t.Fatal("a command ran in a guest the host cannot reach: the test's premise is wrong")
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("the adopted VM's QEMU is gone")
	}

	dir := filepath.Join(t.TempDir(), "paused", id)
	t0 = time.Now()
	if _, err := sb2.Pause(ctx, dir, true); err != nil {
		t.Fatalf("pausing a silent guest: %v", err)
	}
	took := time.Since(t0)
	t.Logf("paused in %v", took)
	if took < sandbox.SyncTimeout || took > sandbox.SyncTimeout+30*time.Second {
		t.Fatalf("the pause took %v: want the sync's %v and the save", took, sandbox.SyncTimeout)
	}
	_ = blocker.Close()
	token := ""
	sb3, err := rt2.Resume(ctx, dir, envd.InitRequest{AccessToken: &token}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sb3.Close() }()
	if out := mustRun(t, sb3, "cat /tmp/mem /home/user/disk"); out != "m\nd\n" {
		t.Fatalf("after the resume: %q", out)
	}
}

// TestServePauseFailureKeepsSandbox: a pause that fails (the daemon may write no file over 16
// MiB, as when its disk is full: the memory file cannot be made) answers an error, and the
// sandbox runs on as it was, paused fine once the daemon can write again.
func TestServePauseFailureKeepsSandbox(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	id := createSandbox(t, c, 10*time.Minute)
	execOut(t, c, id, "echo m > /tmp/mem; echo d > /home/user/disk; sync")
	pid := s.cmd.Process.Pid
	var old unix.Rlimit
	limit := unix.Rlimit{Cur: 16 << 20, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &limit, &old); err != nil {
		t.Fatal(err)
	}
	err := c.Pause(ctx, id, true)
	if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "runs on") {
		t.Fatalf("pause with no room for the memory file: %v\n%s", err, s.logs)
	}
	t.Logf("pause: %v", err)
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &old, nil); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, id)
	if err != nil || got.State != "running" {
		t.Fatalf("after the failed pause: %+v %v\n%s", got, err, s.logs)
	}
	if out := execOut(t, c, id, "cat /tmp/mem /home/user/disk"); out != "m\nd\n" {
		t.Fatalf("after the failed pause: %q", out)
	}
	if des, _ := os.ReadDir(filepath.Join(d.home, "paused", id)); len(des) != 0 {
		t.Fatalf("left in the paused directory: %v", des)
	}
	if err := c.Pause(ctx, id, true); err != nil {
		t.Fatalf("pause once the daemon can write: %v\n%s", err, s.logs)
	}
	if err := c.Resume(ctx, id, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if out := execOut(t, c, id, "cat /tmp/mem /home/user/disk"); out != "m\nd\n" {
		t.Fatalf("after the resume: %q", out)
	}
}

// TestTimeoutDuringAPauseKeepsIt: a timeout set while a pause is under way is refused (409), and
// the pause, once acknowledged, is never expired: a timer re-armed during the pause used to fire
// afterwards and remove the saved state of the paused sandbox. The pause is made slow by a
// guest that cannot answer its sync (its channel's socket is held, as in
// TestAdoptAndPauseASilentGuest).
func TestTimeoutDuringAPauseKeepsIt(t *testing.T) {
	d := newDaemon(t)
	s, c := d.serve(t)
	ctx := context.Background()
	id := createSandbox(t, c, 10*time.Minute)
	execOut(t, c, id, "echo m > /tmp/mem; sync")
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	blocker, err := net.Dial("unix", filepath.Join(d.home, "run", id, "ch.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Close() }()
	s, c = d.serve(t)

	paused := make(chan error, 1)
	go func() { paused <- c.Pause(ctx, id, true) }()
	time.Sleep(time.Second) // the pause waits up to sandbox.SyncTimeout for the silent guest
	if err := c.SetTimeout(ctx, id, 3*time.Second); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("a timeout set during the pause: %v, want 409", err)
	}
	if err := <-paused; err != nil {
		t.Fatalf("pause: %v\n%s", err, s.logs)
	}
	time.Sleep(5 * time.Second)
	if got, err := c.Get(ctx, id); err != nil || got.State != "paused" {
		t.Fatalf("5 s after the pause: %+v %v\n%s", got, err, s.logs)
	}
	_ = blocker.Close()
	if err := c.Resume(ctx, id, 0); err != nil {
		t.Fatalf("resume: %v\n%s", err, s.logs)
	}
	if got := execOut(t, c, id, "cat /tmp/mem"); got != "m\n" {
		t.Fatalf("after the resume: %q", got)
	}
}
