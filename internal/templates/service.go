package templates

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/manager"
	"github.com/cellhq/cell/internal/store"
)

// Store keeps templates, builds and tags.
type Store interface {
	PutTemplate(ctx context.Context, t store.Template) error
	TemplateByID(ctx context.Context, team, id string) (store.Template, error)
	TemplateByName(ctx context.Context, team, name string) (store.Template, error)
	Templates(ctx context.Context, team string) ([]store.Template, error)
	DeleteTemplate(ctx context.Context, id string) error
	PutBuild(ctx context.Context, b store.Build) error
	BuildByID(ctx context.Context, tid, id string) (store.Build, error)
	Builds(ctx context.Context, tid string) ([]store.Build, error)
	SetTag(ctx context.Context, tid, tag, build string, at time.Time) error
	TaggedSnapshots(ctx context.Context) (map[string]bool, error)
	DeleteTag(ctx context.Context, tid, tag string) error
	Tags(ctx context.Context, tid string) ([]store.Tag, error)
}

// Snapshots is what the service needs to know of the runtime's snapshots.
type Snapshots interface {
	// Base is the base template's snapshot name and an identity of its content (its
	// directory, which names the machine it was made for).
	Base() (name, ident string, err error)
	// InUse says which sandboxes (running or paused) depend on snapshot name; empty: none.
	InUse(name string) []string
	// DiskMiB is the size of snapshot name's disk.
	DiskMiB(name string) int
	// Layers lists the build layers; RemoveLayer removes one unless something has its disk
	// on it.
	Layers() []Layer
	RemoveLayer(name string) error
}

// Config configures a Service.
type Config struct {
	Store     Store
	Machines  build.Machines
	Snapshots Snapshots
	// Dir holds the uploads and the build logs (see datadir.Layout.Builds).
	Dir string
	// Key signs upload URLs (see UploadKey).
	Key []byte
	Log *slog.Logger
	// MaxBuilds run at once, MaxQueue more wait; past that a build is refused (429).
	MaxBuilds, MaxQueue int
	// Timeout bounds one build.
	Timeout time.Duration
	// MaxUpload bounds one upload of COPY files.
	MaxUpload int64
	// CacheBytes bounds the build layers kept (0: no bound): past it, the least recently used
	// ones no template's tag points at are removed after each build.
	CacheBytes int64
	// Images pulls the OCI images builds start from (nil: only Cell's base image and the
	// team's templates).
	Images *Images
	// Disk refuses an upload the host's disk cannot take (nil: no check).
	Disk interface {
		Admit(size uint64, what string) error
	}
}

// waitingTTL is how long a build may wait for its steps (POST …/builds/{id}) before it is
// given up: a client that never starts it leaves nothing behind for longer.
const waitingTTL = time.Hour

// Defaults.
const (
	DefaultMaxBuilds = 1
	DefaultMaxQueue  = 16
	DefaultTimeout   = time.Hour
	DefaultMaxUpload = 4 << 30
	DefaultCPUs      = 2
	DefaultMemoryMiB = 512
	MaxCPUs          = 8
	MaxMemoryMiB     = 16384
	// MaxMinFreeDiskMiB bounds minFreeDiskMb (a sandbox's disk is at most 256 GiB).
	MaxMinFreeDiskMiB = 256 << 10
)

// ErrBusy is returned when the build queue is full.
var ErrBusy = errors.New("too many builds queued")

