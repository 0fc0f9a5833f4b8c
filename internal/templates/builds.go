package templates

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/pkg/e2bapi"
)

// maxLogEntries bounds one build's log; past it the log says it was cut.
const maxLogEntries = 100_000

// active is a build this process knows: its tags, its log, and how to stop it.
type active struct {
	mu       sync.Mutex
	tags     []string
	created  time.Time
	template string
	started  bool
	logs     []e2bapi.BuildLogEntry
	cut      bool
	// minFreeMiB is the build's minFreeDiskMb, asked for when it was created.
	minFreeMiB int
}

func (a *active) add(level, step, msg string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.logs) >= maxLogEntries {
		if !a.cut {
			a.cut = true
			a.logs = append(a.logs, e2bapi.BuildLogEntry{Timestamp: time.Now().UTC(), Level: build.LevelWarn, Message: "the log is cut here", Step: step})
		}
		return
	}
	a.logs = append(a.logs, e2bapi.BuildLogEntry{Timestamp: time.Now().UTC(), Level: level, Message: msg, Step: step})
}

func (a *active) entries(from, limit int) []e2bapi.BuildLogEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return page(a.logs, from, limit)
}

func page(all []e2bapi.BuildLogEntry, from, limit int) []e2bapi.BuildLogEntry {
	if from < 0 || from >= len(all) {
		return []e2bapi.BuildLogEntry{}
	}
	end := min(len(all), from+limit)
	return append([]e2bapi.BuildLogEntry(nil), all[from:end]...)
}

// Start queues team's build bid of template tid with spec. The build runs in the background;
// Status follows it.
func (s *Service) Start(ctx context.Context, team, tid, bid string, spec build.Spec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("%w: %w", manager.ErrInvalid, err)
	}
	t, err := s.cfg.Store.TemplateByID(ctx, team, tid)
	if err != nil {
		return notFound(err, "template %q", tid)
	}
	b, err := s.cfg.Store.BuildByID(ctx, tid, bid)
	if err != nil {
		return notFound(err, "build %q of template %q", bid, tid)
	}
	im, err := s.checkImage(spec)
	if err != nil {
		return err
	}
	var (
		base, baseIdent string
		baseState       build.State
	)
	if im == nil {
		if base, baseState, baseIdent, err = s.base(ctx, team, spec); err != nil {
			return err
		}
	}
	for _, st := range spec.Steps {
		if st.Type == build.StepCopy {
			if _, err := os.Stat(s.uploadPath(team, st.FilesHash)); err != nil {
				return fmt.Errorf("%w: steps: the files %s (COPY %s) were not uploaded", manager.ErrInvalid, st.FilesHash, st.Args[0])
			}
		}
	}
	s.mu.Lock()
	a := s.active[bid]
	switch {
	case a == nil || b.Status != store.BuildWaiting:
		s.mu.Unlock()
		return fmt.Errorf("%w: build %s is %s: start a new one (POST /v3/templates)", manager.ErrConflict, bid, b.Status)
	case a.started:
		s.mu.Unlock()
		return fmt.Errorf("%w: build %s was started already", manager.ErrConflict, bid)
	case s.queued >= s.cfg.MaxBuilds+s.cfg.MaxQueue:
		s.mu.Unlock()
		return fmt.Errorf("%w: %d builds are running or queued; try again later", ErrBusy, s.queued)
	}
	a.started = true
	s.queued++
	s.mu.Unlock()
	job := build.Job{Team: team, Spec: spec, Base: base, BaseState: baseState, CPUs: b.CPUs, MemoryMiB: b.MemoryMiB, MinFreeDiskMiB: a.minFreeMiB,
		BaseKey: build.BaseKey(team, baseIdent, b.CPUs, b.MemoryMiB), Log: a.add,
		Files: func(hash string) (io.ReadCloser, error) { return s.openUpload(team, hash) }}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(t, b, a, job, im)
	}()
	return nil
}

