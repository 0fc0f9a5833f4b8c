package manager

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/internal/store"
	"github.com/cellhq/cell/internal/vmm"
	"github.com/cellhq/cell/pkg/envd"
)

// Errors the API maps to HTTP statuses.
var (
	ErrNotFound   = errors.New("not found")
	ErrInvalid    = errors.New("invalid request")
	ErrConflict   = errors.New("conflict")
	ErrShutdown   = errors.New("cell serve is shutting down")
	ErrBootFailed = errors.New("sandbox failed to start")
	// ErrPauseUndone: a pause failed before it saved anything for good, and the sandbox runs on
	// as it was.
	ErrPauseUndone = errors.New("the pause failed and was undone: the sandbox runs on as it was")
	// ErrInsufficientStorage: the host's disk cannot take what a sandbox may write (a create,
	// a resume, a snapshot, a fork).
	ErrInsufficientStorage = vmm.ErrInsufficientStorage
)

// Limits.
const (
	DefaultTimeout = 15 * time.Second
	MaxTimeout     = 24 * time.Hour
	MaxMetadata    = 64
	MaxEnvVars     = 256
	RetainEnded    = 7 * 24 * time.Hour
)

// Config configures a Manager.
type Config struct {
	Runtime   Runtime
	Templates Templates
	Store     *store.Store
	RunDir    string // VM working directories (for orphan cleanup)
	// Home is the data directory (datadir.Layout): its paused/ holds paused sandboxes, one
	// directory each (see sandbox.Sandbox.Pause), its templates/ snapshots of sandboxes. Without
	// it sandboxes are neither paused nor snapshotted.
	Home string
	// DiskMiB is the disk size of a sandbox whose create does not give one (0:
	// sandbox.DefaultDiskMiB); never below its template's.
	DiskMiB int
	// Disk refuses creates whose disk does not fit on the host (nil: no check); the runtime's
	// VM starts have the same guard.
	Disk *vmm.DiskGuard
	Log  *slog.Logger
}

// Manager runs the daemon's sandboxes.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	boxes    map[string]*box
	seq      int64
	closing  bool
	pools    map[string]*pool
	forking  map[string]bool // fork snapshots whose forks are being created
	inflight sync.WaitGroup
	watchers sync.WaitGroup
}

type box struct {
	op sync.Mutex // serialises pause and resume
	mu sync.Mutex
	// state is where the sandbox is in its life (see transitions); only to changes it.
	state state
	rec   store.Sandbox
	sb    Instance
	timer *time.Timer
	left  chan struct{} // closed when this process lets go of the VM without stopping it
}

// newBox holds rec, in s (creating, or what Recover takes back: running or paused).
func newBox(rec store.Sandbox, s state) *box {
	return &box{state: s, rec: rec, left: make(chan struct{})}
}

// New opens a manager over cfg's store. Call Recover before serving.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Runtime == nil || cfg.Templates == nil || cfg.Store == nil {
		return nil, errors.New("manager: Runtime, Templates and Store are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	seq, err := cfg.Store.NextSeq(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the store: %w", err)
	}
	return &Manager{cfg: cfg, log: cfg.Log, boxes: map[string]*box{}, seq: seq}, nil
}

// CreateRequest is a new sandbox.
type CreateRequest struct {
	Team string
	// Template is the snapshot the sandbox starts from; TemplateID what it reports as its
	// template (E2B's templateID, E2B_TEMPLATE_ID): a built template's id, whose build made
	// the snapshot ("": Template).
	Template, TemplateID string
	Timeout              time.Duration
	Metadata             map[string]string
	EnvVars              map[string]string
	Secure               bool
	AllowInternet        bool
	Network              store.Network
	// AutoPause pauses instead of killing at the timeout (with RAM when AutoPauseMemory).
	AutoPause, AutoPauseMemory bool
	CPUs                       int
	MemoryMiB                  int
	DiskMiB                    int // 0: the daemon's default (Config.DiskMiB)
}

// Info is a sandbox as the API shows it.
type Info struct {
	store.Sandbox
}

func (m *Manager) begin() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return ErrShutdown
	}
	m.inflight.Add(1)
	return nil
}

func newToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func validateMap(field string, mp map[string]string, limit int) error {
	if len(mp) > limit {
		return fmt.Errorf("%w: %s: at most %d entries", ErrInvalid, field, limit)
	}
	for k, v := range mp {
		if k == "" || len(k) > 256 || len(v) > 8192 || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return fmt.Errorf("%w: %s: key %q: keys must be 1..256 bytes and values at most 8192, without NUL", ErrInvalid, field, k)
		}
	}
	return nil
}

// Create boots a sandbox for req.Team and returns it running, with envd initialised.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (Info, error) {
	if err := m.begin(); err != nil {
		return Info{}, err
	}
	defer m.inflight.Done()
	if req.Template == "" {
		req.Template = "base"
	}
	if err := ids.Validate("templateID", req.Template); err != nil {
		return Info{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if req.Template != "base" {
		t := m.cfg.Templates.Template(req.Template)
		if t == nil || t.Team != req.Team {
			return Info{}, fmt.Errorf("%w: template %q", ErrNotFound, req.Template)
		}
		// A snapshot restores into a machine of its own size (a built template's may differ
		// from the default).
		if req.CPUs == 0 {
			req.CPUs = t.CPUs
		}
		if req.MemoryMiB == 0 {
			req.MemoryMiB = t.MemoryMiB
		}
	}
	if req.Timeout == 0 {
		req.Timeout = DefaultTimeout
	}
	if req.Timeout < 0 || req.Timeout > MaxTimeout {
		return Info{}, fmt.Errorf("%w: timeout: must be between 0 and %d seconds", ErrInvalid, int(MaxTimeout.Seconds()))
	}
	if err := errors.Join(validateMap("metadata", req.Metadata, MaxMetadata), validateMap("envVars", req.EnvVars, MaxEnvVars)); err != nil {
		return Info{}, err
	}
	rules, err := compileNet(req.AllowInternet, req.Network)
	if err != nil {
		return Info{}, err
	}
	if req.DiskMiB, err = m.admitDisk(req.Template, req.DiskMiB); err != nil {
		return Info{}, err
	}
	if req.CPUs == 0 {
		req.CPUs = sandbox.DefaultCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = sandbox.DefaultMemoryMiB
	}
	now := time.Now()
	m.mu.Lock()
	seq := m.seq
	m.seq++
	m.mu.Unlock()
	// A sandbox from the warm pool already runs: it only needs this sandbox's settings.
	var fromPool *pooled
	if req.CPUs == sandbox.DefaultCPUs && req.MemoryMiB == sandbox.DefaultMemoryMiB && req.DiskMiB == m.diskMiB(req.Template) {
		fromPool = m.takePooled(req.Template)
	}
	id := ids.NewSandboxID()
	if fromPool != nil {
		id = fromPool.id
	}
	rec := store.Sandbox{
		ID: id, TeamID: req.Team, TemplateID: cmp.Or(req.TemplateID, req.Template), State: store.StateCreating,
		Metadata: maps.Clone(req.Metadata), EnvVars: maps.Clone(req.EnvVars), CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB,
		AllowInternet: req.AllowInternet, StartedAt: now, EndAt: now.Add(req.Timeout), Seq: seq, Timeout: req.Timeout,
		AutoPause: req.AutoPause, AutoPauseMemory: req.AutoPauseMemory, Network: req.Network,
	}
	if req.Network.PrivateTraffic {
		rec.TrafficToken = newToken()
	}
	if req.Secure {
		rec.EnvdToken = newToken()
		if fromPool != nil {
			rec.EnvdToken = fromPool.token // enforced since the pool filled; never shown before
		}
	}
	if err := m.cfg.Store.PutSandbox(ctx, rec); err != nil {
		return Info{}, err
	}
	b := newBox(rec, creating)
	m.mu.Lock()
	m.boxes[rec.ID] = b
	m.mu.Unlock()

	// envd gets the env vars and the access token (with its name, randomness and clock) before
	// the sandbox is handed out.
	token := rec.EnvdToken
	initReq := envd.InitRequest{EnvVars: rec.EnvVars, AccessToken: &token}
	if req.TemplateID != "" {
		initReq.TemplateID = &rec.TemplateID
	}
	var sb Instance
	if fromPool != nil {
		sb = fromPool.sb
		if n := sb.Network(); n != nil {
			n.SetRules(rules) // nothing ran in it yet
		}
		// The pool sandbox already has its own name, randomness, clock, token and E2B's
		// variables: only other settings need a trip into the guest.
		if len(rec.EnvVars) > 0 || rec.EnvdToken != fromPool.token {
			if err = sb.Init(ctx, initReq); err != nil {
				_ = sb.Close()
			}
		}
	} else {
		sb, err = m.cfg.Runtime.Boot(ctx, sandbox.Options{ID: rec.ID, Template: req.Template, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB, Init: &initReq, Net: rules})
	}
	if err != nil {
		m.mu.Lock()
		delete(m.boxes, rec.ID)
		m.mu.Unlock()
		b.mu.Lock()
		ended := b.to(failed) == nil // else killed while it booted, and recorded so
		if ended {
			b.rec.Reason, b.rec.EndAt = err.Error(), time.Now()
		}
		rec := b.rec
		b.mu.Unlock()
		if ended {
			_ = m.cfg.Store.PutSandbox(context.WithoutCancel(ctx), rec)
		}
		return Info{}, fmt.Errorf("%w: %w", ErrBootFailed, err)
	}
	b.mu.Lock()
	if err := b.to(running); err != nil { // killed (or the daemon stopped) while it booted
		reason := b.rec.Reason
		b.mu.Unlock()
		_ = sb.Close()
		return Info{}, fmt.Errorf("%w: sandbox %s ended while starting: %s", ErrConflict, rec.ID, reason)
	}
	b.sb = sb
	b.rec.PID, b.rec.StartTicks = sb.PID()
	// The timeout counts from when the sandbox is ready, as the client sees it.
	b.rec.EndAt = time.Now().Add(req.Timeout)
	err = m.cfg.Store.PutSandbox(context.WithoutCancel(ctx), b.rec)
	m.arm(b)
	info := Info{b.rec}
	b.mu.Unlock()
	if err != nil {
		m.end(b, failed, "storing the sandbox: "+err.Error())
		return Info{}, err
	}
	m.watch(b)
	return info, nil
}

// arm (re)starts b's timeout timer. b.mu must be held.
func (m *Manager) arm(b *box) {
	if b.timer != nil {
		b.timer.Stop()
	}
	rec := b.rec
	var t *time.Timer
	t = time.AfterFunc(time.Until(rec.EndAt), func() {
		// A timer that was replaced or stopped too late, or that fires while the sandbox is
		// being paused or is no longer running, has nothing to end: an acknowledged pause must
		// not expire (and so lose) its saved state. (The caller of arm holds b.mu until t is
		// set, so a timer that fires at once waits for it here.)
		b.mu.Lock()
		stale := b.timer != t || b.state != running
		b.mu.Unlock()
		if stale {
			return
		}
		if rec.AutoPause && m.cfg.Home != "" {
			m.log.Info("sandbox timed out: pausing it", "sandbox", rec.ID)
			err := m.Pause(context.Background(), rec.TeamID, rec.ID, rec.AutoPauseMemory)
			if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
				return
			}
			m.log.Warn("pausing a timed-out sandbox failed: killing it", "sandbox", rec.ID, "err", err)
		}
		m.log.Info("sandbox timed out", "sandbox", rec.ID)
		m.end(b, expired, "timeout")
	})
	b.timer = t
}

