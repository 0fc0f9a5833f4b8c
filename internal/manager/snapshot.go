package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
)

// MaxForks bounds one fork request.
const MaxForks = 100

// SnapshotInfo is a snapshot as the API lists it.
type SnapshotInfo struct {
	ID, Name, Source string
	CreatedAt        time.Time
}

// Snapshot saves team's running sandbox as a new template (the sandbox keeps running) and returns
// its id. Sandboxes created from that id start where the sandbox was.
func (m *Manager) Snapshot(ctx context.Context, team, id, name string) (SnapshotInfo, error) {
	return m.snapshot(ctx, team, id, name, false)
}

func (m *Manager) snapshot(ctx context.Context, team, id, name string, fork bool) (SnapshotInfo, error) {
	if m.cfg.Home == "" {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshots are not configured", ErrInvalid)
	}
	if name != "" {
		if err := ids.Validate("name", name); err != nil {
			return SnapshotInfo{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	if err := m.begin(); err != nil {
		return SnapshotInfo{}, err
	}
	defer m.inflight.Done()
	b, err := m.lookup(team, id)
	if err != nil {
		return SnapshotInfo{}, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	b.mu.Lock()
	sb, state := b.sb, b.rec.State
	b.mu.Unlock()
	if sb == nil || state != store.StateRunning {
		return SnapshotInfo{}, fmt.Errorf("%w: sandbox %s is %s", ErrConflict, id, state)
	}
	snapID := ids.New(20)
	t, err := m.cfg.Runtime.Snapshot(ctx, sb, m.cfg.Home, snapID, name, team, fork)
	if err != nil {
		return SnapshotInfo{}, err
	}
	m.cfg.Templates.SetTemplate(snapID, t)
	return SnapshotInfo{ID: snapID, Name: name, Source: id, CreatedAt: time.Now()}, nil
}

// Snapshots lists team's snapshots (of sandbox source only, when set), by id.
func (m *Manager) Snapshots(team, source string) []SnapshotInfo {
	var out []SnapshotInfo
	for _, t := range m.cfg.Templates.Templates() {
		if !t.Full || t.Fork || t.Layer != nil || t.Team != team || (source != "" && t.Source != source) {
			continue
		}
		out = append(out, SnapshotInfo{ID: t.Name, Name: t.Label, Source: t.Source})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// TemplateAlias resolves a template name for team as E2B's alias lookup does: "base" is public,
// a snapshot is team's own (another team's is not found, as its sandboxes are not).
func (m *Manager) TemplateAlias(team, alias string) (id string, public bool, err error) {
	if err := ids.Validate("alias", alias); err != nil {
		return "", false, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if alias == "base" {
		return "base", true, nil
	}
	if t := m.cfg.Templates.Template(alias); t != nil && t.Full && !t.Fork && t.Layer == nil && t.Team == team {
		return t.Name, false, nil
	}
	return "", false, fmt.Errorf("%w: template %q", ErrNotFound, alias)
}

// DeleteTemplate removes team's snapshot; ErrConflict while a sandbox still depends on it.
func (m *Manager) DeleteTemplate(team, id string) error {
	if err := ids.Validate("templateID", id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if id == "base" {
		return fmt.Errorf("%w: the base template cannot be deleted", ErrConflict)
	}
	t := m.cfg.Templates.Template(id)
	if t == nil || !t.Full || t.Layer != nil || t.Team != team {
		return fmt.Errorf("%w: template %q", ErrNotFound, id)
	}
	if err := sandbox.RemoveTemplate(t.Dir, m.cfg.RunDir, m.layout().Paused()); err != nil {
		if errors.Is(err, sandbox.ErrTemplateInUse) {
			// The message goes to the client: without the template's directory on the host.
			return fmt.Errorf("%w: template %q: %s", ErrConflict, id, strings.TrimPrefix(err.Error(), "template "+t.Dir+": "))
		}
		return err
	}
	m.cfg.Templates.DropTemplate(id)
	_ = removeIfEmpty(filepath.Dir(t.Dir))
	return nil
}

// ForkResult is one fork: a sandbox or why it failed.
type ForkResult struct {
	Info Info
	Err  error
}

// Fork snapshots team's running sandbox once and starts count sandboxes from it (each with
// timeout to live); each fork succeeds or fails on its own.
func (m *Manager) Fork(ctx context.Context, team, id string, count int, timeout time.Duration) ([]ForkResult, error) {
	if count < 1 || count > MaxForks {
		return nil, fmt.Errorf("%w: count: must be from 1 to %d", ErrInvalid, MaxForks)
	}
	if timeout < 0 || timeout > MaxTimeout {
		return nil, fmt.Errorf("%w: timeout: must be between 0 and %d seconds", ErrInvalid, int(MaxTimeout.Seconds()))
	}
	src, err := m.Get(team, id)
	if err != nil {
		return nil, err
	}
	snap, err := m.snapshot(ctx, team, id, "", true)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.forking == nil {
		m.forking = map[string]bool{}
	}
	m.forking[snap.ID] = true // forks being created may not have a disk yet
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.forking, snap.ID)
		m.mu.Unlock()
		m.collectFork(snap.ID) // when every fork failed, nothing depends on it
	}()
	out := make([]ForkResult, count)
	var wg sync.WaitGroup
	// As many restores at once as there are CPUs: they are CPU-bound (under TCG, on 2 CPUs:
	// fork ×10 in 0.98–1.01 s two at a time, 1.03–1.06 s four, 1.07–1.17 s eight).
	slots := make(chan struct{}, max(2, runtime.NumCPU()))
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			info, err := m.Create(ctx, CreateRequest{Team: team, Template: snap.ID, Timeout: timeout, Metadata: src.Metadata,
				EnvVars: src.EnvVars, Secure: src.EnvdToken != "", AllowInternet: src.AllowInternet, Network: src.Network,
				CPUs: src.CPUs, MemoryMiB: src.MemoryMiB, DiskMiB: src.DiskMiB})
			out[i] = ForkResult{Info: info, Err: err}
		}()
	}
	wg.Wait()
	return out, nil
}

// collectFork removes a fork's snapshot once no sandbox (running or paused) depends on it.
func (m *Manager) collectFork(template string) {
	t := m.cfg.Templates.Template(template)
	m.mu.Lock()
	busy := m.forking[template]
	m.mu.Unlock()
	if t == nil || !t.Fork || busy {
		return
	}
	if err := sandbox.RemoveTemplate(t.Dir, m.cfg.RunDir, m.layout().Paused()); err != nil {
		return // still in use (or gone): the next end tries again
	}
	m.cfg.Templates.DropTemplate(template)
	_ = removeIfEmpty(filepath.Dir(t.Dir))
	m.log.Info("fork snapshot removed", "template", template)
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