// base resolves the template a build starts from: Cell's base image (fromImage e2bdev/base,
// E2B's default, or fromTemplate base) or a ready build of one of team's templates.
func (s *Service) base(ctx context.Context, team string, spec build.Spec) (snapshot string, st build.State, ident string, err error) {
	from := spec.FromTemplate
	switch {
	case from == "" || from == "base":
		name, ident, err := s.cfg.Snapshots.Base()
		return name, build.BaseState(), ident, err
	}
	snap, _, err := s.Resolve(ctx, team, from)
	if err != nil {
		return "", build.State{}, "", err
	}
	meta, ok := s.cfg.Machines.Layer(snap)
	if !ok {
		return "", build.State{}, "", fmt.Errorf("%w: fromTemplate %q: its snapshot is gone", manager.ErrNotFound, from)
	}
	st, err = build.DecodeLayer(meta)
	if err != nil {
		return "", build.State{}, "", fmt.Errorf("template %q: %w", from, err)
	}
	return snap, st, snap, nil
}

func (s *Service) run(t store.Template, b store.Build, a *active, job build.Job, im *imageRef) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	// Waiting for a turn.
	select {
	case s.queue <- struct{}{}:
	case <-ctx.Done():
		s.finish(t, b, a, build.Result{}, &build.StepError{Step: "base", Err: fmt.Errorf("queued: %w", ctx.Err())})
		return
	}
	defer func() { <-s.queue }()
	b.Status = store.BuildBuilding
	if err := s.cfg.Store.PutBuild(ctx, b); err != nil {
		s.finish(t, b, a, build.Result{}, &build.StepError{Step: "base", Err: err})
		return
	}
	t0 := time.Now()
	if im != nil {
		base, st, key, err := s.imageBase(ctx, job.Team, *im, job.CPUs, job.MemoryMiB, a.add)
		if err != nil {
			s.finish(t, b, a, build.Result{}, &build.StepError{Step: "base", Err: err})
			return
		}
		job.Base, job.BaseState, job.BaseKey = base, st, key
	}
	a.add(build.LevelInfo, "base", fmt.Sprintf("building from %s", job.Base))
	res, err := build.Run(ctx, s.cfg.Machines, job)
	if err == nil {
		a.add(build.LevelInfo, "finalize", fmt.Sprintf("build finished in %s: %d layers cached, %d built",
			time.Since(t0).Round(time.Millisecond), res.Cached, res.Built))
	}
	s.finish(t, b, a, res, err)
}

// finish records how build b ended, points its tags at it when it is ready, and keeps its log.
func (s *Service) finish(t store.Template, b store.Build, a *active, res build.Result, err error) {
	ctx := context.WithoutCancel(s.ctx)
	b.FinishedAt = time.Now()
	if err != nil {
		var se *build.StepError
		b.Status, b.Reason, b.ReasonStep = store.BuildError, err.Error(), "base"
		if errors.As(err, &se) {
			b.Reason, b.ReasonStep = se.Err.Error(), se.Step
		}
		if errors.Is(err, context.Canceled) && s.ctx.Err() != nil {
			b.Reason = "cell serve stopped during the build"
		}
		a.add(build.LevelError, b.ReasonStep, b.Reason)
		s.cfg.Log.Info("template build failed", "template", t.ID, "build", b.ID, "step", b.ReasonStep, "err", err)
	} else {
		b.Status, b.Snapshot = store.BuildReady, res.Snapshot
	}
	if err := s.saveLog(b.ID, a); err != nil {
		s.cfg.Log.Warn("keeping a build's log", "build", b.ID, "err", err)
	}
	if perr := s.cfg.Store.PutBuild(ctx, b); perr != nil {
		s.cfg.Log.Error("recording a build", "build", b.ID, "err", perr)
	}
	if err == nil {
		for _, tag := range a.tags {
			if terr := s.cfg.Store.SetTag(ctx, t.ID, tag, b.ID, b.FinishedAt); terr != nil {
				s.cfg.Log.Error("tagging a build", "build", b.ID, "tag", tag, "err", terr)
			}
		}
		s.cfg.Log.Info("template built", "template", t.ID, "name", t.Name, "build", b.ID, "snapshot", res.Snapshot)
	}
	s.mu.Lock()
	s.queued--
	delete(s.active, b.ID)
	s.mu.Unlock()
	s.evict(ctx, s.cacheBudget())
}

