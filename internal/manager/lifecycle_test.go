package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/vmm"
)

// The table says what the code does: every state but the final ones can be killed, only a
// running sandbox expires, and nothing leaves a final state.
func TestTransitions(t *testing.T) {
	all := []state{creating, running, pausing, paused, resuming, killed, expired, failed, left}
	for _, from := range all {
		for _, to := range all {
			b := newBox(store.Sandbox{ID: "sb", State: "before"}, from)
			err := b.to(to)
			allowed := err == nil
			switch {
			case from.gone() && allowed:
				t.Errorf("%s to %s allowed: nothing leaves a final state", from, to)
			case to == killed && !from.gone() && !allowed:
				t.Errorf("%s cannot be killed", from)
			case to == expired && allowed && from != running:
				t.Errorf("%s to expired allowed: only a running sandbox's timer ends it", from)
			}
			if !allowed {
				if !errors.Is(err, errTransition) || b.state != from || b.rec.State != "before" {
					t.Errorf("%s to %s refused, but the box changed: %s, %q (%v)", from, to, b.state, b.rec.State, err)
				}
				continue
			}
			if b.state != to {
				t.Errorf("%s to %s: the box is %s", from, to, b.state)
			}
			if want := to.record(); want != "" && b.rec.State != want {
				t.Errorf("%s to %s: the record says %s, want %s", from, to, b.rec.State, want)
			}
			if to.record() == "" && b.rec.State != "before" {
				t.Errorf("%s to %s: the record changed to %s (a crash now must find what it had)", from, to, b.rec.State)
			}
		}
	}
}

func TestCreateKillExpire(t *testing.T) {
	h := newHarness(t)
	info := h.create(CreateRequest{Secure: true, EnvVars: map[string]string{"A": "1"}})
	vm := h.rt.vm(t, info.ID)
	if info.State != store.StateRunning || info.EnvdToken == "" || vm.getToken() != info.EnvdToken {
		t.Fatalf("created: %+v, VM's token %q", info, vm.getToken())
	}
	if r := h.record(info.ID); r.State != store.StateRunning || r.PID != vm.pid || r.StartTicks != 7 {
		t.Errorf("record %+v, want running with the VM's PID %d", r, vm.pid)
	}
	if got := h.m.List(h.team); len(got) != 1 || got[0].ID != info.ID {
		t.Errorf("List: %+v", got)
	}
	if _, err := h.m.Get("team-b", info.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("another team's Get: %v, want ErrNotFound", err)
	}

	if err := h.m.Kill(h.team, info.ID); err != nil {
		t.Fatal(err)
	}
	h.want(info.ID, store.StateKilled, "killed by request")
	if !vm.isClosed() {
		t.Error("a killed sandbox's VM still runs")
	}
	if _, err := h.m.Get(h.team, info.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Kill: %v, want ErrNotFound", err)
	}
	if err := h.m.Kill(h.team, info.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Kill: %v, want ErrNotFound", err)
	}

	short := h.create(CreateRequest{Timeout: h.short})
	r := h.waitRecord(short.ID, store.StateExpired)
	if r.Reason != "timeout" || !h.rt.vm(t, short.ID).isClosed() {
		t.Errorf("expired: %q, VM closed %v", r.Reason, h.rt.vm(t, short.ID).isClosed())
	}
	if len(h.m.List(h.team)) != 0 {
		t.Errorf("List still has ended sandboxes: %+v", h.m.List(h.team))
	}

	// A VM that dies on its own ends its sandbox.
	died := h.create(CreateRequest{})
	h.rt.vm(t, died.ID).die("exit status 1")
	h.waitRecord(died.ID, store.StateKilled)
	h.want(died.ID, store.StateKilled, "qemu exit status 1")
}