// Service is the template service. New starts it; Close stops its builds.
type Service struct {
	cfg    Config
	mu     sync.Mutex
	active map[string]*active // by build id
	queue  chan struct{}      // a token per running build
	queued int
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBuilds <= 0 {
		cfg.MaxBuilds = DefaultMaxBuilds
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = DefaultMaxUpload
	}
	for _, d := range []string{uploadsDir(cfg.Dir), logsDir(cfg.Dir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{cfg: cfg, active: map[string]*active{}, queue: make(chan struct{}, cfg.MaxBuilds), ctx: ctx, cancel: cancel}
	s.cfg.Machines = evictingMachines{Machines: cfg.Machines, s: s}
	return s, nil
}

// Close cancels the builds under way and waits for them.
func (s *Service) Close() {
	s.cancel()
	s.wg.Wait()
	if s.cfg.Images != nil {
		s.cfg.Images.Puller.Close()
	}
}

func uploadsDir(dir string) string { return filepath.Join(dir, "uploads") }
func logsDir(dir string) string    { return filepath.Join(dir, "logs") }

// Recover marks the builds a stopped daemon left waiting or building as failed: their VMs are
// gone, and nothing was published for them.
func (s *Service) Recover(ctx context.Context) error {
	all, err := s.cfg.Store.Builds(ctx, "")
	if err != nil {
		return err
	}
	for _, b := range all {
		if b.Status != store.BuildWaiting && b.Status != store.BuildBuilding {
			continue
		}
		b.Status, b.Reason, b.FinishedAt = store.BuildError, "cell serve stopped during the build", time.Now()
		if err := s.cfg.Store.PutBuild(ctx, b); err != nil {
			return err
		}
		s.cfg.Log.Warn("build interrupted by a restart", "build", b.ID, "template", b.TemplateID)
	}
	s.evict(ctx, s.cacheBudget())
	return nil
}

// CreateRequest is POST /v3/templates.
type CreateRequest struct {
	Team      string
	Name      string
	Tags      []string
	CPUs      int
	MemoryMiB int
	// MinFreeDiskMiB is the free disk the template gets after its steps (E2B's minFreeDiskMb).
	MinFreeDiskMiB int
}

// Created is a template with a new build waiting for its steps.
type Created struct {
	TemplateID, BuildID string
	// Base is the template's name without a tag; Names are it with each tag.
	Base        string
	Names, Tags []string
}

// Create makes (or finds, by name) team's template and a new build of it, waiting for its
// steps (Start). The build will get the name's tag, and the tags asked.
func (s *Service) Create(ctx context.Context, req CreateRequest) (Created, error) {
	n, err := build.ParseName(req.Name)
	if err != nil {
		return Created{}, fmt.Errorf("%w: %w", manager.ErrInvalid, err)
	}
	tags := []string{n.Tag}
	for _, t := range req.Tags {
		if err := build.ValidTag(t); err != nil {
			return Created{}, fmt.Errorf("%w: tags: %w", manager.ErrInvalid, err)
		}
		tags = append(tags, t)
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if req.CPUs == 0 {
		req.CPUs = DefaultCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = DefaultMemoryMiB
	}
	if req.CPUs < 1 || req.CPUs > MaxCPUs {
		return Created{}, fmt.Errorf("%w: cpuCount: must be 1 to %d", manager.ErrInvalid, MaxCPUs)
	}
	if req.MemoryMiB < 128 || req.MemoryMiB > MaxMemoryMiB {
		return Created{}, fmt.Errorf("%w: memoryMB: must be 128 to %d", manager.ErrInvalid, MaxMemoryMiB)
	}
	if req.MinFreeDiskMiB < 0 || req.MinFreeDiskMiB > MaxMinFreeDiskMiB {
		return Created{}, fmt.Errorf("%w: minFreeDiskMb: must be 0 to %d", manager.ErrInvalid, MaxMinFreeDiskMiB)
	}
	now := time.Now()
	t, err := s.cfg.Store.TemplateByName(ctx, req.Team, n.Base())
	switch {
	case errors.Is(err, store.ErrNotFound):
		t = store.Template{ID: ids.New(20), TeamID: req.Team, Name: n.Base(), CreatedAt: now}
	case err != nil:
		return Created{}, err
	}
	t.CPUs, t.MemoryMiB, t.UpdatedAt = req.CPUs, req.MemoryMiB, now
	if err := s.cfg.Store.PutTemplate(ctx, t); err != nil {
		return Created{}, err
	}
	b := store.Build{ID: ids.New(20), TemplateID: t.ID, Status: store.BuildWaiting, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, CreatedAt: now}
	if err := s.cfg.Store.PutBuild(ctx, b); err != nil {
		return Created{}, err
	}
	s.mu.Lock()
	s.active[b.ID] = &active{tags: tags, created: now, template: t.ID, minFreeMiB: req.MinFreeDiskMiB}
	stale := s.staleWaiting(now)
	s.mu.Unlock()
	s.giveUp(ctx, stale)
	names := make([]string, len(tags))
	for i, tag := range tags {
		names[i] = n.Base() + ":" + tag
	}
	return Created{TemplateID: t.ID, BuildID: b.ID, Base: n.Base(), Names: names, Tags: tags}, nil
}

// staleWaiting removes the builds that waited for their steps longer than waitingTTL from the
// active ones and returns their ids (build id → template id). s.mu must be held.
func (s *Service) staleWaiting(now time.Time) map[string]string {
	stale := map[string]string{}
	for id, a := range s.active {
		if !a.started && now.Sub(a.created) > waitingTTL {
			stale[id] = a.template
			delete(s.active, id)
		}
	}
	return stale
}

// giveUp records as failed a build that never got its steps.
func (s *Service) giveUp(ctx context.Context, ids map[string]string) {
	for bid, tid := range ids {
		b, err := s.cfg.Store.BuildByID(ctx, tid, bid)
		if err != nil || b.Status != store.BuildWaiting {
			continue
		}
		b.Status, b.Reason, b.ReasonStep, b.FinishedAt = store.BuildError, fmt.Sprintf("its steps did not come within %s", waitingTTL), "base", time.Now()
		if err := s.cfg.Store.PutBuild(ctx, b); err != nil {
			s.cfg.Log.Warn("giving up a build", "build", bid, "err", err)
		}
	}
}