func (s *Service) logPath(bid string) string { return filepath.Join(logsDir(s.cfg.Dir), bid+".jsonl") }

// saveLog writes a finished build's log beside the others (temp + rename).
func (s *Service) saveLog(bid string, a *active) error {
	a.mu.Lock()
	logs := append([]e2bapi.BuildLogEntry(nil), a.logs...)
	a.mu.Unlock()
	tmp, err := os.CreateTemp(logsDir(s.cfg.Dir), ".log-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	w := bufio.NewWriter(tmp)
	enc := json.NewEncoder(w)
	for _, e := range logs {
		if err := enc.Encode(e); err != nil {
			_ = tmp.Close()
			return err
		}
	}
	if err := errors.Join(w.Flush(), tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.logPath(bid))
}

func (s *Service) loadLog(bid string) []e2bapi.BuildLogEntry {
	f, err := os.Open(s.logPath(bid))
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }()
	var out []e2bapi.BuildLogEntry
	dec := json.NewDecoder(f)
	for {
		var e e2bapi.BuildLogEntry
		if dec.Decode(&e) != nil {
			return out
		}
		out = append(out, e)
	}
}

// MaxLogPage is the most log entries one status or logs call returns (E2B's).
const MaxLogPage = e2bapi.MaxLogEntriesPerCall

// Status is a build's state and its log from offset on (at most MaxLogPage entries).
func (s *Service) Status(ctx context.Context, team, tid, bid string, offset int) (e2bapi.BuildStatus, error) {
	if _, err := s.cfg.Store.TemplateByID(ctx, team, tid); err != nil {
		return e2bapi.BuildStatus{}, notFound(err, "template %q", tid)
	}
	b, err := s.cfg.Store.BuildByID(ctx, tid, bid)
	if err != nil {
		return e2bapi.BuildStatus{}, notFound(err, "build %q of template %q", bid, tid)
	}
	if offset < 0 {
		return e2bapi.BuildStatus{}, fmt.Errorf("%w: logsOffset: must not be negative", manager.ErrInvalid)
	}
	s.mu.Lock()
	a := s.active[bid]
	s.mu.Unlock()
	var entries []e2bapi.BuildLogEntry
	if a != nil {
		entries = a.entries(offset, MaxLogPage)
		// A build is over for its client only once finish let go of it: its tags are set by
		// then, so a sandbox can be created from its name as soon as it reads "ready".
		if b.Status == store.BuildReady || b.Status == store.BuildError {
			b.Status = store.BuildBuilding
		}
	} else {
		entries = page(s.loadLog(bid), offset, MaxLogPage)
	}
	st := e2bapi.BuildStatus{TemplateID: tid, BuildID: bid, Status: b.Status, Logs: make([]string, len(entries)), LogEntries: entries}
	for i, e := range entries {
		st.Logs[i] = fmt.Sprintf("[%s] %s", e.Timestamp.Format(time.RFC3339), e.Message)
	}
	if b.Status == store.BuildError {
		st.Reason = &e2bapi.BuildReason{Message: b.Reason, Step: b.ReasonStep}
	}
	return st, nil
}

// Logs is a build's log from offset on (at most limit entries, MaxLogPage at most).
func (s *Service) Logs(ctx context.Context, team, tid, bid string, offset, limit int) ([]e2bapi.BuildLogEntry, error) {
	if limit <= 0 || limit > MaxLogPage {
		limit = MaxLogPage
	}
	st, err := s.Status(ctx, team, tid, bid, offset)
	if err != nil {
		return nil, err
	}
	if len(st.LogEntries) > limit {
		st.LogEntries = st.LogEntries[:limit]
	}
	return st.LogEntries, nil
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", manager.ErrNotFound, fmt.Sprintf(format, args...))
	}
	return err
}
