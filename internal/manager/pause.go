package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cellhq/cell/internal/datadir"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"

	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
)

// layout names the paths of the data directory Home.
func (m *Manager) layout() datadir.Layout { return datadir.Layout{Home: m.cfg.Home} }

func (m *Manager) pausedDir(id string) string { return m.layout().PausedSandbox(id) }

// Pause saves team's running sandbox (its RAM too when memory) and stops its VM.
func (m *Manager) Pause(ctx context.Context, team, id string, memory bool) error {
	if m.cfg.Home == "" {
		return fmt.Errorf("%w: pausing is not configured", ErrInvalid)
	}
	if err := m.begin(); err != nil {
		return err
	}
	defer m.inflight.Done()
	b, err := m.lookup(team, id)
	if err != nil {
		return err
	}
	return m.pause(ctx, b, memory)
}

// pause pauses b (see Pause).
func (m *Manager) pause(ctx context.Context, b *box, memory bool) error {
	id := b.rec.ID
	b.op.Lock()
	defer b.op.Unlock()
	b.mu.Lock()
	if err := b.to(pausing); err != nil {
		defer b.mu.Unlock()
		switch {
		case b.state.gone():
			return fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
		case b.state == paused:
			return fmt.Errorf("%w: sandbox %s is already paused", ErrConflict, id)
		}
		return fmt.Errorf("%w: sandbox %s is %s", ErrConflict, id, b.rec.State)
	}
	sb := b.sb
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()

	t0 := time.Now()
	// The pause bounds itself (sandbox.PauseTimeout); the caller going away must not stop it
	// half-way.
	_, perr := sb.Pause(context.WithoutCancel(ctx), m.pausedDir(id), memory)
	if errors.Is(perr, sandbox.ErrPauseUndone) {
		// Nothing was published and the VM runs on: the sandbox stays running, as it was.
		m.pauseUndone(b, sb)
		return fmt.Errorf("%w: pausing sandbox %s: %w", ErrPauseUndone, id, perr)
	}
	if perr != nil {
		if _, _, err := sandbox.CurrentPaused(m.pausedDir(id)); err != nil {
			// Nothing was published and the VM could not go on (its QEMU is gone).
			m.end(b, failed, "pause failed: "+perr.Error())
			return fmt.Errorf("pausing sandbox %s: %w", id, perr)
		}
		m.log.Warn("pause finished with an error after publishing", "sandbox", id, "err", perr)
	}
	b.mu.Lock()
	if err := b.to(paused); err != nil { // killed while it paused: the saved state goes with it
		b.mu.Unlock()
		_ = os.RemoveAll(m.pausedDir(id))
		return fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	b.sb = nil
	b.rec.PID, b.rec.StartTicks = 0, 0
	if b.timer != nil { // a paused sandbox has no timeout
		b.timer.Stop()
		b.timer = nil
	}
	rec := b.rec
	b.mu.Unlock()
	if err := m.cfg.Store.PutSandbox(context.WithoutCancel(ctx), rec); err != nil {
		return err
	}
	m.log.Info("sandbox paused", "sandbox", id, "memory", memory, "took", time.Since(t0))
	return nil
}

// pauseUndone takes b back after a pause of sb failed and was undone: it runs on, with its
// timeout armed again (or it expires now if that passed meanwhile), and its VM's death is
// watched again (the watcher let a death during the pause be).
func (m *Manager) pauseUndone(b *box, sb Instance) {
	b.mu.Lock()
	if err := b.to(running); err != nil { // ended while it paused
		b.mu.Unlock()
		return
	}
	select {
	case <-sb.Exited():
		// It died after the pause was undone, while its watcher took it for the pause's doing.
		b.mu.Unlock()
		m.end(b, killed, "qemu "+sb.ExitReason())
		return
	default:
	}
	if time.Now().After(b.rec.EndAt) {
		b.mu.Unlock()
		m.end(b, expired, "timeout (its pause failed)")
		return
	}
	m.arm(b)
	b.mu.Unlock()
}

// Resume starts team's paused sandbox again, to live timeout from now; with timeout 0 it lives
// its own timeout (the one it was created or last set with) from now. Its RAM is restored when
// it was saved and memory is true; otherwise it boots from its saved disk (E2B's onResume:
// 'reboot'). It reports whether the sandbox was paused; a running one is left as it is.
func (m *Manager) Resume(ctx context.Context, team, id string, timeout time.Duration, memory bool) (Info, bool, error) {
	if timeout < 0 || timeout > MaxTimeout {
		return Info{}, false, fmt.Errorf("%w: timeout: must be between 0 and %d seconds", ErrInvalid, int(MaxTimeout.Seconds()))
	}
	if err := m.begin(); err != nil {
		return Info{}, false, err
	}
	defer m.inflight.Done()
	b, err := m.lookup(team, id)
	if err != nil {
		return Info{}, false, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	b.mu.Lock()
	if b.state.gone() {
		b.mu.Unlock()
		return Info{}, false, fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	if err := b.to(resuming); err != nil { // not paused: left as it is
		info := Info{b.rec}
		b.mu.Unlock()
		return info, false, nil
	}
	token := b.rec.EnvdToken
	template := b.rec.TemplateID
	init := envd.InitRequest{EnvVars: b.rec.EnvVars, AccessToken: &token, TemplateID: &template}
	rules, err := compileNet(b.rec.AllowInternet, b.rec.Network)
	if err != nil {
		rules = denyAll()
	}
	if timeout == 0 {
		timeout = b.rec.Timeout
	}
	b.mu.Unlock()
	if timeout <= 0 || timeout > MaxTimeout { // a record of an earlier version
		timeout = DefaultTimeout
	}
	t0 := time.Now()
	sb, err := m.cfg.Runtime.Resume(ctx, m.pausedDir(id), init, rules, memory)
	if err != nil {
		b.mu.Lock()
		_ = b.to(paused) // as it was (unless it ended meanwhile)
		b.mu.Unlock()
		return Info{}, false, fmt.Errorf("%w: %w", ErrBootFailed, err)
	}
	b.mu.Lock()
	was := b.rec
	if err := b.to(running); err != nil { // killed while it resumed
		b.mu.Unlock()
		_ = sb.Close()
		return Info{}, false, fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	b.sb = sb
	b.rec.PID, b.rec.StartTicks = sb.PID()
	b.rec.EndAt, b.rec.Timeout = time.Now().Add(timeout), timeout
	rec := b.rec
	m.arm(b)
	b.mu.Unlock()
	if err := m.cfg.Store.PutSandbox(context.WithoutCancel(ctx), rec); err != nil {
		// Not recorded running: it stays paused, its saved generation intact (the VM ran from
		// a copy of its disk), and the VM goes.
		b.mu.Lock()
		if b.timer != nil {
			b.timer.Stop()
			b.timer = nil
		}
		b.sb = nil
		if b.to(paused) == nil {
			b.rec = was
		}
		b.mu.Unlock()
		_ = sb.Close()
		return Info{}, false, fmt.Errorf("recording the resumed sandbox %s (it stays paused): %w", id, err)
	}
	m.watch(b)
	// Running and recorded: the saved generation has served its purpose.
	if err := os.RemoveAll(m.pausedDir(id)); err != nil {
		m.log.Warn("removing the resumed sandbox's saved state", "sandbox", id, "err", err)
	}
	m.log.Info("sandbox resumed", "sandbox", id, "took", time.Since(t0))
	return Info{rec}, true, nil
}

// recoverPaused takes back a paused record at startup; one whose saved state is gone is lost.
func (m *Manager) recoverPaused(ctx context.Context, rec store.Sandbox) error {
	dir := m.pausedDir(rec.ID)
	if _, _, err := sandbox.CurrentPaused(dir); err != nil {
		rec.State, rec.Reason, rec.EndAt = store.StateLost, "paused state unreadable: "+err.Error(), time.Now()
		m.log.Warn("paused sandbox lost", "sandbox", rec.ID, "err", err)
		return m.cfg.Store.PutSandbox(ctx, rec) // its files, if any, are kept for inspection
	}
	sandbox.CleanPaused(dir)
	b := newBox(rec, paused)
	m.mu.Lock()
	m.boxes[rec.ID] = b
	m.mu.Unlock()
	return nil
}

// pausedCopy reports whether a saved generation exists for id (a daemon that died between
// publishing a pause and recording it leaves one).
func (m *Manager) pausedCopy(id string) bool {
	if m.cfg.Home == "" {
		return false
	}
	_, _, err := sandbox.CurrentPaused(m.pausedDir(id))
	return err == nil || !errors.Is(err, os.ErrNotExist)
}

// recoverPause settles a running record whose pause a crash interrupted after the pause took
// the VM's disk (sandbox.RecoverPause decides from the files). A pause undone leaves the VM
// running, to be adopted by the caller; a finished one records the sandbox paused (done). A VM
// that still has its disk, or whose pause could not be finished, is left to the caller.
func (m *Manager) recoverPause(ctx context.Context, rec *store.Sandbox) (done bool, err error) {
	if m.cfg.RunDir == "" || m.cfg.Home == "" {
		return false, nil
	}
	alive := vmm.IsOurs(rec.PID, rec.StartTicks, rec.ID)
	what, err := sandbox.RecoverPause(m.pausedDir(rec.ID), filepath.Join(m.cfg.RunDir, rec.ID, vmm.DiskFile), alive, rec.ID, rec.MemoryMiB, rec.CPUs)
	switch {
	case what == sandbox.PauseUndone:
		m.log.Warn("interrupted pause undone: the sandbox runs on", "sandbox", rec.ID)
		return false, nil
	case what != sandbox.PauseFinished:
		return false, err // adoption fails without a disk: the caller reports it lost
	}
	if alive {
		if p, err := os.FindProcess(rec.PID); err == nil {
			_ = p.Kill()
		}
	}
	_ = os.RemoveAll(filepath.Join(m.cfg.RunDir, rec.ID))
	m.log.Warn("interrupted pause completed: the sandbox is paused", "sandbox", rec.ID)
	rec.State, rec.PID, rec.StartTicks = store.StatePaused, 0, 0
	if err := m.cfg.Store.PutSandbox(ctx, *rec); err != nil {
		return false, err
	}
	return true, m.recoverPaused(ctx, *rec)
}