// watch ends b as killed when its VM dies on its own.
func (m *Manager) watch(b *box) {
	m.watchers.Add(1)
	go func() {
		defer m.watchers.Done()
		b.mu.Lock()
		sb := b.sb
		b.mu.Unlock()
		if sb == nil {
			return
		}
		select {
		case <-sb.Exited():
			b.mu.Lock()
			stale := b.state == pausing || b.sb != sb
			b.mu.Unlock()
			if !stale {
				m.end(b, killed, "qemu "+sb.ExitReason())
			}
		case <-b.left:
		}
	}()
}

// end moves b to the final state final (once: an ended sandbox stays as it ended) and releases
// its VM.
func (m *Manager) end(b *box, final state, reason string) {
	b.mu.Lock()
	if err := b.to(final); err != nil {
		b.mu.Unlock()
		return
	}
	if b.timer != nil {
		b.timer.Stop()
	}
	sb := b.sb
	b.rec.Reason = reason
	if final != expired {
		b.rec.EndAt = time.Now()
	}
	rec := b.rec
	b.mu.Unlock()
	m.mu.Lock()
	if m.boxes[rec.ID] == b {
		delete(m.boxes, rec.ID)
	}
	m.mu.Unlock()
	if sb != nil {
		if err := sb.Close(); err != nil {
			m.log.Warn("releasing sandbox", "sandbox", rec.ID, "err", err)
		}
	}
	if m.cfg.Home != "" {
		_ = os.RemoveAll(m.pausedDir(rec.ID)) // a paused one's saved state
	}
	m.collectFork(rec.TemplateID)
	if err := m.cfg.Store.PutSandbox(context.Background(), rec); err != nil {
		m.log.Error("storing sandbox end", "sandbox", rec.ID, "err", err)
	}
	m.log.Info("sandbox ended", "sandbox", rec.ID, "state", rec.State, "reason", reason)
}