// SetTimeout moves a running sandbox's end; the new timer replaces the old one.
func TestSetTimeout(t *testing.T) {
	h := newHarness(t)
	info := h.create(CreateRequest{Timeout: h.short})
	if _, err := h.m.SetTimeout(h.ctx, h.team, info.ID, time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * h.short)
	if got, err := h.m.Get(h.team, info.ID); err != nil || got.State != store.StateRunning {
		t.Fatalf("after its first timeout: %+v, %v", got, err)
	}
	if _, err := h.m.SetTimeout(h.ctx, h.team, info.ID, h.short); err != nil {
		t.Fatal(err)
	}
	h.waitRecord(info.ID, store.StateExpired)
}

func TestBootFails(t *testing.T) {
	h := newHarness(t)
	h.rt.set(func(r *fakeRuntime) {
		r.boot = func(context.Context, sandbox.Options) error { return errors.New("qemu: no such disk") }
	})
	_, err := h.m.Create(h.ctx, CreateRequest{Team: h.team, Timeout: time.Hour})
	if !errors.Is(err, ErrBootFailed) {
		t.Fatalf("create: %v, want ErrBootFailed", err)
	}
	all, _ := h.st.Sandboxes(h.ctx)
	if len(all) != 1 || all[0].State != store.StateFailed || all[0].Reason != "qemu: no such disk" {
		t.Errorf("records: %+v", all)
	}
}

// createBlocked starts a create whose boot waits at g until the test opens it, and then returns
// bootErr; it returns once the boot waits, with the sandbox's id and the create's result to come.
func (h *harness) createBlocked(g gate, bootErr error) (id string, done <-chan error) {
	h.t.Helper()
	h.rt.set(func(r *fakeRuntime) {
		r.boot = func(_ context.Context, opts sandbox.Options) error {
			id = opts.ID
			g.wait()
			return bootErr
		}
	})
	res := make(chan error, 1)
	go func() {
		_, err := h.m.Create(h.ctx, CreateRequest{Team: h.team, Timeout: time.Hour})
		res <- err
	}()
	g.await(h.t)
	return id, res
}

func TestKilledWhileBooting(t *testing.T) {
	h := newHarness(t)
	g := newGate()
	id, done := h.createBlocked(g, nil)
	if got, err := h.m.Get(h.team, id); err != nil || got.State != store.StateCreating {
		t.Fatalf("booting: %+v, %v", got, err)
	}
	if len(h.m.List(h.team)) != 0 {
		t.Error("List shows a sandbox that is still booting")
	}
	if err := h.m.Kill(h.team, id); err != nil {
		t.Fatal(err)
	}
	close(g.open)
	if err := <-done; !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "killed by request") {
		t.Fatalf("create: %v, want ErrConflict naming the kill", err)
	}
	if !h.rt.vm(t, id).isClosed() {
		t.Error("the VM that finished booting after the kill still runs")
	}
	h.want(id, store.StateKilled, "killed by request")
}

// A sandbox killed while it boots stays killed when its boot then fails: the kill was answered,
// and the record says so (it used to be overwritten as failed, outside the box's lock: a data
// race with the kill).
func TestKilledWhileBootingThatFails(t *testing.T) {
	for _, concurrent := range []bool{false, true} {
		t.Run(fmt.Sprintf("concurrent=%v", concurrent), func(t *testing.T) {
			h := newHarness(t)
			g := newGate()
			id, done := h.createBlocked(g, errors.New("qemu: killed"))
			killed := make(chan error, 1)
			go func() { killed <- h.m.Kill(h.team, id) }()
			if !concurrent {
				if err := <-killed; err != nil {
					t.Fatal(err)
				}
				killed <- nil
			}
			close(g.open)
			if err := <-done; !errors.Is(err, ErrBootFailed) {
				t.Fatalf("create: %v, want ErrBootFailed", err)
			}
			if err := <-killed; errors.Is(err, ErrNotFound) && concurrent {
				// The failure came first: the sandbox was gone when the kill looked.
				h.want(id, store.StateFailed, "qemu: killed")
				return
			} else if err != nil {
				t.Fatal(err)
			}
			h.want(id, store.StateKilled, "killed by request")
		})
	}
}