// lookup returns team's live sandbox id.
func (m *Manager) lookup(team, id string) (*box, error) {
	if err := ids.Validate("sandboxID", id); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	m.mu.Lock()
	b := m.boxes[id]
	m.mu.Unlock()
	if b == nil {
		return nil, fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if (team != "" && b.rec.TeamID != team) || b.state.gone() {
		return nil, fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	return b, nil
}

// Get returns team's sandbox.
func (m *Manager) Get(team, id string) (Info, error) {
	b, err := m.lookup(team, id)
	if err != nil {
		return Info{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return Info{b.rec}, nil
}

// Kill stops team's sandbox.
func (m *Manager) Kill(team, id string) error {
	b, err := m.lookup(team, id)
	if err != nil {
		return err
	}
	m.end(b, killed, "killed by request")
	return nil
}

// SetTimeout makes the sandbox end timeout from now; a later resume that names no timeout
// lives this long too.
func (m *Manager) SetTimeout(ctx context.Context, team, id string, timeout time.Duration) (Info, error) {
	if timeout < 0 || timeout > MaxTimeout {
		return Info{}, fmt.Errorf("%w: timeout: must be between 0 and %d seconds", ErrInvalid, int(MaxTimeout.Seconds()))
	}
	b, err := m.lookup(team, id)
	if err != nil {
		return Info{}, err
	}
	b.mu.Lock()
	switch b.state {
	case running:
	case pausing:
		b.mu.Unlock()
		return Info{}, fmt.Errorf("%w: sandbox %s is being paused", ErrConflict, id)
	default:
		b.mu.Unlock()
		return Info{}, fmt.Errorf("%w: sandbox %s is %s", ErrConflict, id, b.rec.State)
	}
	b.rec.EndAt, b.rec.Timeout = time.Now().Add(timeout), timeout
	m.arm(b)
	rec := b.rec
	b.mu.Unlock()
	return Info{rec}, m.cfg.Store.PutSandbox(ctx, rec)
}

// allBoxes returns the boxes known now (each then locked on its own).
func (m *Manager) allBoxes() []*box {
	m.mu.Lock()
	defer m.mu.Unlock()
	bs := make([]*box, 0, len(m.boxes))
	for _, b := range m.boxes {
		bs = append(bs, b)
	}
	return bs
}

// List returns team's live sandboxes, oldest first.
func (m *Manager) List(team string) []Info {
	var out []Info
	for _, b := range m.allBoxes() {
		b.mu.Lock()
		if b.rec.TeamID == team && !b.state.gone() && b.rec.State != store.StateCreating {
			out = append(out, Info{b.rec})
		}
		b.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

// Envd returns a client for a running sandbox's envd (any team: envd checks its own token).
func (m *Manager) Envd(id string) (*http.Client, error) {
	b, err := m.lookup("", id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sb == nil || b.rec.State != store.StateRunning {
		return nil, fmt.Errorf("%w: sandbox %q is %s", ErrNotFound, id, b.rec.State)
	}
	return b.sb.HTTP(), nil
}

// FindRunning returns the id of the running sandbox whose envd access token match accepts, or ""
// (sandboxes without a token are never offered). It is for requests that carry proof of a
// token but no sandbox id: /files URLs signed with it.
func (m *Manager) FindRunning(match func(token string) bool) string {
	for _, b := range m.allBoxes() {
		b.mu.Lock()
		id, token, running := b.rec.ID, b.rec.EnvdToken, b.sb != nil && b.rec.State == store.StateRunning
		b.mu.Unlock()
		if running && token != "" && match(token) {
			return id
		}
	}
	return ""
}

// ConsoleLog opens the sandbox's console log for reading (bounded, with when each byte was
// written); nil when the sandbox has no VM (paused) or the log is gone. The caller closes it.
func (m *Manager) ConsoleLog(team, id string) (*vmm.ConsoleLog, error) {
	b, err := m.lookup(team, id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	sb := b.sb
	b.mu.Unlock()
	if sb == nil {
		return nil, nil
	}
	log, err := sb.OpenConsoleLog()
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: opening the console log: %w", id, err)
	}
	return log, nil
}

// Adoption at startup.
const (
	// AdoptConcurrency is how many VMs Recover adopts at once.
	AdoptConcurrency = 8
	// AdoptTimeout bounds one adoption: QEMU's monitor, console and network device, which QEMU
	// answers itself (envd is not waited for: see vmm.Host.Adopt).
	AdoptTimeout = 30 * time.Second
)

// Recover re-adopts the sandboxes a previous run left running, AdoptConcurrency at a time. A VM
// whose QEMU is still ours is adopted even if envd is slow to answer or the VM limit is lower
// than when it started; one whose QEMU is gone (or is not ours any more) is marked lost and its
// directory removed. Then orphans (VM directories and QEMU processes of ours that no live
// record names) are cleaned up.
func (m *Manager) Recover(ctx context.Context) error {
	recs, err := m.cfg.Store.Sandboxes(ctx, store.StateCreating, store.StateRunning, store.StatePaused)
	if err != nil {
		return fmt.Errorf("reading sandboxes: %w", err)
	}
	var mu sync.Mutex
	keep := map[string]bool{}
	// No context of the group's: a failure to record one sandbox must not cut the adoption of
	// the others short (which would count them lost).
	var g errgroup.Group
	g.SetLimit(AdoptConcurrency)
	for _, rec := range recs {
		if rec.State == store.StatePaused {
			if err := m.recoverPaused(ctx, rec); err != nil {
				return err
			}
			continue
		}
		g.Go(func() error {
			kept, err := m.recoverRunning(ctx, rec)
			if kept {
				mu.Lock()
				keep[rec.ID] = true
				mu.Unlock()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if used, over := m.slots(); over > 0 {
		m.log.Warn("more VMs adopted than --max-vms allows: no sandbox starts until enough have ended", "running", used, "over", over)
	}
	m.cleanOrphans(keep)
	m.cleanPausedOrphans(ctx)
	m.pruneTemplates()
	// Ended sandboxes are kept a week for inspection, then forgotten.
	if err := m.cfg.Store.PruneEnded(ctx, time.Now().Add(-RetainEnded)); err != nil {
		m.log.Warn("pruning ended sandboxes", "err", err)
	}
	return nil
}

// slots reports the runtime's VM slots, when it says.
func (m *Manager) slots() (used, over int) {
	if s, ok := m.cfg.Runtime.(interface{ Slots() (int, int) }); ok {
		return s.Slots()
	}
	return 0, 0
}

// recoverRunning takes back a creating or running record at startup: its VM adopted (kept), or
// its interrupted pause completed (paused), or it is recorded lost.
func (m *Manager) recoverRunning(ctx context.Context, rec store.Sandbox) (kept bool, err error) {
	var sb Instance
	var aerr error
	if rec.State == store.StateRunning {
		done, err := m.recoverPause(ctx, &rec)
		if err != nil {
			return false, err
		}
		if done {
			return false, nil
		}
		actx, cancel := context.WithTimeout(ctx, AdoptTimeout)
		rules, err := compileNet(rec.AllowInternet, rec.Network)
		if err != nil {
			rules = denyAll() // a stored policy that no longer compiles must not open the way out
		}
		sb, aerr = m.cfg.Runtime.Adopt(actx, rec.ID, rec.PID, rec.StartTicks, rules)
		cancel()
	} else {
		aerr = errors.New("was still creating")
	}
	if aerr != nil && m.pausedCopy(rec.ID) {
		// The previous daemon died between publishing a pause and recording it.
		if vmm.IsOurs(rec.PID, rec.StartTicks, rec.ID) {
			if p, err := os.FindProcess(rec.PID); err == nil {
				_ = p.Kill()
			}
		}
		rec.State, rec.PID, rec.StartTicks = store.StatePaused, 0, 0
		if err := m.cfg.Store.PutSandbox(ctx, rec); err != nil {
			return false, err
		}
		return false, m.recoverPaused(ctx, rec)
	}
	if aerr != nil && errors.Is(aerr, vmm.ErrClaimed) {
		// Another live process manages that VM: it is not this daemon's to stop or remove.
		m.log.Warn("sandbox lost across restart: another process manages its VM", "sandbox", rec.ID, "err", aerr)
		rec.State, rec.Reason, rec.EndAt = store.StateLost, "not re-adopted after restart: "+aerr.Error(), time.Now()
		return false, m.cfg.Store.PutSandbox(ctx, rec)
	}
	if aerr != nil {
		// Adoption waits for nothing the guest controls: a QEMU still ours that failed it did not
		// answer its own monitor within AdoptTimeout, and cannot be managed.
		m.log.Warn("sandbox lost across restart", "sandbox", rec.ID, "err", aerr)
		if vmm.IsOurs(rec.PID, rec.StartTicks, rec.ID) {
			if p, err := os.FindProcess(rec.PID); err == nil {
				_ = p.Kill()
			}
		}
		if m.cfg.RunDir != "" {
			_ = os.RemoveAll(filepath.Join(m.cfg.RunDir, rec.ID))
		}
		rec.State, rec.Reason, rec.EndAt = store.StateLost, "not re-adopted after restart: "+aerr.Error(), time.Now()
		return false, m.cfg.Store.PutSandbox(ctx, rec)
	}
	// The VM is the truth: a generation left by a resume that was not cleaned up is stale.
	if m.cfg.Home != "" {
		_ = os.RemoveAll(m.pausedDir(rec.ID))
	}
	sb.SetToken(rec.EnvdToken)
	b := newBox(rec, running)
	b.sb = sb
	m.mu.Lock()
	m.boxes[rec.ID] = b
	m.mu.Unlock()
	b.mu.Lock()
	m.arm(b)
	b.mu.Unlock()
	m.watch(b)
	m.log.Info("sandbox re-adopted", "sandbox", rec.ID, "pid", rec.PID)
	return true, nil
}

// pruneTemplates removes base templates made for an earlier QEMU, kernel, image or envd that no
// sandbox or snapshot depends on any more (the orphans are gone by now).
func (m *Manager) pruneTemplates() {
	cur := m.cfg.Templates.Template("base")
	if cur == nil || m.cfg.Home == "" || m.cfg.RunDir == "" ||
		!strings.HasPrefix(cur.Dir, m.layout().Templates()+string(filepath.Separator)) {
		return // the base template lives elsewhere: so may what depends on the ones here
	}
	gone, err := sandbox.PruneTemplates(m.cfg.Home, "base", cur.Dir, m.cfg.RunDir, m.layout().Paused())
	for _, t := range gone {
		m.log.Info("removed an outdated template", "dir", t.Dir, "bytes", t.Bytes, "created", t.CreatedAt)
	}
	if err != nil {
		m.log.Warn("removing outdated templates", "err", err)
	}
}

// cleanOrphans kills QEMU processes running from our run directory and removes VM directories
// that no live sandbox owns.
func (m *Manager) cleanOrphans(keep map[string]bool) {
	if m.cfg.RunDir == "" {
		return
	}
	vmm.ReapOrphans(m.cfg.RunDir, func(id string) bool { return keep[id] }, m.log)
}

// cleanPausedOrphans removes saved states of sandboxes that ended (killed or expired) or that the
// store does not know; never those of paused (or lost, kept for inspection) sandboxes.
func (m *Manager) cleanPausedOrphans(ctx context.Context) {
	if m.cfg.Home == "" {
		return
	}
	des, err := os.ReadDir(m.layout().Paused())
	if err != nil {
		return
	}
	all, err := m.cfg.Store.Sandboxes(ctx)
	if err != nil {
		return
	}
	state := map[string]string{}
	for _, r := range all {
		state[r.ID] = r.State
	}
	for _, de := range des {
		switch state[de.Name()] {
		case store.StatePaused, store.StateLost, store.StateRunning, store.StateCreating:
			continue
		}
		m.log.Warn("removing saved state of an ended sandbox", "sandbox", de.Name())
		_ = os.RemoveAll(m.pausedDir(de.Name()))
	}
}

// ShutdownMode says what Shutdown does with running sandboxes.
type ShutdownMode int

// Shutdown modes.
const (
	Kill     ShutdownMode = iota // kill them
	Leave                        // let go of their VMs for the next cell serve to adopt
	PauseAll                     // pause them (with RAM), PauseConcurrency at a time
)

// PauseConcurrency bounds the pauses PauseAll runs at once.
const PauseConcurrency = 2

// Shutdown stops accepting creates, waits for in-flight ones (bounded by ctx) and then either
// kills every sandbox or, with leave, lets go of their VMs so the next `cell serve` adopts them.
func (m *Manager) Shutdown(ctx context.Context, mode ShutdownMode) {
	leave := mode == Leave
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	m.drainPools()
	done := make(chan struct{})
	go func() { m.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	bs := m.allBoxes()
	var wg sync.WaitGroup
	slots := make(chan struct{}, PauseConcurrency) // pauses write whole RAM images: a few at a time
	for _, b := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.mu.Lock()
			paused := b.rec.State == store.StatePaused
			b.mu.Unlock()
			if paused {
				return // holds no VM; the next cell serve takes it back from the store
			}
			if mode == PauseAll {
				slots <- struct{}{}
				err := m.pause(context.Background(), b, true)
				<-slots
				if err == nil {
					return
				}
				m.log.Warn("pausing at shutdown failed: killing", "sandbox", b.rec.ID, "err", err)
			}
			if !leave {
				m.end(b, killed, "cell serve shut down")
				return
			}
			b.mu.Lock()
			if b.timer != nil {
				b.timer.Stop()
			}
			var sb Instance
			if b.to(left) == nil { // for this process; the record stays running for the next one
				sb = b.sb
			}
			b.mu.Unlock()
			close(b.left)
			if sb != nil {
				sb.Detach()
			}
		}()
	}
	wg.Wait()
	m.watchers.Wait()
}

// EnvdMetrics reads envd's /metrics through hc.
func (m *Manager) EnvdMetrics(ctx context.Context, id string, hc *http.Client) (envd.MetricsReport, error) {
	var rep envd.MetricsReport
	b, err := m.lookup("", id)
	if err != nil {
		return rep, err
	}
	b.mu.Lock()
	token := b.rec.EnvdToken
	b.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sandbox.EnvdURL+"/metrics", nil)
	if err != nil {
		return rep, err
	}
	req.Header.Set("X-Access-Token", token)
	resp, err := hc.Do(req)
	if err != nil {
		return rep, fmt.Errorf("sandbox %s: envd /metrics: %w", id, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return rep, fmt.Errorf("sandbox %s: envd /metrics: HTTP %d", id, resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&rep); err != nil {
		return rep, fmt.Errorf("sandbox %s: envd /metrics: %w", id, err)
	}
	return rep, nil
}

// Sandbox returns team's running sandbox (for Cell's own tools: benchmarks, tests).
func (m *Manager) Sandbox(team, id string) (Instance, error) {
	b, err := m.lookup(team, id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sb == nil || b.rec.State != store.StateRunning {
		return nil, fmt.Errorf("%w: sandbox %q is %s", ErrConflict, id, b.rec.State)
	}
	return b.sb, nil
}