func TestAutoPauseAtTimeout(t *testing.T) {
	h := newHarness(t)
	info := h.create(CreateRequest{Timeout: h.short, AutoPause: true, AutoPauseMemory: true})
	vm := h.rt.vm(t, info.ID)
	r := h.waitRecord(info.ID, store.StatePaused)
	if r.PID != 0 || r.Reason != "" || !h.hasPaused(info.ID) || vm.alive() {
		t.Fatalf("paused: %+v, saved %v, VM alive %v", r, h.hasPaused(info.ID), vm.alive())
	}
	if len(vm.paused) != 1 || !vm.paused[0] {
		t.Errorf("pauses asked for (memory): %v, want [true]", vm.paused)
	}
	// A paused sandbox has no timeout: it stays paused, listed, with its saved state.
	time.Sleep(3 * h.short)
	if got, err := h.m.Get(h.team, info.ID); err != nil || got.State != store.StatePaused || !h.hasPaused(info.ID) {
		t.Fatalf("a while later: %+v, %v", got, err)
	}
	if err := h.m.Pause(h.ctx, h.team, info.ID, true); !errors.Is(err, ErrConflict) {
		t.Errorf("pausing a paused sandbox: %v, want ErrConflict", err)
	}
	if _, err := h.m.SetTimeout(h.ctx, h.team, info.ID, time.Hour); !errors.Is(err, ErrConflict) {
		t.Errorf("SetTimeout of a paused sandbox: %v, want ErrConflict", err)
	}

	got, resumed, err := h.m.Resume(h.ctx, h.team, info.ID, time.Hour, true)
	if err != nil || !resumed || got.State != store.StateRunning {
		t.Fatalf("resume: %+v, %v, %v", got, resumed, err)
	}
	again := h.rt.vm(t, info.ID)
	if again == vm || again.getToken() != info.EnvdToken {
		t.Error("the resumed sandbox did not get a VM of its own with its token")
	}
	if r := h.record(info.ID); r.State != store.StateRunning || r.PID != again.pid || r.Timeout != time.Hour {
		t.Errorf("record after resume: %+v", r)
	}
	if _, err := os.Stat(h.pausedDir(info.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the saved state outlived the resume: %v", err)
	}
	if _, resumed, err := h.m.Resume(h.ctx, h.team, info.ID, 0, true); err != nil || resumed {
		t.Errorf("resuming a running sandbox: %v, %v; want it left as it is", resumed, err)
	}
}

// An auto-pause that fails with the VM gone ends the sandbox failed (not expired).
func TestAutoPauseFails(t *testing.T) {
	h := newHarness(t)
	h.rt.set(func(r *fakeRuntime) {
		r.pause = func(_ context.Context, vm *fakeVM, _ string, _ bool) error {
			vm.die("exit status 1")
			return errors.New("saving the VM: qemu exited")
		}
	})
	info := h.create(CreateRequest{Timeout: h.short, AutoPause: true})
	r := h.waitRecord(info.ID, store.StateFailed)
	if r.Reason != "pause failed: saving the VM: qemu exited" {
		t.Errorf("reason %q", r.Reason)
	}
}

// A pause that fails before publishing and is undone leaves the sandbox running, its timeout
// armed again and its VM watched again.
func TestPauseUndone(t *testing.T) {
	undone := func(_ context.Context, _ *fakeVM, _ string, _ bool) error {
		return fmt.Errorf("%w: saving the VM: disk full", sandbox.ErrPauseUndone)
	}
	t.Run("runs on", func(t *testing.T) {
		h := newHarness(t)
		h.rt.set(func(r *fakeRuntime) { r.pause = undone })
		info := h.create(CreateRequest{Timeout: 300 * time.Millisecond})
		err := h.m.Pause(h.ctx, h.team, info.ID, true)
		if !errors.Is(err, ErrPauseUndone) {
			t.Fatalf("pause: %v, want ErrPauseUndone", err)
		}
		if got, err := h.m.Get(h.team, info.ID); err != nil || got.State != store.StateRunning || h.hasPaused(info.ID) {
			t.Fatalf("after the undone pause: %+v, %v", got, err)
		}
		h.want(info.ID, store.StateRunning, "")
		h.waitRecord(info.ID, store.StateExpired) // its timer runs again
	})
	t.Run("VM died meanwhile", func(t *testing.T) {
		h := newHarness(t)
		h.rt.set(func(r *fakeRuntime) {
			r.pause = func(ctx context.Context, vm *fakeVM, dir string, memory bool) error {
				vm.die("exit status 9")
				return undone(ctx, vm, dir, memory)
			}
		})
		info := h.create(CreateRequest{})
		if err := h.m.Pause(h.ctx, h.team, info.ID, true); !errors.Is(err, ErrPauseUndone) {
			t.Fatalf("pause: %v", err)
		}
		h.want(info.ID, store.StateKilled, "qemu exit status 9")
	})
	t.Run("timeout passed meanwhile", func(t *testing.T) {
		h := newHarness(t)
		h.rt.set(func(r *fakeRuntime) {
			r.pause = func(ctx context.Context, vm *fakeVM, dir string, memory bool) error {
				time.Sleep(3 * h.short) // its timer fires now, and lets the pause be
				return undone(ctx, vm, dir, memory)
			}
		})
		info := h.create(CreateRequest{Timeout: h.short})
		if err := h.m.Pause(h.ctx, h.team, info.ID, true); !errors.Is(err, ErrPauseUndone) {
			t.Fatalf("pause: %v", err)
		}
		h.want(info.ID, store.StateExpired, "timeout (its pause failed)")
	})
}

// A pause that fails before publishing with the VM gone fails the sandbox; one that fails after
// publishing (cleaning up) has paused it.
func TestPauseFails(t *testing.T) {
	t.Run("before publishing", func(t *testing.T) {
		h := newHarness(t)
		h.rt.set(func(r *fakeRuntime) {
			r.pause = func(_ context.Context, vm *fakeVM, _ string, _ bool) error {
				vm.die("exit status 1")
				return errors.New("stopping the VM: qemu exited")
			}
		})
		info := h.create(CreateRequest{})
		err := h.m.Pause(h.ctx, h.team, info.ID, false)
		if err == nil || errors.Is(err, ErrPauseUndone) {
			t.Fatalf("pause: %v", err)
		}
		h.want(info.ID, store.StateFailed, "pause failed: stopping the VM: qemu exited")
		if !h.rt.vm(t, info.ID).isClosed() {
			t.Error("the failed sandbox's VM was not released")
		}
		if _, err := h.m.Get(h.team, info.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get: %v, want ErrNotFound", err)
		}
	})
	t.Run("after publishing", func(t *testing.T) {
		h := newHarness(t)
		h.rt.set(func(r *fakeRuntime) {
			r.pause = func(_ context.Context, vm *fakeVM, dir string, _ bool) error {
				if err := publishPaused(dir, vm.id); err != nil {
					return err
				}
				vm.die("killed: saved by a pause")
				return errors.New("removing the old generation: permission denied")
			}
		})
		info := h.create(CreateRequest{})
		if err := h.m.Pause(h.ctx, h.team, info.ID, false); err != nil {
			t.Fatalf("pause: %v, want success (it was published)", err)
		}
		h.want(info.ID, store.StatePaused, "")
		if _, resumed, err := h.m.Resume(h.ctx, h.team, info.ID, 0, false); err != nil || !resumed {
			t.Fatalf("resume: %v, %v", resumed, err)
		}
		if r := h.record(info.ID); r.State != store.StateRunning || r.Timeout != time.Hour {
			t.Errorf("resumed with its own timeout: %+v", r)
		}
	})
}

// A sandbox killed while it pauses is killed: its saved state goes with it, and a timeout set
// meanwhile is refused.
func TestKilledWhilePausing(t *testing.T) {
	h := newHarness(t)
	g := newGate()
	h.rt.set(func(r *fakeRuntime) {
		r.pause = func(_ context.Context, vm *fakeVM, dir string, _ bool) error {
			g.wait()
			if err := publishPaused(dir, vm.id); err != nil {
				return err
			}
			vm.die("killed: saved by a pause")
			return nil
		}
	})
	info := h.create(CreateRequest{})
	done := make(chan error, 1)
	go func() { done <- h.m.Pause(h.ctx, h.team, info.ID, true) }()
	g.await(t)
	if _, err := h.m.SetTimeout(h.ctx, h.team, info.ID, time.Hour); !errors.Is(err, ErrConflict) {
		t.Errorf("SetTimeout while pausing: %v, want ErrConflict", err)
	}
	if err := h.m.Kill(h.team, info.ID); err != nil {
		t.Fatal(err)
	}
	close(g.open)
	if err := <-done; !errors.Is(err, ErrNotFound) {
		t.Fatalf("pause: %v, want ErrNotFound", err)
	}
	h.want(info.ID, store.StateKilled, "killed by request")
	if _, err := os.Stat(h.pausedDir(info.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed sandbox's saved state is kept: %v", err)
	}
}

func TestResume(t *testing.T) {
	paused := func(t *testing.T) (*harness, Info) {
		h := newHarness(t)
		info := h.create(CreateRequest{})
		if err := h.m.Pause(h.ctx, h.team, info.ID, true); err != nil {
			t.Fatal(err)
		}
		return h, info
	}
	t.Run("killed midway", func(t *testing.T) {
		h, info := paused(t)
		g := newGate()
		h.rt.set(func(r *fakeRuntime) {
			r.resume = func(context.Context, string) error { g.wait(); return nil }
		})
		done := make(chan error, 1)
		go func() {
			_, _, err := h.m.Resume(h.ctx, h.team, info.ID, 0, true)
			done <- err
		}()
		g.await(t)
		if got, err := h.m.Get(h.team, info.ID); err != nil || got.State != store.StatePaused {
			t.Errorf("while resuming: %+v, %v (the record says paused until it runs)", got, err)
		}
		if err := h.m.Kill(h.team, info.ID); err != nil {
			t.Fatal(err)
		}
		close(g.open)
		if err := <-done; !errors.Is(err, ErrNotFound) {
			t.Fatalf("resume: %v, want ErrNotFound", err)
		}
		if vm := h.rt.vm(t, info.ID); !vm.isClosed() {
			t.Error("the VM started for a killed sandbox still runs")
		}
		h.want(info.ID, store.StateKilled, "killed by request")
		if _, err := os.Stat(h.pausedDir(info.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a killed sandbox's saved state is kept: %v", err)
		}
	})
	t.Run("fails", func(t *testing.T) {
		h, info := paused(t)
		h.rt.set(func(r *fakeRuntime) {
			r.resume = func(context.Context, string) error { return errors.New("qemu: cannot restore") }
		})
		if _, _, err := h.m.Resume(h.ctx, h.team, info.ID, 0, true); !errors.Is(err, ErrBootFailed) {
			t.Fatalf("resume: %v, want ErrBootFailed", err)
		}
		if got, err := h.m.Get(h.team, info.ID); err != nil || got.State != store.StatePaused || !h.hasPaused(info.ID) {
			t.Fatalf("after a failed resume: %+v, %v", got, err)
		}
		h.want(info.ID, store.StatePaused, "")
		h.rt.set(func(r *fakeRuntime) { r.resume = nil })
		if _, resumed, err := h.m.Resume(h.ctx, h.team, info.ID, 0, true); err != nil || !resumed {
			t.Fatalf("second resume: %v, %v", resumed, err)
		}
	})
	t.Run("not recorded", func(t *testing.T) {
		h, info := paused(t)
		_ = h.st.Close() // every write fails from now on
		_, _, err := h.m.Resume(h.ctx, h.team, info.ID, 0, true)
		if err == nil || errors.Is(err, ErrBootFailed) {
			t.Fatalf("resume: %v, want the store's error", err)
		}
		if got, err := h.m.Get(h.team, info.ID); err != nil || got.State != store.StatePaused || !h.hasPaused(info.ID) {
			t.Errorf("after a resume that could not be recorded: %+v, %v, saved %v", got, err, h.hasPaused(info.ID))
		}
		if vm := h.rt.vm(t, info.ID); !vm.isClosed() {
			t.Error("the VM of a resume that could not be recorded still runs")
		}
	})
	t.Run("killed while paused", func(t *testing.T) {
		h, info := paused(t)
		if err := h.m.Kill(h.team, info.ID); err != nil {
			t.Fatal(err)
		}
		h.want(info.ID, store.StateKilled, "killed by request")
		if h.hasPaused(info.ID) {
			t.Error("a killed sandbox's saved state is kept")
		}
	})
}

func TestShutdown(t *testing.T) {
	// Each mode over two running sandboxes and a paused one.
	start := func(t *testing.T) (h *harness, run1, run2, p Info) {
		h = newHarness(t)
		run1, run2, p = h.create(CreateRequest{}), h.create(CreateRequest{}), h.create(CreateRequest{})
		if err := h.m.Pause(h.ctx, h.team, p.ID, false); err != nil {
			t.Fatal(err)
		}
		return h, run1, run2, p
	}
	t.Run("kill", func(t *testing.T) {
		h, run1, run2, p := start(t)
		h.m.Shutdown(h.ctx, Kill)
		for _, id := range []string{run1.ID, run2.ID} {
			h.want(id, store.StateKilled, "cell serve shut down")
			if !h.rt.vm(t, id).isClosed() {
				t.Errorf("%s: VM still runs", id)
			}
		}
		h.want(p.ID, store.StatePaused, "")
		if !h.hasPaused(p.ID) {
			t.Error("the paused sandbox's saved state is gone")
		}
		if _, err := h.m.Create(h.ctx, CreateRequest{Team: h.team}); !errors.Is(err, ErrShutdown) {
			t.Errorf("create after shutdown: %v, want ErrShutdown", err)
		}
	})
	t.Run("pause", func(t *testing.T) {
		h, run1, run2, p := start(t)
		// run2's pause is undone: it is killed instead.
		h.rt.set(func(r *fakeRuntime) {
			r.pause = func(_ context.Context, vm *fakeVM, dir string, _ bool) error {
				if vm.id == run2.ID {
					return fmt.Errorf("%w: disk full", sandbox.ErrPauseUndone)
				}
				if err := publishPaused(dir, vm.id); err != nil {
					return err
				}
				vm.die("killed: saved by a pause")
				return nil
			}
		})
		h.m.Shutdown(h.ctx, PauseAll)
		h.want(run1.ID, store.StatePaused, "")
		if vm := h.rt.vm(t, run1.ID); len(vm.paused) != 1 || !vm.paused[0] || !h.hasPaused(run1.ID) {
			t.Errorf("run1 not paused with its RAM: %v", vm.paused)
		}
		h.want(run2.ID, store.StateKilled, "cell serve shut down")
		h.want(p.ID, store.StatePaused, "")
	})
	t.Run("leave", func(t *testing.T) {
		h, run1, run2, p := start(t)
		h.m.Shutdown(h.ctx, Leave)
		for _, id := range []string{run1.ID, run2.ID} {
			vm := h.rt.vm(t, id)
			if vm.isClosed() || !vm.isDetached() || !vm.alive() {
				t.Errorf("%s: closed %v, detached %v", id, vm.isClosed(), vm.isDetached())
			}
			h.want(id, store.StateRunning, "")
		}
		h.want(p.ID, store.StatePaused, "")
		// The next daemon adopts what was left running.
		next := h.open()
		if err := next.Recover(h.ctx); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{run1.ID, run2.ID, p.ID} {
			if _, err := next.Get(h.team, id); err != nil {
				t.Errorf("%s after the restart: %v", id, err)
			}
		}
		if got := h.rt.vm(t, run1.ID); got.pid != h.record(run1.ID).PID {
			t.Errorf("adopted PID %d, recorded %d", got.pid, h.record(run1.ID).PID)
		}
	})
}

// Recover takes back every state a previous daemon can have left in the store and on disk.
func TestRecover(t *testing.T) {
	h := newHarness(t)
	now := time.Now()
	put := func(state string, f func(r *store.Sandbox)) string {
		t.Helper()
		r := store.Sandbox{ID: ids.NewSandboxID(), TeamID: h.team, TemplateID: "base", State: state, CPUs: 2, MemoryMiB: 512,
			StartedAt: now, EndAt: now.Add(time.Hour), Timeout: time.Hour, EnvdToken: "tok-" + state}
		if f != nil {
			f(&r)
		}
		if err := h.st.PutSandbox(h.ctx, r); err != nil {
			t.Fatal(err)
		}
		return r.ID
	}
	mkdir := func(parts ...string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(parts...), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	saved := func(id string) {
		t.Helper()
		if err := publishPaused(h.pausedDir(id), id); err != nil {
			t.Fatal(err)
		}
	}
	const pid = 4194305 // above any pid_max: never a live process
	adopted := put(store.StateRunning, func(r *store.Sandbox) { r.PID, r.StartTicks = pid, 7 })
	mkdir(h.cfg.RunDir, adopted)
	if err := os.WriteFile(filepath.Join(h.cfg.RunDir, adopted, "disk.qcow2"), fakeDisk, 0o600); err != nil {
		t.Fatal(err)
	}
	saved(adopted) // a resume's generation that was not cleaned up: stale
	gone := put(store.StateRunning, nil)
	mkdir(h.cfg.RunDir, gone)
	claimed := put(store.StateRunning, nil) // another live process holds its VM directory's claim
	mkdir(h.cfg.RunDir, claimed)
	claim, err := os.OpenFile(filepath.Join(h.cfg.RunDir, claimed, "owner.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = claim.Close() }()
	if err := unix.Flock(int(claim.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	// Its VM cannot be adopted, but a saved generation exists: the previous daemon died between
	// publishing its pause and recording it.
	unrecorded := put(store.StateRunning, nil)
	mkdir(h.cfg.RunDir, unrecorded)
	if err := os.WriteFile(filepath.Join(h.cfg.RunDir, unrecorded, "disk.qcow2"), fakeDisk, 0o600); err != nil {
		t.Fatal(err)
	}
	saved(unrecorded)
	interrupted := put(store.StateRunning, nil) // died after the pause took the VM's disk
	mkdir(h.cfg.RunDir, interrupted)
	mkdir(h.pausedDir(interrupted), ".staging-x")
	if err := os.WriteFile(filepath.Join(h.pausedDir(interrupted), ".staging-x", "disk.qcow2"), fakeDisk, 0o600); err != nil {
		t.Fatal(err)
	}
	booting := put(store.StateCreating, nil)
	bootingSaved := put(store.StateCreating, nil)
	saved(bootingSaved)
	paused := put(store.StatePaused, nil)
	saved(paused)
	mkdir(h.pausedDir(paused), ".staging-old")
	pausedLost := put(store.StatePaused, nil)
	killed := put(store.StateKilled, func(r *store.Sandbox) { r.EndAt = now.Add(-time.Hour) })
	saved(killed)
	lost := put(store.StateLost, nil)
	saved(lost)
	old := put(store.StateExpired, func(r *store.Sandbox) { r.EndAt = now.Add(-RetainEnded - time.Hour) })
	unknown := ids.NewSandboxID()
	saved(unknown)
	orphan := ids.NewSandboxID()
	mkdir(h.cfg.RunDir, orphan)

	h.rt.set(func(r *fakeRuntime) {
		r.adopt = func(id string, _ int) error {
			switch id {
			case adopted:
				return nil
			case claimed:
				return fmt.Errorf("adopting: %w", vmm.ErrClaimed)
			}
			return errors.New("qemu is gone")
		}
	})
	if err := h.m.Recover(h.ctx); err != nil {
		t.Fatal(err)
	}

	// Adopted: running, with its token, timer and watcher; its stale generation removed.
	if got, err := h.m.Get(h.team, adopted); err != nil || got.State != store.StateRunning {
		t.Errorf("adopted: %+v, %v", got, err)
	}
	vm := h.rt.vm(t, adopted)
	if vm.pid != pid || vm.getToken() != "tok-running" {
		t.Errorf("adopted VM: pid %d, token %q", vm.pid, vm.getToken())
	}
	if _, err := os.Stat(h.pausedDir(adopted)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the adopted sandbox's stale generation is kept: %v", err)
	}
	vm.die("exit status 1")
	h.waitRecord(adopted, store.StateKilled)

	for _, c := range []struct {
		id, state, reason string
	}{
		{gone, store.StateLost, "not re-adopted after restart: qemu is gone"},
		{claimed, store.StateLost, "not re-adopted after restart: adopting: " + vmm.ErrClaimed.Error()},
		{unrecorded, store.StatePaused, ""},
		{interrupted, store.StatePaused, ""},
		{booting, store.StateLost, "not re-adopted after restart: was still creating"},
		{bootingSaved, store.StatePaused, ""},
		{paused, store.StatePaused, ""},
		{killed, store.StateKilled, ""},
		{lost, store.StateLost, ""},
	} {
		h.want(c.id, c.state, c.reason)
		_, err := h.m.Get(h.team, c.id)
		if (c.state == store.StatePaused) != (err == nil) {
			t.Errorf("%s (%s): Get: %v", c.id, c.state, err)
		}
		if c.state == store.StatePaused && !h.hasPaused(c.id) {
			t.Errorf("%s: paused without a saved generation", c.id)
		}
	}
	if r := h.record(pausedLost); r.State != store.StateLost || !strings.HasPrefix(r.Reason, "paused state unreadable: ") {
		t.Errorf("paused without saved state: %s (%q)", r.State, r.Reason)
	}
	if _, err := os.Stat(filepath.Join(h.pausedDir(paused), ".staging-old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a paused sandbox's leftovers are kept: %v", err)
	}
	if got := h.rt.adopts; len(got) != 4 {
		t.Errorf("adoptions asked for %v, want the 4 running records whose VM may live", got)
	}
	if _, err := os.Stat(filepath.Join(h.cfg.RunDir, gone)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a lost sandbox's VM directory is kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.cfg.RunDir, claimed)); err != nil {
		t.Errorf("another process's VM directory was removed: %v", err)
	}
	for _, id := range []string{killed, unknown} {
		if _, err := os.Stat(h.pausedDir(id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: an ended or unknown sandbox's saved state is kept: %v", id, err)
		}
	}
	if !h.hasPaused(lost) {
		t.Error("a lost sandbox's saved state was removed (it is kept for inspection)")
	}
	if _, err := os.Stat(filepath.Join(h.cfg.RunDir, orphan)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an orphan VM directory is kept: %v", err)
	}
	all, err := h.st.Sandboxes(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.ID == old {
			t.Error("a sandbox that ended more than RetainEnded ago is kept")
		}
	}

	// What was taken back paused resumes.
	for _, id := range []string{unrecorded, interrupted, bootingSaved, paused} {
		if _, resumed, err := h.m.Resume(h.ctx, h.team, id, 0, true); err != nil || !resumed {
			t.Errorf("%s: resume: %v, %v", id, resumed, err)
		}
	}
}

// A timer that passed its check just before a pause began ends the sandbox only after the pause
// (end finds it pausing or paused, which do not expire): an acknowledged pause never expires.
// The window between the check and the end is too short to hit from outside; the box is put in
// it by hand.
func TestTimerDoesNotEndAPause(t *testing.T) {
	h := newHarness(t)
	info := h.create(CreateRequest{})
	b, err := h.m.lookup(h.team, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []state{pausing, paused} {
		b.mu.Lock()
		err := b.to(s)
		b.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		h.m.end(b, expired, "timeout")
		if b.mu.Lock(); b.state != s {
			t.Errorf("a %s sandbox's timer ended it: %s", s, b.state)
		}
		b.mu.Unlock()
		if vm := h.rt.vm(t, info.ID); vm.isClosed() {
			t.Fatalf("a %s sandbox's timer closed its VM", s)
		}
	}
	h.want(info.ID, store.StateRunning, "")
	if err := h.m.Kill(h.team, info.ID); err != nil { // its VM was never saved: it goes
		t.Fatal(err)
	}
}
